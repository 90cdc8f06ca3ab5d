"""A small OAuth 2.0 authorization server built on Authlib's RFC 7523 jwt-bearer grant
(authlib.oauth2.rfc7523.JWTBearerGrant), trusting one Kubernetes ServiceAccount issuer.

It is the independently written server of tests/interop_authlib.rs: Authlib itself parses
the assertion, checks its signature against the issuer's keys and validates iss, aud, exp
(and nbf/iat when present), and answers RFC 6749 5.2 errors such as invalid_grant. This
file only supplies what Authlib asks its users to supply: which client an issuer is, that
client's keys (the JWKS found through the issuer's discovery document, fetched for every
assertion), which subjects are trusted, and the audiences the server accepts. An issuer served
over TLS by a private CA (a test control plane's kube-apiserver) is trusted through --ca-file.

Routes:
  POST /token    the token endpoint (Authlib's AuthorizationServer.create_token_response)
  GET  /whoami   a resource protected by Authlib's ResourceProtector + BearerTokenValidator:
                 proves a token is one this server issued and still accepts; answers the
                 subject, the client, and the claims of the assertion the token was issued
                 for (iss, sub, aud, jti, iat, nbf, exp, kubernetes.io: never the assertion
                 itself nor its signature)
  GET  /healthz  200 once serving

Usage: server.py --issuer URL --trust SUBJECT [--trust ...] [--audience AUD ...]
       [--ca-file PEM] [--expires-in SECONDS] [--exit-on-stdin-eof]
       server.py --version
Listens on 127.0.0.1 on a free port and prints one JSON line once it accepts connections:
{"token_endpoint": ..., "whoami_endpoint": ..., "health_endpoint": ..., "audiences": [...]}.
Without --audience, the token endpoint URL is the only audience accepted (RFC 7523 3).
No token, assertion or key is ever written to stdout or stderr.
"""

import argparse
import json
import secrets
import ssl
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

import authlib
from authlib.oauth2 import ResourceProtector
from authlib.oauth2.rfc6749 import AuthorizationServer, OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6749.models import ClientMixin, TokenMixin
from authlib.oauth2.rfc6750 import BearerTokenGenerator, BearerTokenValidator
from authlib.oauth2.rfc7523 import JWTBearerGrant
from joserfc.jwk import KeySet


class Client(ClientMixin):
    """The one client: whoever holds a token of the trusted issuer (RFC 7523 2.1 needs no
    client authentication; the assertion's iss names the client)."""

    def __init__(self, client_id, issuer):
        self.client_id = client_id
        self.issuer = issuer

    def get_client_id(self):
        return self.client_id

    def get_allowed_scope(self, scope):
        return scope or ""

    def check_grant_type(self, grant_type):
        return grant_type == JWTBearerGrant.GRANT_TYPE


class Token(TokenMixin):
    def __init__(self, token, client, user, assertion_claims):
        self.access_token = token["access_token"]
        self.scope = token.get("scope", "")
        self.expires_in = token["expires_in"]
        self.issued_at = time.time()
        self.client = client
        self.user = user
        self.assertion_claims = assertion_claims or {}

    def check_client(self, client):
        return client.get_client_id() == self.client.get_client_id()

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return self.expires_in

    def is_expired(self):
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self):
        return False

    def get_user(self):
        return self.user


class Request(OAuth2Request):
    """A request as Authlib's framework-agnostic server reads it."""

    def __init__(self, method, uri, headers, form):
        super().__init__(method, uri, headers=headers)
        self._form = form
        self.payload = BasicOAuth2Payload(form)

    @property
    def form(self):
        return self._form

    @property
    def args(self):
        return {}


# Claims of an assertion /whoami may tell: names and times, never the token or its signature.
TOLD_CLAIMS = ("iss", "sub", "aud", "jti", "iat", "nbf", "exp", "kubernetes.io")


