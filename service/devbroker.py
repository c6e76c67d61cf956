"""A development and test OpenID Connect provider: an eHerkenning broker ("makelaar") for
entrepreneurs and the municipality's own provider for staff, in one process on loopback.

It is built on authlib's server parts (authorization code grant, PKCE, OpenID Connect ID
tokens) and serves real discovery, authorize, token, userinfo, JWKS and end-session endpoints
with tokens signed by an RSA key it makes at start. Instead of a real sign-in it shows a page,
clearly marked as a development broker, on which a developer picks a test firm (the KvK numbers
of the register's CSV extract), a level of assurance and the acting person, or, for the staff
client, an e-mail address and groups. The same page can make the broker misbehave (a wrong
issuer, an expired token, …), so the service's answers to a bad broker can be seen and tested.

Never for production: it signs anyone in as anyone. It refuses to listen anywhere but on
loopback. Run it with ``vouchers dev-broker`` (``vouchers serve`` starts it in development).
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import html
import json
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from authlib.oauth2.rfc6749 import AuthorizationServer, ClientMixin, JsonRequest, OAuth2Request
from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import OAuth2Error
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode
from joserfc import jwt
from joserfc.jwk import RSAKey, import_key

from . import i18n
from .errors import N_
from .levels import LEVELS

__all__ = ("FAULTS", "Broker", "main")

KVK_CLAIM = "urn:etoegang:1.9:EntityConcernedID:KvKnr"
BRANCH_CLAIM = "urn:etoegang:1.9:ServiceRestriction:Vestigingsnr"

#: Ways the broker can misbehave, chosen per sign-in on its page (the value is the form's).
FAULTS = {
    "": N_("Behave correctly"),
    "wrong-issuer": N_("ID token from another issuer"),
    "wrong-audience": N_("ID token for another client"),
    "wrong-nonce": N_("ID token with another nonce"),
    "wrong-state": N_("Redirect back with another state"),
    "expired": N_("ID token expired an hour ago"),
    "clock-ahead": N_("The broker's clock runs 30 seconds ahead (not valid before then)"),
    "unsigned": N_("Unsigned ID token (alg none)"),
    "unknown-key": N_("ID token signed with a key not in the JWKS"),
    "no-kvk": N_("No KvK number in the ID token"),
    "slow": N_("Token endpoint answers too late"),
    "error": N_("Send the person back with an error (as if they cancelled)"),
}

_REGISTER = Path(__file__).parent / "data" / "kvk-demo-extract.csv"


@dataclass
class Client(ClientMixin):
    """A registered client: ``redirect_base`` is the service's address; any path under it may
    be a redirect URI (the service's callbacks)."""

    client_id: str
    client_secret: str | None
    redirect_base: str
    public_key: dict[str, Any] | None = None
    """The client's public JWK when it authenticates with a private-key JWT."""
    staff: bool = False
    """The municipality's staff client: the page asks for an e-mail address and groups."""

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_base + "/"

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(s for s in (scope or "").split() if s in ("openid", "profile", "email"))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri == self.redirect_base or redirect_uri.startswith(self.redirect_base + "/")

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client_secret is not None and secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if method == "private_key_jwt":
            return self.public_key is not None
        return method in ("client_secret_basic", "client_secret_post") and self.client_secret is not None

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code:
    """An authorization code and everything the token endpoint needs to answer it."""

    code: str
    client_id: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    user: dict[str, Any]
    fault: str
    acr: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> str | None:
        return self.acr

    def get_amr(self) -> list[str] | None:
        return None


class _Payload(BasicOAuth2Payload):
    pass


class _Request(OAuth2Request):
    def __init__(self, method: str, uri: str, headers: dict[str, str], data: dict[str, str]) -> None:
        super().__init__(method, uri, headers=headers)
        self.payload = _Payload(data)
        self._data = data

    @property
    def args(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.uri).query))

    @property
    def form(self) -> dict[str, str]:
        return self._data


