#!/usr/bin/env python3
"""A registry token server for tests: the Docker Hub flow (auth.docker.io) in one file.

A registry configured with `auth.token` answers 401 with `Bearer realm=<this server>`; the
client asks this server for a token with HTTP basic credentials and gets a JWT (RS256,
signed with `openssl dgst`, the signing certificate in the `x5c` header, which the registry
checks against its `rootcertbundle`). Only the configured user gets a token, and only for
the scopes it asked for: an anonymous or wrong request gets 401, like a private repository.

  token_server.py --listen 192.0.2.1:5102 --tls-cert C --tls-key K \
      --signing-cert SC --signing-key SK --issuer I --service S --user NAME \
      --password-sha256-file F

The password is never on this server's command line or disk, only its SHA-256.
Standard library and the openssl CLI only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import secrets
import ssl
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def certificate_der(path: str) -> bytes:
    with open(path, encoding="ascii") as file:
        pem = file.read()
    body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
    return base64.b64decode("".join(body.split()))


class TokenServer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.x5c = base64.b64encode(certificate_der(args.signing_cert)).decode()
        with open(args.password_sha256_file, encoding="ascii") as file:
            self.password_sha256 = file.read().strip()

    def authenticated(self, header: str | None) -> str | None:
        if not header or not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        digest = hashlib.sha256(password.encode()).hexdigest()
        if user == self.args.user and hmac.compare_digest(digest, self.password_sha256):
            return user
        return None

    def token(self, user: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind == "repository" and name:
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {
            "iss": self.args.issuer,
            "sub": user,
            "aud": self.args.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = (
            f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", self.args.signing_key],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        ).stdout
        return f"{signing_input}.{b64url(signature)}"


def handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            user = server.authenticated(self.headers.get("Authorization"))
            if url.path != "/token" or query.get("service") != [server.args.service]:
                self.reply(404, {"details": "unknown path or service"})
            elif user is None:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="molecule token server"')
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                token = server.token(user, query.get("scope", []))
                self.reply(200, {"token": token, "access_token": token, "expires_in": 300})

        def reply(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            # The request line and status only: no Authorization header is ever logged.
            sys.stderr.write(f"token server: {self.address_string()} {format % args}\n")

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--listen", "--tls-cert", "--tls-key", "--signing-cert", "--signing-key",
                 "--issuer", "--service", "--user", "--password-sha256-file"):  # fmt: skip
        parser.add_argument(flag, required=True)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    httpd = ThreadingHTTPServer((host, int(port)), handler(TokenServer(args)))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
