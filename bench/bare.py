"""The yardstick: a bare Litestar JSON endpoint (GET and a small POST), served exactly like the
service (granian, ASGI, same worker count, access log off). Every benchmark figure is also given
as a ratio to it, because the machine is shared and noisy while the ratio holds.

Run: ``python -m bench.bare --port 8100 --workers 2``.
"""

from __future__ import annotations

import argparse
from typing import Literal

import msgspec
from litestar import Litestar, get, post


class SmallIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    amount_cents: int
    category: Literal["coaching", "retraining", "financial_advice"]
    reference: str


class SmallOut(msgspec.Struct, frozen=True):
    ok: bool
    amount_cents: int
    reference: str


@get("/bare")
async def bare_get() -> dict[str, str]:
    return {"status": "ok"}


@post("/bare")
async def bare_post(data: SmallIn) -> SmallOut:
    return SmallOut(ok=True, amount_cents=data.amount_cents, reference=data.reference)


@get("/healthz")
async def health() -> dict[str, str]:
    return {"status": "ok"}


app = Litestar(route_handlers=[bare_get, bare_post, health], debug=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    from granian import Granian
    from granian.constants import Interfaces

    # The same call as ``vouchers serve`` (service/cli.py).
    Granian("bench.bare:app", address=args.host, port=args.port, workers=args.workers,
            interface=Interfaces.ASGI, log_access=False).serve()


if __name__ == "__main__":
    main()