class Broker(AuthorizationServer):
    """The authorization server: clients, codes and tokens in memory (one process)."""

    def __init__(self, issuer: str, *, slow_seconds: float = 15.0, register: Path = _REGISTER) -> None:
        super().__init__(scopes_supported=["openid", "profile", "email"])
        self.issuer = issuer.rstrip("/")
        self.slow_seconds = slow_seconds
        self.key = RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(8), "use": "sig", "alg": "RS256"})
        self.clients: dict[str, Client] = {}
        self.codes: dict[str, Code] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        """Access tokens and the person they were issued for (userinfo)."""
        self.disabled: set[str] = set()
        """Subjects whose accounts are disabled: their tokens stop working at userinfo."""
        self.lock = threading.Lock()
        self.firms = _read_register(register)
        self.register_token_generator("default", BearerTokenGenerator(
            lambda *_args, **_kw: secrets.token_urlsafe(32)))
        self.register_grant(_CodeGrant, [CodeChallenge(required=True), _OpenIDCode(self)])
        self.register_client_auth_method(_ClientAssertion.CLIENT_AUTH_METHOD, _ClientAssertion(self.issuer + "/token"))

    # --- authlib's integration points ----------------------------------------------------
    def query_client(self, client_id: str) -> Client | None:
        return self.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        with self.lock:
            self.tokens[token["access_token"]] = {"user": request.user, "expires": time.time() + token["expires_in"]}

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        return request

    def create_json_request(self, request: Any) -> JsonRequest:  # pragma: no cover - no JSON endpoints
        raise NotImplementedError

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, list[tuple[str, str]]]:
        return status, body, list(headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    # --- what the pages need -------------------------------------------------------------
    def discovery(self) -> dict[str, Any]:
        i = self.issuer
        return {
            "issuer": i, "authorization_endpoint": f"{i}/authorize", "token_endpoint": f"{i}/token",
            "userinfo_endpoint": f"{i}/userinfo", "jwks_uri": f"{i}/jwks", "end_session_endpoint": f"{i}/logout",
            "response_types_supported": ["code"], "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code"], "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"], "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
            "scopes_supported": ["openid", "profile", "email"], "acr_values_supported": list(LEVELS.values()),
            "claims_supported": ["sub", "acr", KVK_CLAIM, BRANCH_CLAIM, "email", "name", "groups"],
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.key.as_dict(private=False)]}

    def sign(self, claims: dict[str, Any], fault: str) -> str:
        """An ID token, signed as it should be, or as the fault asks."""
        if fault == "unsigned":
            def part(value: dict[str, Any]) -> str:
                return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")
            return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."
        key = self.key
        if fault == "unknown-key":
            key = RSAKey.generate_key(2048, parameters={"kid": "not-" + str(self.key.kid)})
        return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key)


