"""Mail is never lost while the mail server is down, and never sent twice by two senders."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import msgspec
from sqlalchemy import select, update

from service import outbox
from service.models import OutboxMessage, utcnow
from service.runtime import Runtime
from tests.conftest import free_port
from tests.helpers import make_scheme, make_voucher


async def test_mail_waits_for_the_server_and_is_retried(rt: Runtime, smtp_server) -> None:
    scheme = await make_scheme(rt)
    await make_voucher(rt, scheme, email="wacht@example.org")
    down = dataclasses.replace(rt, settings=msgspec.structs.replace(rt.settings, smtp_port=free_port()))
    assert await outbox.send_due(down) == 0
    async with rt.sessionmaker() as session:
        [message] = await session.scalars(select(OutboxMessage))
    assert (message.status, message.attempts) == ("pending", 1) and message.last_error
    assert message.next_attempt_at > utcnow()
    assert await outbox.send_due(rt) == 0  # not due yet: back-off
    assert await outbox.send_due(rt, now=utcnow() + dt.timedelta(minutes=5)) == 1
    assert len(smtp_server.to("wacht@example.org")) == 1


async def test_two_senders_deliver_each_message_once(rt: Runtime, smtp_server) -> None:
    scheme = await make_scheme(rt)
    for n in range(12):
        await make_voucher(rt, scheme, email=f"een{n}@example.org")
    other = Runtime.create(rt.settings)
    try:
        sent = await asyncio.gather(outbox.send_due(rt), outbox.send_due(other))
    finally:
        await other.close()
    assert sum(sent) == 12
    assert sorted(m["To"] for m in smtp_server.messages) == sorted(f"een{n}@example.org" for n in range(12))
    assert len({m["Message-ID"] for m in smtp_server.messages}) == 12


async def test_a_claim_holds_until_its_lease_runs_out(rt: Runtime, smtp_server) -> None:
    """A sender that claimed messages and died (no "sent" mark) keeps them from other senders for
    the lease; after it they go out, once."""
    scheme = await make_scheme(rt)
    for n in range(3):
        await make_voucher(rt, scheme, email=f"lease{n}@example.org")
    async with rt.sessionmaker() as session, session.begin():
        first = min(await session.scalars(select(OutboxMessage.id)))
        await session.execute(update(OutboxMessage).where(OutboxMessage.id == first)
                              .values(claimed_until=utcnow() + outbox.LEASE))
    assert await outbox.send_due(rt) == 2
    assert await outbox.send_due(rt, now=utcnow() + outbox.LEASE - dt.timedelta(seconds=5)) == 0
    assert await outbox.send_due(rt, now=utcnow() + outbox.LEASE + dt.timedelta(seconds=1)) == 1
    assert sorted(m["To"] for m in smtp_server.messages) == [f"lease{n}@example.org" for n in range(3)]
    async with rt.sessionmaker() as session:
        rows = (await session.execute(select(OutboxMessage.status, OutboxMessage.claimed_until))).all()
    assert rows and all(row == ("sent", None) for row in rows)


async def test_a_round_sends_everything_due_a_batch_at_a_time(rt: Runtime, smtp_server) -> None:
    """An opening day queues thousands of mails: one round drains them, batch after batch, each
    batch over one connection to the mail server."""
    scheme = await make_scheme(rt)
    for n in range(7):
        await make_voucher(rt, scheme, email=f"rij{n}@example.org")
    assert await outbox.send_due(rt, batch=3) == 7
    assert sorted(m["To"] for m in smtp_server.messages) == sorted(f"rij{n}@example.org" for n in range(7))
    async with rt.sessionmaker() as session:
        assert {m.status for m in await session.scalars(select(OutboxMessage))} == {"sent"}
    assert await outbox.send_due(rt, batch=3) == 0


async def test_file_backend_writes_readable_mail(rt: Runtime, tmp_path) -> None:
    scheme = await make_scheme(rt)
    _, code = await make_voucher(rt, scheme, email="lezen@example.org", locale="en")
    files = dataclasses.replace(rt, settings=msgspec.structs.replace(rt.settings, mail_backend="file"))
    assert await outbox.send_due(files) == 1
    [eml] = list((tmp_path / "mail").glob("*.eml"))
    text = eml.read_text()
    assert "Subject: Your voucher for Test scheme" in text and code in text


async def test_a_mail_folder_that_cannot_be_made_is_retried_like_a_server_that_is_down(rt: Runtime, tmp_path) -> None:
    scheme = await make_scheme(rt)
    await make_voucher(rt, scheme, email="map@example.org")
    (tmp_path / "not-a-folder").write_text("")
    broken = dataclasses.replace(rt, settings=msgspec.structs.replace(
        rt.settings, mail_backend="file", mail_dir=str(tmp_path / "not-a-folder" / "mail")))
    assert await outbox.send_due(broken) == 0
    async with rt.sessionmaker() as session:
        [message] = await session.scalars(select(OutboxMessage))
    assert (message.status, message.attempts, message.claimed_until) == ("pending", 1, None) and message.last_error
    files = dataclasses.replace(rt, settings=msgspec.structs.replace(rt.settings, mail_backend="file"))
    assert await outbox.send_due(files, now=utcnow() + dt.timedelta(minutes=5)) == 1
    assert len(list((tmp_path / "mail").glob("*.eml"))) == 1


async def test_sign_in_links_are_made_when_the_mail_goes_out_not_stored(rt: Runtime, smtp_server) -> None:
    from service import signin
    from service.db import run_in_transaction

    scheme = await make_scheme(rt)
    voucher, _ = await make_voucher(rt, scheme, email="link@example.org")
    assert await outbox.send_due(rt) == 1  # the voucher mail
    await run_in_transaction(rt.sessionmaker, lambda s: signin.request_sign_in(s, rt, "link@example.org", locale="nl"))
    async with rt.sessionmaker() as session:
        stored = repr((await session.execute(select(OutboxMessage.params))).all())
    assert "/mijn-voucher/inloggen/" not in stored
    assert await outbox.send_due(rt) == 1
    body = smtp_server.to("link@example.org")[-1].get_payload(decode=True).decode()
    token = body.split("/mijn-voucher/inloggen/")[1].split()[0]
    assert await run_in_transaction(rt.sessionmaker, lambda s: signin.use_sign_in_token(s, rt, token)) == voucher.id
    assert await run_in_transaction(rt.sessionmaker, lambda s: signin.use_sign_in_token(s, rt, token)) is None


async def test_mail_with_accents_and_euro_signs_reads_back_exactly(rt: Runtime, smtp_server) -> None:
    import email
    import email.policy

    message = OutboxMessage(id=1, message_id="<1@vouchers.local>", to_address="zoe@example.org", template="x",
                            locale="nl", params={})
    subject = "Uw voucher – € 1.350,00 voor café Zoë"
    # Soft line breaks, "=" in a link, trailing and leading white space, a tab and a lone dot
    # must all come back as they were written.
    body = ("Beste Zoë,\n\nU krijgt € 1.350,00.\n" + "x" * 120 + "\nhttps://x.example/?a=b&c=d \n\tingesprongen\n.\n"
            + "ë" * 60 + "\n")
    raw = outbox._mime(rt, message, subject, body).as_bytes()
    assert raw.isascii()  # 7-bit clean for any mail server
    assert max(len(line) for line in raw.splitlines()) <= 78
    back = email.message_from_bytes(raw, policy=email.policy.default)
    assert back["Subject"] == subject and back.get_content() == body
    assert back["Message-ID"] == "<1@vouchers.local>"
    async with outbox._MailServer(rt) as server:  # and the same through the mail server
        await server.deliver(message, outbox._mime(rt, message, subject, body))
    [received] = smtp_server.to("zoe@example.org")
    received = email.message_from_bytes(received.as_bytes(), policy=email.policy.default)
    assert received["Subject"] == subject and received.get_content().rstrip("\n") == body.rstrip("\n")


async def test_a_sender_stopped_mid_batch_leaves_the_rest_to_the_next_at_once(rt: Runtime, smtp_server,
                                                                               monkeypatch) -> None:
    """Stopped after two of five messages (a clean stop cancels the round): the two are marked as
    sent, and the next sender sends the other three now, without waiting for a lease."""
    scheme = await make_scheme(rt)
    for n in range(5):
        await make_voucher(rt, scheme, email=f"stop{n}@example.org")
    deliver = outbox._MailServer.deliver
    delivered = 0

    async def stopped_after_two(self, message, mime):  # type: ignore[no-untyped-def]
        nonlocal delivered
        if delivered == 2:
            raise asyncio.CancelledError
        delivered += 1
        await deliver(self, message, mime)

    monkeypatch.setattr(outbox._MailServer, "deliver", stopped_after_two)
    try:
        await outbox.send_due(rt)
    except asyncio.CancelledError:
        pass
    monkeypatch.setattr(outbox._MailServer, "deliver", deliver)
    assert len(smtp_server.messages) == 2
    assert await outbox.send_due(rt) == 3
    assert sorted(m["To"] for m in smtp_server.messages) == sorted(f"stop{n}@example.org" for n in range(5))
