from __future__ import annotations

from service.check import reconcile
from tests.helpers import bearer, make_provider, make_scheme, make_voucher


async def test_redeem_over_api(client, rt) -> None:
    scheme = await make_scheme(rt)
    voucher, code = await make_voucher(rt, scheme)
    provider, token = await make_provider(rt, scheme)
    r = await client.get(f"/api/v1/vouchers/{code}", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json()["balance_cents"] == 135000
    r = await client.post(f"/api/v1/vouchers/{code}/redemptions", headers=bearer(token),
                          json={"amount_cents": 10000, "category": "coaching", "reference": "F-1"})
    assert r.status_code == 201, r.text
    assert r.json()["voucher_balance_cents"] == 125000
    async with rt.sessionmaker() as session:
        assert await reconcile(session) == []