def _read_register(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [(row["kvk_number"], row["name"]) for row in csv.DictReader(handle)]


class _ClientAssertion(JWTBearerClientAssertion):
    """``private_key_jwt`` (RFC 7523): the client signs a short JWT with its own key, once."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, token_url: str) -> None:
        super().__init__()
        self.audiences = [token_url]
        self.seen: dict[str, float] = {}

    def get_audiences(self) -> list[str]:
        return self.audiences

    def resolve_client_public_key(self, client: Client) -> Any:
        return import_key(client.public_key) if client.public_key else None

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        now = time.time()
        self.seen = {k: v for k, v in self.seen.items() if v > now}
        if jti in self.seen:
            return False
        self.seen[jti] = float(claims["exp"])
        return True


class _CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
    server: Broker

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = request.payload.data
        user = request.user
        with self.server.lock:
            self.server.codes[code] = Code(
                code=code, client_id=request.client.get_client_id(), redirect_uri=data.get("redirect_uri", ""),
                scope=request.client.get_allowed_scope(data.get("scope", "")), nonce=data.get("nonce"),
                code_challenge=data.get("code_challenge"), code_challenge_method=data.get("code_challenge_method"),
                user=user, fault=user.get("_fault", ""), acr=user.get("acr"))

    def query_authorization_code(self, code: str, client: Client) -> Code | None:
        with self.server.lock:
            item = self.server.codes.get(code)
        if item is not None and item.client_id == client.get_client_id() and time.time() - item.auth_time < 600:
            return item
        return None

    def delete_authorization_code(self, authorization_code: Code) -> None:
        with self.server.lock:
            self.server.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: Code) -> dict[str, Any]:
        return authorization_code.user


class _OpenIDCode(OpenIDCode):
    def __init__(self, broker: Broker) -> None:
        super().__init__(require_nonce=True)
        self.broker = broker

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        with self.broker.lock:
            return any(c.nonce == nonce for c in self.broker.codes.values())

    def resolve_client_private_key(self, client: Client) -> Any:
        return self.broker.key

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        return {"iss": self.broker.issuer, "aud": [client.get_client_id()]}

    def generate_user_info(self, user: dict[str, Any], scope: str) -> dict[str, Any]:
        return {k: v for k, v in user.items() if not k.startswith("_")}

    def encode_id_token(self, token: dict[str, Any], request: OAuth2Request) -> str:
        code = request.authorization_code
        claims = self.get_compatible_claims(request)
        claims.update(self.get_authorization_code_claims(code))
        claims.update(self.generate_user_info(request.user, token["scope"]))
        fault = code.fault
        if fault == "wrong-issuer":
            claims["iss"] = "https://broker.example.invalid"
        elif fault == "wrong-audience":
            claims["aud"] = ["another-client"]
        elif fault == "wrong-nonce":
            claims["nonce"] = secrets.token_urlsafe(16)
        elif fault == "expired":
            claims["iat"], claims["exp"] = int(time.time()) - 7200, int(time.time()) - 3600
        elif fault == "clock-ahead":
            claims["iat"], claims["nbf"] = int(time.time()) + 30, int(time.time()) + 30
            claims["exp"] = claims["iat"] + 3600
        elif fault == "no-kvk":
            claims.pop(KVK_CLAIM, None)
        elif fault == "slow":
            time.sleep(self.broker.slow_seconds)
        return self.broker.sign(claims, fault)


# --- the HTTP side -------------------------------------------------------------------------

_STYLE = """body{font:1rem/1.5 system-ui,sans-serif;max-width:40rem;margin:1rem auto;padding:0 1rem;color:#1a1a1a}
.dev{background:#fff3cd;border:2px solid #8a6d00;padding:.5rem 1rem}fieldset{margin:1rem 0;border:1px solid #555}
label{display:block;margin:.5rem 0 .25rem;font-weight:600}select,input{font:inherit;padding:.25rem;max-width:100%}
button{font:inherit;padding:.5rem 1rem;margin:.5rem .5rem 0 0}:focus{outline:3px solid #1d4ed8;outline-offset:2px}"""


def _page(title: str, body: str, lang: str = "nl") -> bytes:
    return (f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><main>{body}</main></body></html>").encode()


def _options(items: list[tuple[str, str]], selected: str = "") -> str:
    return "".join(f'<option value="{html.escape(v)}"{" selected" if v == selected else ""}>{html.escape(t)}</option>'
                   for v, t in items)


def consent_page(broker: Broker, client: Client, query: dict[str, str]) -> bytes:
    """The page instead of a real sign-in, in the language the client asked for (``ui_locales``)."""
    wanted = [tag.split("-")[0].lower() for tag in query.get("ui_locales", "").split()]
    lang = next((tag for tag in wanted if tag in i18n.LOCALES), "en")
    with i18n.use_locale(lang):
        return _consent_page(broker, client, query, lang)


def _consent_page(broker: Broker, client: Client, query: dict[str, str], lang: str) -> bytes:
    _ = i18n.gettext
    # The texts first, then the markup: messages inside f-strings are not found by the extractor.
    t = {key: html.escape(text) for key, text in {
        "staff": _("Staff member (municipality provider)"), "email": _("E-mail address"), "name": _("Name"),
        "groups": _("Groups (comma-separated)"), "firm_person": _("Firm and person (eHerkenning)"),
        "firm": _("Firm (KvK number from the register extract)"),
        "branch": _("Branch number (vestigingsnummer, optional)"), "level": _("Level of assurance"),
        "person": _("Acting person (the broker sends only a pseudonym)"), "a": _("Person A"),
        "b": _("Person B (a colleague)"), "dev": _("Development broker."),
        "dev_note": _("Not eHerkenning: this page signs anyone in as anyone, for development and tests only."),
        "heading": _("Sign in to %(client)s") % {"client": client.client_id},
        "fault": _("Broker behaviour (to try the service's error pages)"), "sign_in": _("Sign in"),
        "cancel": _("Cancel"),
    }.items()}
    hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                     for k, v in query.items())
    faults = _options([(k, _(v)) for k, v in FAULTS.items()])
    if client.staff:
        person = (
            f'<fieldset><legend>{t["staff"]}</legend><label for="email">{t["email"]}</label>'
            '<input id="email" name="email" type="email" autocomplete="off" required value="beheer@arnhem.example">'
            f'<label for="name">{t["name"]}</label><input id="name" name="name" required value="Test Beheerder">'
            f'<label for="groups">{t["groups"]}</label>'
            '<input id="groups" name="groups" value="vouchers-beheerders"></fieldset>')
    else:
        levels = _options([(k, k) for k in LEVELS], "EH3")
        firms = _options([(k, f"{k} – {n}") for k, n in broker.firms])
        person = (
            f'<fieldset><legend>{t["firm_person"]}</legend>'
            f'<label for="kvk">{t["firm"]}</label><select id="kvk" name="kvk">{firms}</select>'
            f'<label for="branch">{t["branch"]}</label>'
            '<input id="branch" name="branch" inputmode="numeric" pattern="[0-9]{12}" autocomplete="off">'
            f'<label for="level">{t["level"]}</label><select id="level" name="level">{levels}</select>'
            f'<label for="person">{t["person"]}</label><select id="person" name="person">'
            f'<option value="a">{t["a"]}</option><option value="b">{t["b"]}</option></select></fieldset>')
    body = (
        f'<p class="dev" role="note"><strong>{t["dev"]}</strong> {t["dev_note"]}</p><h1>{t["heading"]}</h1>'
        f'<form method="post" action="/authorize">{hidden}{person}'
        f'<label for="fault">{t["fault"]}</label><select id="fault" name="fault">{faults}</select><p>'
        f'<button type="submit" name="decision" value="allow">{t["sign_in"]}</button>'
        f'<button type="submit" name="decision" value="deny">{t["cancel"]}</button></p></form>')
    return _page(_("Development broker – sign in"), body, lang=lang)


def _user(client: Client, form: dict[str, str]) -> dict[str, Any]:
    """The claims of the person chosen on the page."""
    if client.staff:
        email = form.get("email", "").strip().lower()
        sub = hashlib.sha256(f"staff:{email}".encode()).hexdigest()[:32]
        return {"sub": sub, "email": email, "email_verified": True, "name": form.get("name", "").strip(),
                "groups": [g.strip() for g in form.get("groups", "").split(",") if g.strip()],
                "_fault": form.get("fault", "")}
    kvk = form.get("kvk", "")
    level = form.get("level", "EH3")
    # eHerkenning gives each service its own pseudonym per person: never a name or BSN.
    sub = hashlib.sha256(f"{client.client_id}:{kvk}:{form.get('person', 'a')}".encode()).hexdigest()[:32]
    user: dict[str, Any] = {"sub": sub, KVK_CLAIM: kvk, "acr": LEVELS.get(level, LEVELS["EH1"]),
                            "_fault": form.get("fault", "")}
    if form.get("branch", "").strip():
        user[BRANCH_CLAIM] = form["branch"].strip()
    return user


class Handler(BaseHTTPRequestHandler):
    broker: Broker
    server_version = "dev-broker"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # query strings carry codes and states

    def _send(self, status: int, body: bytes | str | dict[str, Any], headers: list[tuple[str, str]] | None = None,
              content_type: str = "text/html; charset=utf-8") -> None:
        if isinstance(body, dict):
            body, content_type = json.dumps(body).encode(), "application/json"
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        sent = {name.lower() for name, _ in headers or []}
        for name, value in headers or []:
            self.send_header(name, value)
        if "content-type" not in sent:
            self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _request(self, data: dict[str, str]) -> _Request:
        return _Request(self.command, self.broker.issuer + self.path, self.headers, data)  # type: ignore[arg-type]

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        return dict(parse_qsl(self.rfile.read(length).decode("utf-8", "replace"), keep_blank_values=True))

    def _reply(self, result: tuple[int, Any, list[tuple[str, str]]]) -> None:
        status, body, headers = result
        if isinstance(body, dict):
            self._send(status, body, headers)
        else:
            self._send(status, body or b"", headers)

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        path, _, query = self.path.partition("?")
        args = dict(parse_qsl(query, keep_blank_values=True))
        broker = self.broker
        if path == "/.well-known/openid-configuration":
            self._send(200, broker.discovery())
        elif path == "/jwks":
            self._send(200, broker.jwks())
        elif path == "/authorize":
            request = self._request(args)
            try:
                grant = broker.get_consent_grant(request)
            except OAuth2Error as error:
                self._send(400, _page("Development broker – refused",
                                      f"<h1>Refused</h1><p>{html.escape(error.error)}: "
                                      f"{html.escape(error.description or '')}</p>", "en"))
                return
            self._send(200, consent_page(broker, grant.client, args))
        elif path == "/userinfo":
            self._userinfo()
        elif path == "/logout":
            self._logout(args)
        elif path == "/":
            self._send(200, _page("Development broker", "<h1>Development broker</h1><p class=\"dev\">"
                                  "For development and tests only. Discovery: "
                                  "<a href=\"/.well-known/openid-configuration\">/.well-known/openid-configuration"
                                  "</a></p>", "en"))
        else:
            self._send(404, {"error": "not_found"})

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        path = self.path.partition("?")[0]
        form = self._form()
        broker = self.broker
        if path == "/authorize":
            fault = form.get("fault", "")
            request = self._request(form)
            try:
                grant = broker.get_consent_grant(request)
            except OAuth2Error as error:
                self._send(400, _page("Refused", f"<h1>Refused</h1><p>{html.escape(error.error)}</p>", "en"))
                return
            if form.get("decision") != "allow" or fault == "error":
                self._reply(broker.create_authorization_response(request, grant_user=None, grant=grant))
                return
            status, body, headers = broker.create_authorization_response(
                request, grant_user=_user(grant.client, form), grant=grant)
            if fault == "wrong-state":
                headers = [(k, v.replace("state=", "state=x" + secrets.token_hex(4))) if k == "Location" else (k, v)
                           for k, v in headers]
            self._send(status, body or b"", headers)
        elif path == "/token":
            request = self._request(form)
            self._reply(broker.create_token_response(request))
        elif path == "/accounts/disable":
            # What an administrator of the staff provider does: the account stops working.
            email = form.get("email", "").strip().lower()
            with broker.lock:
                broker.disabled.add(hashlib.sha256(f"staff:{email}".encode()).hexdigest()[:32])
            self._send(204, b"")
        else:
            self._send(404, {"error": "not_found"})

    def _userinfo(self) -> None:
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        with self.broker.lock:
            entry = self.broker.tokens.get(token) if scheme.lower() == "bearer" else None
        if (entry is None or entry["expires"] < time.time()
                or entry["user"].get("sub") in self.broker.disabled):
            self._send(401, {"error": "invalid_token"}, [("WWW-Authenticate", 'Bearer error="invalid_token"')])
            return
        self._send(200, {k: v for k, v in entry["user"].items() if not k.startswith("_")})

    def _logout(self, args: dict[str, str]) -> None:
        target = args.get("post_logout_redirect_uri", "")
        client = self.broker.clients.get(args.get("client_id", ""))
        if client is not None and target and client.check_redirect_uri(target):
            self._send(303, b"", [("Location", target)])
            return
        self._send(200, _page("Signed out", "<h1>Signed out at the development broker</h1>", "en"))


def serve(broker: Broker, host: str, port: int) -> ThreadingHTTPServer:
    """Listen on ``host:port`` (loopback only) and answer in threads."""
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit("the development broker listens on loopback only")
    handler = type("BoundHandler", (Handler,), {"broker": broker})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def _client(spec: str, *, staff: bool) -> Client:
    """``ID:SECRET@REDIRECT_BASE``; SECRET may be ``jwk=FILE`` (a public JWK, private-key JWT)."""
    ident, _, rest = spec.partition(":")
    secret, _, base = rest.rpartition("@")
    if not ident or not base:
        raise SystemExit(f"client {spec!r}: write ID:SECRET@REDIRECT_BASE")
    public_key = None
    if secret.startswith("jwk="):
        public_key, secret = json.loads(Path(secret[4:]).read_text()), ""
    return Client(client_id=ident, client_secret=secret or None, redirect_base=base.rstrip("/"),
                  public_key=public_key, staff=staff)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vouchers dev-broker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--client", action="append", default=[], help="ID:SECRET@REDIRECT_BASE (eHerkenning)")
    parser.add_argument("--staff-client", action="append", default=[], help="ID:SECRET@REDIRECT_BASE (staff)")
    parser.add_argument("--register", type=Path, default=_REGISTER, help="CSV extract whose firms the page offers")
    parser.add_argument("--slow-seconds", type=float, default=15.0, help="How late the 'slow' fault answers")
    parser.add_argument("--parent", type=int, default=None, help="Stop when this process is gone")
    args = parser.parse_args(argv)
    broker = Broker(f"http://{args.host}:{args.port}", slow_seconds=args.slow_seconds, register=args.register)
    for spec in args.client:
        client = _client(spec, staff=False)
        broker.clients[client.client_id] = client
    for spec in args.staff_client:
        client = _client(spec, staff=True)
        broker.clients[client.client_id] = client
    server = serve(broker, args.host, args.port)
    if args.parent:
        threading.Thread(target=_watch_parent, args=(args.parent, server), daemon=True).start()
    print(f"development broker on {broker.issuer} (not eHerkenning: development and tests only)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _watch_parent(pid: int, server: ThreadingHTTPServer) -> None:
    while True:
        time.sleep(1)
        try:
            os.kill(pid, 0)
        except OSError:
            server.shutdown()
            return


if __name__ == "__main__":
    main(sys.argv[1:])
