"""The one outbox for all mail.

A message is written in the same transaction as the change it reports and is rendered and sent
later by :func:`send_due`, which several processes, on several hosts, may run at once: each claims
rows first (on PostgreSQL a row lock held while they are sent, so a sender that dies lets go at once;
on SQLite a lease) and marks each message as sent as soon as the mail server has taken it, so a
message is handed to the mail server once, also when a sender is killed in the middle of a batch
(only a death in the moment between the mail server's acceptance and that mark can send one
again, with the same ``Message-ID``). A failure is retried with back-off; nothing is dropped while the
mail server is down. Messages are rendered at send time from their parameters, so a voucher code
is never stored in the outbox: it is derived when the mail goes out.
"""

from __future__ import annotations

import binascii
import datetime as dt
import email.utils
import functools
from email.header import Header
from email.message import Message
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import Compat32
import logging
from pathlib import Path
from typing import Any

import aiosmtplib
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import BigInteger, any_, bindparam, func, insert, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from . import account_links, i18n, logs, mail_links
from .codes import format_code
from .errors import REJECTION_REASONS
from .models import OutboxMessage, Voucher, utcnow
from .runtime import Runtime

__all__ = ("enqueue", "render", "send_due")

log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent / "templates" / "mail"
_TEMPLATE_NAMES = frozenset(path.stem for path in TEMPLATES.glob("*.txt"))
_INSERT = insert(OutboxMessage.__table__)
LEASE = dt.timedelta(minutes=5)
MAX_BACKOFF = dt.timedelta(hours=1)

_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    extensions=["jinja2.ext.i18n"],
    autoescape=select_autoescape(enabled_extensions=()),  # plain-text mail
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)
_env.install_gettext_callables(i18n.gettext, i18n.ngettext, newstyle=True)  # type: ignore[attr-defined]
_env.filters["money"] = i18n.format_money
_env.filters["day"] = i18n.format_day
_env.filters["last_day"] = i18n.format_last_day
_env.globals["reason_texts"] = REJECTION_REASONS


def message_values(to: str, template: str, locale: str, params: dict[str, Any]) -> dict[str, Any]:
    if template not in _TEMPLATE_NAMES:
        raise ValueError(f"no mail template {template!r}")
    return {"message_id": email.utils.make_msgid(domain="vouchers.local"), "to_address": to, "template": template,
            "locale": locale, "params": params}


def enqueue(session: AsyncSession, *, to: str, template: str, locale: str, **params: Any) -> OutboxMessage:
    """Add a message to the session; it exists only if the surrounding transaction commits."""
    message = OutboxMessage(**message_values(to, template, locale, params))
    session.add(message)
    return message


async def enqueue_now(session: AsyncSession, *, to: str, template: str, locale: str, **params: Any) -> None:
    """:func:`enqueue` for the hot paths that write with Core statements: one INSERT now, on the
    session's connection (the outbox is not in the audit log)."""
    conn = await session.connection()
    await conn.execute(_INSERT, message_values(to, template, locale, params))


async def render(session: AsyncSession, rt: Runtime, message: OutboxMessage,
                 salts: dict[int, bytes] | None = None) -> tuple[str, str]:
    """Subject and body. Secrets are derived here, not stored: ``voucher_id`` gives the voucher's
    code, ``sign_in_token_ids`` the sign-in links, ``confirm_for`` an application's confirmation link,
    ``report_redemption_id`` the link that reports a redemption as wrong, ``confirm_provider_for`` a
    provider sign-up's confirmation link, ``account_link_id`` a one-time link to set a password.
    ``salts``: the vouchers' code salts, read for a whole batch at once."""
    context = dict(message.params)
    if "voucher_id" in context:
        if salts is None:
            salts = await _code_salts(session, [message])
        salt = salts.get(context["voucher_id"])
        if salt is not None:
            context["voucher_code"] = format_code(rt.keys.code_for(salt))
    # Links that let someone in are made now too, never stored.
    if "sign_in_token_ids" in context:
        context["links"] = await mail_links.sign_in_links(session, rt, context["sign_in_token_ids"])
    if "confirm_for" in context:
        context["confirm_url"] = mail_links.confirm_link(rt, context["confirm_for"])
    if "report_redemption_id" in context:
        context["report_url"] = mail_links.report_link(rt, context["report_redemption_id"])
    if "confirm_provider_for" in context:
        context["confirm_url"] = mail_links.provider_confirm_link(rt, context["confirm_provider_for"])
    if "account_link_id" in context:
        context["account_url"] = await account_links.url_for_id(session, rt, context["account_link_id"])
    context["base_url"] = rt.settings.base_url.rstrip("/")
    context["locale"] = message.locale
    with i18n.use_locale(message.locale):
        text = _env.get_template(f"{message.template}.txt").render(context)
    subject, _, body = text.partition("\n")
    return subject.removeprefix("Subject:").strip(), body.lstrip("\n")