def fetch_jwks(issuer, context):
    """The issuer's keys, found as an identity provider finds them: discovery, then jwks_uri."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    with urllib.request.urlopen(url, timeout=10, context=context) as r:
        doc = json.load(r)
    if doc.get("issuer") != issuer:
        raise ValueError("the discovery document names another issuer")
    with urllib.request.urlopen(doc["jwks_uri"], timeout=10, context=context) as r:
        return json.load(r)


def build(config):
    tokens = {}
    lock = threading.Lock()
    client = Client("kubernetes-workloads", config.issuer)
    # None: the system's trust store; --ca-file: only that CA (a test control plane's).
    context = ssl.create_default_context(cafile=config.ca_file) if config.ca_file else None

    class ServiceAccountJWTBearerGrant(JWTBearerGrant):
        def resolve_issuer_client(self, issuer):
            return client if issuer == config.issuer else None

        def resolve_client_public_key(self, client):
            return KeySet.import_key_set(fetch_jwks(client.issuer, context))

        def get_audiences(self):
            return config.audiences

        def authenticate_user(self, subject):
            return subject if subject in config.trust else None

        def has_granted_permission(self, client, user):
            # authenticate_user already limited the subjects to the trusted ones.
            return True

        def process_assertion_claims(self, assertion):
            claims = super().process_assertion_claims(assertion)
            # Remembered with the token so /whoami can tell which assertion it was issued for.
            self.request.assertion_claims = {k: claims[k] for k in TOLD_CLAIMS if k in claims}
            return claims

    class Server(AuthorizationServer):
        def query_client(self, client_id):
            return client if client_id == client.client_id else None

        def save_token(self, token, request):
            with lock:
                tokens[token["access_token"]] = Token(
                    token, request.client, request.user, getattr(request, "assertion_claims", None)
                )

        def create_oauth2_request(self, request):
            return request

        def handle_response(self, status, body, headers):
            return status, body, headers

        def send_signal(self, name, *args, **kwargs):
            pass

    server = Server()
    server.register_grant(ServiceAccountJWTBearerGrant)
    generator = BearerTokenGenerator(
        lambda **_: secrets.token_urlsafe(32), expires_generator=config.expires_in
    )
    server.register_token_generator("default", generator)

    class Validator(BearerTokenValidator):
        def authenticate_token(self, token_string):
            with lock:
                return tokens.get(token_string)

    protector = ResourceProtector()
    protector.register_token_validator(Validator())
    return server, protector


def handler_class(server, protector):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):
            # The request line only (paths carry no credential here).
            sys.stderr.write("authlib-server: %s\n" % (format % args))

        def uri(self):
            return "http://%s:%d%s" % (*self.server.server_address[:2], self.path)

        def reply(self, status, body, headers=()):
            data = json.dumps(body).encode()
            self.send_response(status)
            sent = set()
            for name, value in headers:
                self.send_header(name, value)
                sent.add(name.lower())
            if "content-type" not in sent:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/healthz":
                return self.reply(200, {"status": "ok", "authlib": authlib.__version__})
            if self.path == "/whoami":
                request = Request("GET", self.uri(), self.headers, {})
                try:
                    token = protector.validate_request(None, request)
                except OAuth2Error as error:
                    status, body, headers = error()
                    return self.reply(status, dict(body), headers)
                return self.reply(
                    200,
                    {
                        "sub": token.user,
                        "client_id": token.client.get_client_id(),
                        "scope": token.scope,
                        "assertion_jti": token.assertion_claims.get("jti"),
                        "assertion": token.assertion_claims,
                    },
                )
            self.reply(404, {"error": "not_found"})

        def do_POST(self):
            if self.path != "/token":
                return self.reply(404, {"error": "not_found"})
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace")
            pairs = parse_qsl(body, keep_blank_values=True)
            form = dict(pairs)
            if len(form) != len(pairs):
                # RFC 6749 3.2: request parameters MUST NOT be included more than once.
                return self.reply(400, {"error": "invalid_request", "error_description": "repeated parameter"})
            status, body, headers = server.create_token_response(Request("POST", self.uri(), self.headers, form))
            self.reply(status, body, headers)

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--version", action="store_true")
    parser.add_argument("--issuer")
    parser.add_argument("--trust", action="append", default=[])
    parser.add_argument("--audience", dest="audiences", action="append", default=[])
    parser.add_argument("--ca-file", help="PEM CA bundle to trust for the issuer's discovery and keys")
    parser.add_argument("--expires-in", type=int, default=3600)
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    config = parser.parse_args()
    if config.version:
        print("authlib " + authlib.__version__)
        return
    if not config.issuer or not config.trust:
        parser.error("--issuer and at least one --trust are required")

    server, protector = build(config)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_class(server, protector))
    httpd.daemon_threads = True
    base = "http://127.0.0.1:%d" % httpd.server_address[1]
    token_endpoint = base + "/token"
    if not config.audiences:
        config.audiences = [token_endpoint]
    if config.exit_on_stdin_eof:
        # The test harness holds stdin open: the server ends with it, even if the harness
        # dies without killing it.
        def watch():
            sys.stdin.read()
            httpd.shutdown()

        threading.Thread(target=watch, daemon=True).start()
    # The socket listens already (bound in the constructor): connections queue until serve.
    print(
        json.dumps(
            {
                "token_endpoint": token_endpoint,
                "whoami_endpoint": base + "/whoami",
                "health_endpoint": base + "/healthz",
                "audiences": config.audiences,
            }
        ),
        flush=True,
    )
    httpd.serve_forever()


if __name__ == "__main__":
    main()
