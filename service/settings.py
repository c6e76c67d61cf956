"""Configuration from ``VOUCHERS_*`` environment variables, decoded into one frozen Struct.

Every figure of a scheme lives in its TOML file; this object only says how the service runs.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec

__all__ = ("ConfigError", "Settings", "DEV_SECRET")

#: The secret used when none is configured. Refused outside development and tests.
DEV_SECRET = "development-secret-change-me"

#: The demo extract of the trade register used by ``make run``.
DEMO_EXTRACT = Path(__file__).parent / "data" / "kvk-demo-extract.csv"

Environment = Literal["development", "test", "production"]


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message names the variable."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """How the service runs. Each field is read from ``VOUCHERS_<FIELD NAME IN CAPITALS>``."""

    environment: Environment = "development"
    """``development`` allows the built-in secret and demo data; ``production`` refuses both."""

    database_url: str = "sqlite+aiosqlite:///var/vouchers.db"
    """SQLAlchemy URL: ``sqlite+aiosqlite:///path`` (embedded) or ``postgresql+asyncpg://…``."""

    base_url: str = "http://127.0.0.1:8000"
    """Public address of the service; QR codes and mailed links point here. When it is not set,
    ``vouchers serve`` sets it to the host and port it serves on."""

    secret_key: Annotated[str, msgspec.Meta(min_length=16)] = DEV_SECRET
    """Root secret. Keys for code hashes, sessions and CSRF are derived from it; changing it
    invalidates every voucher code, so keep it as carefully as the database backups."""

    database_schema: Annotated[str, msgspec.Meta(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] | None = None
    """PostgreSQL schema to use (``search_path``); None for the server's default."""

    db_pool_size: Annotated[int, msgspec.Meta(ge=1, le=200)] = 10
    """Connections one process keeps in its SQLAlchemy pool, which its writing and its reading
    sessions share (on SQLite: file handles, and the only figure that counts). Per process on
    PostgreSQL the service opens at most ``db_pool_size + db_max_overflow + db_driver_connections``;
    ``vouchers serve`` refuses to start when that, times the processes, passes what the server
    takes (README, "How pools are sized")."""

    db_max_overflow: Annotated[int, msgspec.Meta(ge=0, le=200)] = 5
    """Connections a process may open beyond ``db_pool_size`` for a burst, closed again when they
    are returned (PostgreSQL only)."""

    db_driver_connections: Annotated[int, msgspec.Meta(ge=1, le=200)] = 5
    """Connections a process opens to PostgreSQL besides the pool, straight through asyncpg, for
    the scan and the busiest writes (``service.fastpath``)."""

    db_pool_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    """How long a request waits for a free pooled connection before it is answered 503 (the
    database is saturated) instead of waiting on."""

    db_processes: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None
    """How many processes on every host open connections to this database: web workers plus
    background processes. Set it when more than one host (or a separate ``vouchers worker``)
    shares the database, so that the check at start counts them all; unset, ``vouchers serve``
    counts its own (``--workers``, plus one when ``background_tasks`` is on) and ``vouchers
    worker`` one."""

    db_busy_retry_after_seconds: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 5
    """The ``Retry-After`` of the 503 answered when the database takes no more connections or the
    pool has none free."""

    db_writers_per_process: Annotated[int, msgspec.Meta(ge=1, le=200)] = 4
    """Write transactions one server process runs at once on PostgreSQL; more wait their turn in
    the process (SQLite: always one). Few is faster: between its statements a transaction waits for
    the event loop while it holds its row locks (a scheme's row, a provider's enrolment), and every other
    transaction in flight in the process makes that wait longer (see BENCHMARKS.md)."""

    mail_backend: Literal["file", "smtp"] = "file"
    """``file`` writes each message under ``mail_dir`` (development); ``smtp`` sends it."""

    mail_dir: str = "var/mail"
    """Folder for the ``file`` mail backend."""

    mail_from: str = "Gemeente Arnhem – ondernemersvoucher <vouchers@localhost>"
    """Sender of every message."""

    smtp_host: str = "127.0.0.1"
    smtp_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 25
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    """Use STARTTLS on the SMTP connection (required by most relays outside this machine)."""

    background_tasks: bool = True
    """Send mail, run the sweep and seal the audit log (``service.worker``). ``vouchers serve``
    runs them in one process of its own beside the web processes; an app made by ``create_app``
    elsewhere runs them inside itself. Several processes may run them at once: rows are claimed
    in the database, never in memory."""

    background_nice: Annotated[int, msgspec.Meta(ge=0, le=19)] = 10
    """How much lower the CPU priority of the background process of ``vouchers serve`` is than
    the web processes': under load, answers come first and mail follows in the CPU time they
    leave (0: the same priority)."""

    sweep_interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    """How often expiry, lapsed holds and waiting-list promotion run."""

    outbox_interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """How often the outbox is polled for messages due."""

    audit_seal_interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    """How often new audit entries are sealed into the hash chain (``service.audit.seal``)."""

    site_rebuild: bool = True
    """Keep the public site current: the background process rebuilds it into ``site_dir`` when a
    public figure changed (``service.sitegen.keeper``). With several hosts one of them builds."""

    site_dir: str = "var/site"
    """Where the background process writes the public site. Point the web server at
    ``<site_dir>/current`` (a symlink to the live build; see ``service.sitegen.live``)."""

    site_interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    """How often the background process looks for changed figures: at most one build per interval."""

    site_url: str | None = None
    """Where the public site is served, e.g. ``https://www.arnhem.nl/ondernemersvoucher/`` (its
    canonical links and 404 page need it); None: the local preview address."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Lowest level written to standard error. INFO: one line per request, per background job that
    did something, per failure; DEBUG adds a line for every background run that found nothing to do."""

    log_format: Literal["json", "plain"] = "json"
    """``json``: one JSON object per line, for a log collector; ``plain``: ``key=value`` text for
    reading in a terminal. Either way, no codes, tokens, e-mail or IP addresses (``service.logs``)."""

    metrics_allowed: str = "127.0.0.1,::1"
    """Addresses or networks, comma-separated, that may read ``/metrics`` (the Prometheus server's);
    others get 403. Behind a proxy in ``trusted_proxies``, the address it forwards counts."""

    heartbeat_interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    """How often the background process writes its heartbeat (``service.health``)."""

    worker_stale_seconds: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    """``/readyz`` answers 503 when no background process has written its heartbeat for this long."""

    failed_lookup_limit: Annotated[int, msgspec.Meta(ge=1)] = 20
    """Unknown or mistyped codes one client may try per ``failed_lookup_window_seconds``."""

    failed_lookup_window_seconds: Annotated[int, msgspec.Meta(ge=1)] = 600
    """The window of ``failed_lookup_limit``; a refusal says ``Retry-After`` this many seconds."""

    failed_lookup_wait_seconds: Annotated[float, msgspec.Meta(ge=0, le=60)] = 2.0
    """Each lookup takes one of the client's ``failed_lookup_limit`` slots before it is made and
    gives it back when the code is found; a lookup that finds every slot held by the client's own
    lookups still in flight waits this long at most for one to come back before it is refused."""

    max_request_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 64 * 1024
    """Larger request bodies are refused with 413 before they are read into memory."""

    registry: Literal["file", "kvk"] = "file"
    """Where applications are checked: ``file`` reads a CSV extract of the trade register
    (``registry_file``; the demo extract by default), ``kvk`` asks the KvK basisprofiel API."""

    registry_file: str = str(DEMO_EXTRACT)
    """CSV extract for the ``file`` registry: kvk_number,name,employees,postcode,active."""

    kvk_api_url: str = "https://api.kvk.nl/api/v1"
    """Base URL of the KvK API (``/basisprofielen/{kvk}`` is appended)."""

    kvk_api_key: str | None = None
    """API key for the KvK API, sent in the ``apikey`` header."""

    registry_timeout_seconds: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    """A register that has not answered by then counts as down; the application waits."""

    confirm_link_hours: Annotated[int, msgspec.Meta(ge=1)] = 48
    """How long the link that confirms an applicant's e-mail address works."""

    sign_in_link_minutes: Annotated[int, msgspec.Meta(ge=1)] = 15
    """How long a mailed "my voucher" sign-in link works (once)."""

    limit_window_seconds: Annotated[int, msgspec.Meta(ge=1)] = 3600
    """Window of the per-address and per-IP limits on applying and sign-in links."""

    limit_per_address: Annotated[int, msgspec.Meta(ge=1)] = 5
    """Applications or sign-in links one e-mail address may ask for per window."""

    limit_per_ip: Annotated[int, msgspec.Meta(ge=1)] = 30
    """Applications or sign-in links one IP address may ask for per window."""

    session_idle_minutes_staff: Annotated[int, msgspec.Meta(ge=1)] = 30
    """A municipality staff member's session ends after this many minutes without a request."""

    session_absolute_hours_staff: Annotated[int, msgspec.Meta(ge=1)] = 8
    """A municipality staff member's session ends this many hours after signing in, however busy."""

    session_idle_minutes_coach: Annotated[int, msgspec.Meta(ge=1)] = 120
    """A coach's (provider staff) session ends after this many minutes without a request: longer
    than staff, so that a session with a client does not sign the coach out before the scan."""

    session_absolute_hours_coach: Annotated[int, msgspec.Meta(ge=1)] = 12
    """A coach's session ends this many hours after signing in (a working day)."""

    session_idle_minutes_entrepreneur: Annotated[int, msgspec.Meta(ge=1)] = 60
    """An entrepreneur's "my voucher" session ends after this many minutes without a request."""

    session_absolute_hours_entrepreneur: Annotated[int, msgspec.Meta(ge=1)] = 12
    """An entrepreneur's "my voucher" session ends this many hours after signing in."""

    trusted_proxies: str = ""
    """Addresses or networks of the reverse proxies in front of the service, comma-separated
    (``127.0.0.1,10.0.0.0/8``). A request that comes from one of them is counted (rate limits, audit
    log) under the address its ``X-Forwarded-For`` names; empty: under the connection's own
    address, which is right only when nothing sits in front of the service."""

    # --- eHerkenning through the municipality's broker (OpenID Connect) ---------------------
    # The broker ("makelaar") gives the municipality the first five when the service is
    # registered with it; the claim names are in its interface description.

    eherkenning_issuer: str | None = None
    """The broker's issuer URL, exactly as its discovery document
    (``<issuer>/.well-known/openid-configuration``) states it. Empty: no eHerkenning, and schemes
    that demand it take no applications. In development, ``vouchers serve`` starts the development
    broker (``vouchers dev-broker``) and sets this and the client settings."""

    eherkenning_client_id: str = "vouchers"
    """The client id the broker registered for this service."""

    eherkenning_client_secret: str | None = None
    """The client secret (``client_secret_basic``), unless ``eherkenning_private_key_file`` is set."""

    eherkenning_private_key_file: str | None = None
    """A PEM or JWK file with this service's private key: the service then authenticates with a
    signed assertion (``private_key_jwt``) instead of the secret; give the broker the public key."""

    eherkenning_level: Literal["EH1", "EH2", "EH2+", "EH3", "EH4"] = "EH2+"
    """The lowest level of assurance accepted for signing in to "my voucher"; a scheme's file
    names its own for applying (``eherkenning_level``, EH2+ when it says nothing)."""

    eherkenning_level_claim: str = "acr"
    """The claim with the level of assurance (``EH3`` or ``urn:etoegang:core:assurance-class:loa3``)."""

    eherkenning_kvk_claim: str = "urn:etoegang:1.9:EntityConcernedID:KvKnr"
    """The claim with the KvK number of the firm the person acts for."""

    eherkenning_branch_claim: str = "urn:etoegang:1.9:ServiceRestriction:Vestigingsnr"
    """The claim with the branch (vestiging) number, when the authorisation is limited to one."""

    eherkenning_person_claim: str = "sub"
    """The claim that identifies the acting person by a pseudonym (never a name or BSN)."""

    # --- single sign-on for municipality staff (the municipality's own provider) ------------

    staff_oidc_issuer: str | None = None
    """Issuer URL of the municipality's OpenID Connect provider (Entra ID:
    ``https://login.microsoftonline.com/<tenant>/v2.0``). Empty: password and TOTP only."""

    staff_oidc_client_id: str = "vouchers-staff"
    staff_oidc_client_secret: str | None = None

    staff_oidc_group_claim: str = "groups"
    """The claim that lists the person's groups (Entra ID sends group object ids)."""

    staff_oidc_roles: str = ""
    """Which group gives which role, comma-separated ``group=role`` (roles: beheerder,
    beoordelaar, financieel, lezer); the first listed group the person has wins. A person with
    none of them is refused."""

    oidc_clock_skew_seconds: Annotated[int, msgspec.Meta(ge=0, le=600)] = 60
    """How far the provider's clock may differ from ours when an ID token's times are checked."""

    oidc_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 10.0
    """A provider that has not answered by then counts as unavailable; the person is told so."""

    def __post_init__(self) -> None:
        if self.environment == "production" and self.secret_key == DEV_SECRET:
            raise ConfigError("VOUCHERS_SECRET_KEY must be set to a long random value in production")
        if not self.database_url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ConfigError(
                "VOUCHERS_DATABASE_URL must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            )
        if self.registry == "kvk" and not self.kvk_api_key:
            raise ConfigError("VOUCHERS_KVK_API_KEY must be set when VOUCHERS_REGISTRY is kvk")
        for name in ("eherkenning_issuer", "staff_oidc_issuer"):
            issuer = getattr(self, name)
            if issuer and self.environment == "production" and not issuer.startswith("https://"):
                raise ConfigError(f"VOUCHERS_{name.upper()} must be an https:// address in production")
            if issuer and not issuer.startswith(("https://", "http://")):
                raise ConfigError(f"VOUCHERS_{name.upper()} must be the provider's issuer URL")
        if self.eherkenning_issuer and not (self.eherkenning_client_secret or self.eherkenning_private_key_file):
            raise ConfigError("VOUCHERS_EHERKENNING_CLIENT_SECRET or VOUCHERS_EHERKENNING_PRIVATE_KEY_FILE must be "
                              "set when VOUCHERS_EHERKENNING_ISSUER is")
        if self.eherkenning_private_key_file and not Path(self.eherkenning_private_key_file).is_file():
            raise ConfigError("VOUCHERS_EHERKENNING_PRIVATE_KEY_FILE: no such file")
        if self.staff_oidc_issuer and not self.staff_oidc_client_secret:
            raise ConfigError("VOUCHERS_STAFF_OIDC_CLIENT_SECRET must be set when VOUCHERS_STAFF_OIDC_ISSUER is")
        if self.staff_oidc_issuer and not self.staff_roles():
            raise ConfigError("VOUCHERS_STAFF_OIDC_ROLES must say which group gives which role")
        for _group, role in self.staff_roles():
            if role not in ("beheerder", "beoordelaar", "financieel", "lezer"):
                raise ConfigError(f"VOUCHERS_STAFF_OIDC_ROLES: {role!r} is not a staff role")
        try:
            self.proxy_networks()
        except ValueError as exc:
            raise ConfigError(f"VOUCHERS_TRUSTED_PROXIES: {exc}") from None
        try:
            self.metrics_networks()
        except ValueError as exc:
            raise ConfigError(f"VOUCHERS_METRICS_ALLOWED: {exc}") from None

    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``trusted_proxies`` as networks (a single address is a network of one)."""
        return tuple(ipaddress.ip_network(part.strip(), strict=False)
                     for part in self.trusted_proxies.split(",") if part.strip())

    def metrics_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``metrics_allowed`` as networks."""
        return tuple(ipaddress.ip_network(part.strip(), strict=False)
                     for part in self.metrics_allowed.split(",") if part.strip())

    def staff_roles(self) -> list[tuple[str, str]]:
        """``staff_oidc_roles`` as ``(group, role)`` pairs, in the order written."""
        pairs = []
        for item in self.staff_oidc_roles.split(","):
            group, _, role = item.strip().rpartition("=")
            if item.strip():
                if not group:
                    raise ConfigError("VOUCHERS_STAFF_OIDC_ROLES: write group=role, comma-separated")
                pairs.append((group.strip(), role.strip()))
        return pairs

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Read ``VOUCHERS_*`` variables; a wrong one raises :class:`ConfigError` naming it."""
        environ = dict(os.environ if environ is None else environ)
        raw: dict[str, object] = {}
        for name in cls.__struct_fields__:
            value = environ.get(f"VOUCHERS_{name.upper()}")
            if value is not None:
                raw[name] = value
        raw.update(overrides)
        try:
            # strict=False lets "8025" become 8025 and "false" become False.
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            path = str(exc).rpartition("at `$.")[2].rstrip("`")
            variable = f"VOUCHERS_{path.upper()}" if path and path != str(exc) else "VOUCHERS_*"
            raise ConfigError(f"{variable}: {exc}") from None

    def session_timeouts(self, kind: str) -> tuple[int, int]:
        """(idle, absolute) limits in seconds of a session of a principal of ``kind``
        (``staff``, ``provider-staff`` or ``entrepreneur``)."""
        if kind == "staff":
            return self.session_idle_minutes_staff * 60, self.session_absolute_hours_staff * 3600
        if kind == "provider-staff":
            return self.session_idle_minutes_coach * 60, self.session_absolute_hours_coach * 3600
        return self.session_idle_minutes_entrepreneur * 60, self.session_absolute_hours_entrepreneur * 3600

    @property
    def session_cookie(self) -> str:
        """The session cookie's name: with the ``__Host-`` prefix on https, which the browser only
        accepts for a Secure cookie of the whole host (no Domain, Path=/)."""
        return "__Host-vouchers_session" if self.base_url.startswith("https://") else "vouchers_session"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def derive_key(self, purpose: str) -> bytes:
        """A 32-byte key for one purpose, so that no two features share key material."""
        return _derived_key(self.secret_key, purpose)


@functools.lru_cache(maxsize=64)
def _derived_key(secret_key: str, purpose: str) -> bytes:
    # Kept per process: every API call hashes its bearer token with one of these keys.
    return hmac.digest(secret_key.encode(), purpose.encode(), "sha256")