async def _code_salts(session: AsyncSession, messages: list[OutboxMessage]) -> dict[int, bytes]:
    ids = {m.params["voucher_id"] for m in messages if "voucher_id" in m.params}
    if not ids:
        return {}
    rows = await session.execute(select(Voucher.id, Voucher.code_salt).where(Voucher.id.in_(ids)))
    return {voucher_id: salt for voucher_id, salt in rows}


async def send_due(rt: Runtime, *, now: dt.datetime | None = None, batch: int = 100) -> int:
    """Send what is due, a batch at a time until nothing due is left (or the mail server fails);
    returns how many were sent. Safe to run in several processes."""
    total = 0
    while True:
        claimed, sent = await _send_batch(rt, now or utcnow(), batch)
        total += sent
        if claimed < batch or sent < claimed:
            return total


_TABLE = OutboxMessage.__table__


def _due(now: dt.datetime) -> list[Any]:
    """Due, and not claimed by a sender that leases its claims (SQLite, or an older version)."""
    return [_TABLE.c.status == "pending", _TABLE.c.next_attempt_at <= now,
            (_TABLE.c.claimed_until.is_(None)) | (_TABLE.c.claimed_until < now)]


def _sent(ids: list[int]) -> Any:
    return (update(_TABLE).where(_TABLE.c.id.in_(ids))
            .values(status="sent", sent_at=utcnow(), claimed_until=None, attempts=_TABLE.c.attempts + 1))


async def _send_batch(rt: Runtime, now: dt.datetime, batch: int) -> tuple[int, int]:
    """Claim up to ``batch`` due messages and hand them to the mail server over one connection,
    marking each as sent as soon as the mail server has taken it, so that a sender that dies in
    the middle of a batch sends nothing again. Returns (claimed, sent)."""
    if rt.settings.is_sqlite:
        return await _send_leased(rt, now, batch)
    return await _send_locked(rt, now, batch)


# A mark's commit does not wait for the disk: a sender that dies loses nothing the database
# server took, and only a crash of the database server itself could forget the last few marks
# (their mails would then go out again, with the same Message-ID). Waiting would hold a sender
# to one mail per flush of the database's log to disk.
_NO_FLUSH_WAIT = text("SET LOCAL synchronous_commit = off")


# One statement whatever the number of ids (``IN`` would be prepared again for each length). It
# also says what ``_NO_FLUSH_WAIT`` says, for the transaction it begins, saving a round trip a mail
# (evaluated for each row it locks; with no row locked there is no mark to commit).
_RELOCK = (select(_TABLE.c.id, func.set_config("synchronous_commit", "off", True))
           .where(_TABLE.c.id == any_(bindparam("ids", type_=postgresql.ARRAY(BigInteger))))
           .with_for_update(skip_locked=True))


async def _deliver(rt: Runtime, server: _MailServer, message: OutboxMessage, subject: str, body: str,
                   now: dt.datetime) -> tuple[Any, bool]:
    """Hand one mail to the mail server: the UPDATE that marks it (sent, or back for a later try
    after a failure of any kind), and whether it went."""
    try:
        await server.deliver(message, _mime(rt, message, subject, body))
    except Exception as exc:  # any failure of the mail server: try again later
        # The server's message can name the address: the line has the exception's type only.
        logs.event(log, logging.WARNING, "mail_not_sent", outbox_id=message.id, **logs.failure_fields(exc))
        return _failed(message, exc, now), False
    return _sent([message.id]), True


async def _send_locked(rt: Runtime, now: dt.datetime, batch: int) -> tuple[int, int]:
    """PostgreSQL: the batch's rows stay locked (``FOR UPDATE SKIP LOCKED``) for as long as they
    are being sent, by a transaction that commits each message's mark and locks the rest again.
    If this process dies, PostgreSQL ends its transaction and another sender takes the rest at
    once, with no lease to wait for. Another sender may take a row in the moment between the
    commit and the new lock; it is then skipped here."""
    async with rt.engine.connect() as connection:  # one connection, so that its locks are one sender's
        await connection.execute(_NO_FLUSH_WAIT)
        rows = (await connection.execute(select(_TABLE).where(*_due(now)).order_by(_TABLE.c.id).limit(batch)
                                         .with_for_update(skip_locked=True))).all()
        if not rows:
            await connection.rollback()
            return 0, 0
        claimed = [OutboxMessage(**row._mapping) for row in rows]
        async with rt.reader() as session:
            salts = await _code_salts(session, claimed)
            rendered = [(message, *await render(session, rt, message, salts)) for message in claimed]
        held = {message.id for message in claimed}
        sent = 0
        async with _MailServer(rt) as server:
            for n, (message, subject, body) in enumerate(rendered):
                if message.id not in held:
                    continue
                mark, went = await _deliver(rt, server, message, subject, body, now)
                sent += went
                await connection.execute(mark)
                await connection.commit()
                rest = [m.id for m, _, _ in rendered[n + 1:] if m.id in held]
                if rest:
                    held = set((await connection.execute(_RELOCK.where(*_due(now)), {"ids": rest})).scalars())
        await connection.commit()
    return len(claimed), sent


async def _send_leased(rt: Runtime, now: dt.datetime, batch: int) -> tuple[int, int]:
    """SQLite: the database's write lock cannot be held while mail is sent, so the claim is a
    lease (``claimed_until``) committed first; a sender that dies leaves the rest of its batch to
    the next one when the lease runs out."""
    due = select(OutboxMessage.id).where(*_due(now)).order_by(OutboxMessage.id).limit(batch)
    # One statement takes the lease: loading the rows and flushing an UPDATE for each cost more
    # than rendering the mail did.
    claim = (update(OutboxMessage).where(OutboxMessage.id.in_(due.scalar_subquery()))
             .values(claimed_until=now + LEASE).returning(OutboxMessage))
    async with rt.sessionmaker() as session, session.begin():
        claimed = sorted(await session.scalars(claim, execution_options={"audit_skip": True}),
                         key=lambda message: message.id)
    if not claimed:
        return 0, 0
    # Rendered after the claim has committed: the claim holds the database's write lock.
    async with rt.reader() as session:
        salts = await _code_salts(session, claimed)
        rendered = [(message, *await render(session, rt, message, salts)) for message in claimed]
    sent, marked = 0, 0
    try:
        async with _MailServer(rt) as server:
            for message, subject, body in rendered:
                mark, went = await _deliver(rt, server, message, subject, body, now)
                sent += went
                async with rt.engine.begin() as connection:  # Core: no session to set up for one UPDATE
                    await connection.execute(mark)
                marked += 1
    finally:
        if marked < len(claimed):  # stopped (or failed) in the middle: the rest is free again at once
            await _release(rt, [message.id for message in claimed[marked:]])
    return len(claimed), sent


async def _release(rt: Runtime, ids: list[int]) -> None:
    """Give up the lease on messages not sent, so that the next sender need not wait for it (a
    process killed outright cannot; its lease runs out)."""
    try:
        async with rt.engine.begin() as connection:
            await connection.execute(update(_TABLE).where(_TABLE.c.id.in_(ids), _TABLE.c.status == "pending")
                                     .values(claimed_until=None))
    except Exception as exc:  # the database is away: the lease runs out instead
        logs.event(log, logging.WARNING, "mail_lease_kept", mails=len(ids), **logs.failure_fields(exc))


class _MailServer:
    """One connection to the mail server for a batch (or the mail folder, in development). A
    connection that cannot be made fails each message of the batch, which is then retried."""

    def __init__(self, rt: Runtime) -> None:
        self.settings = rt.settings
        self.smtp: aiosmtplib.SMTP | None = None
        self.error: Exception | None = None

    async def __aenter__(self) -> _MailServer:
        s = self.settings
        if s.mail_backend == "file":
            try:
                Path(s.mail_dir).mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # each message fails and is retried, as when the mail server is down
                self.error = exc
        else:
            smtp = aiosmtplib.SMTP(hostname=s.smtp_host, port=s.smtp_port, username=s.smtp_username,
                                   password=s.smtp_password, start_tls=s.smtp_starttls, timeout=30)
            try:
                await smtp.connect()
            except Exception as exc:
                self.error = exc
            else:
                self.smtp = smtp
        return self

    async def deliver(self, message: OutboxMessage, mime: Message) -> None:
        if self.settings.mail_backend == "file":
            if self.error is not None:
                raise self.error
            (Path(self.settings.mail_dir) / f"{message.id:08d}.eml").write_bytes(mime.as_bytes())
            return
        if self.smtp is None:
            raise self.error or aiosmtplib.SMTPServerDisconnected("not connected")
        # The bytes as flattened by ``_Policy``: ``send_message`` would flatten them again, slowly.
        sender = email.utils.parseaddr(self.settings.mail_from)[1]
        await self.smtp.sendmail(sender, [message.to_address], mime.as_bytes())

    async def __aexit__(self, *_exc: object) -> None:
        if self.smtp is not None and self.smtp.is_connected:
            try:
                await self.smtp.quit()
            except aiosmtplib.SMTPException:
                self.smtp.close()


def _failed(message: OutboxMessage, exc: Exception, now: dt.datetime) -> Any:
    """The UPDATE that puts a message back, to be tried again after a back-off."""
    backoff = min(dt.timedelta(seconds=10 * 2 ** min(message.attempts, 12)), MAX_BACKOFF)
    return (update(_TABLE).where(_TABLE.c.id == message.id)
            .values(attempts=_TABLE.c.attempts + 1, next_attempt_at=now + backoff, claimed_until=None,
                    last_error=str(exc)[:1000]))


# The standard library's classic message class: the modern ``EmailMessage`` API parses every header
# into an object and cost about 1 ms a mail here. Quoted-printable keeps the text readable in the
# mail folder; a header is encoded only when it is not plain ASCII.


class _Policy(Compat32):
    """Compat32, but a short plain-ASCII header is written as it is, a non-ASCII one as RFC 2047
    encoded words, and each folded form kept per process: the general folding algorithm took
    75-800 µs a header, most of a mail's cost, and senders and subjects repeat."""

    def fold(self, name: str, value: Any) -> str:
        return self.fold_binary(name, value).decode("ascii")

    def fold_binary(self, name: str, value: Any) -> bytes:
        if not isinstance(value, str):
            return super().fold_binary(name, value)
        if value.isascii() and "\r" not in value and "\n" not in value and len(name) + len(value) + 2 <= 78:
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return _folded(self, name, value)


@functools.lru_cache(maxsize=1024)
def _folded(policy: Compat32, name: str, value: str) -> bytes:
    encoded = value if value.isascii() else Header(value, "utf-8", header_name=name)
    return Compat32.fold_binary(policy, name, encoded)


_POLICY = _Policy()


@functools.lru_cache(maxsize=8)
def _sender(mail_from: str) -> str:
    name, address = email.utils.parseaddr(mail_from)
    return email.utils.formataddr((name, address), charset="utf-8")


def _mime(rt: Runtime, message: OutboxMessage, subject: str, body: str) -> Message:
    # What ``MIMEText(body, "plain", "utf-8")`` with quoted-printable writes, the body encoded by
    # binascii's C encoder rather than email.quoprimime's Python one (which took half a mail's time).
    mime = MIMENonMultipart("text", "plain", charset="utf-8", policy=_POLICY)
    mime["Content-Transfer-Encoding"] = "quoted-printable"
    mime.set_payload(binascii.b2a_qp(body.encode("utf-8")).decode("ascii"))
    mime["From"] = _sender(rt.settings.mail_from)
    mime["To"] = message.to_address
    mime["Subject"] = subject  # encoded, if need be, by _Policy
    # A stable Message-ID lets the receiving side drop a duplicate if a lease ever expired
    # between the mail server's acceptance and our "sent" mark.
    mime["Message-ID"] = message.message_id
    mime["Date"] = email.utils.format_datetime(utcnow())
    mime["Content-Language"] = message.locale
    return mime
