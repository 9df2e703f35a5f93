"""`registry-janitor listen`: the endpoint the registry sends its notifications to.

The registry's config names it (`notifications.endpoints[].url: http://<address>/events`,
with `headers: {Authorization: [Bearer <token>]}`). Each POST is answered:

- 401 without the token (compared in constant time);
- 415 for another media type than the envelope's, 413 for a body over 16 MiB, 400 for an
  envelope `notifications.parse_envelope` does not understand (the reason in the body);
- 503 when the journal cannot be written;
- 200 only once the envelope is appended to the journal and fsynced (journal.append).

The registry retries every answer but 2xx/3xx, in order, until it gets one: nothing is
acknowledged that is not on disk, and nothing is lost while the listener is down (only
while the registry restarts: see journal.py).
"""

from __future__ import annotations

import hmac
import logging
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from registry_janitor import journal, notifications
from registry_janitor.config import Listen

log = logging.getLogger(__name__)

PATH = "/events"
MAX_BODY = 16 << 20


class Listener(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # several registry hosts, each retrying

    def __init__(self, settings: Listen) -> None:
        self.settings = settings
        self.token = f"Bearer {settings.token}".encode()
        self.accepted = 0
        self._count = threading.Lock()
        if ":" in settings.host:
            self.address_family = socket.AF_INET6
        super().__init__((settings.host, settings.port), _Handler)

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        """The registry drops idle keep-alive connections (a reset while the handler waits
        for the next request): not worth a traceback in the listener's log."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("connection from %s ended: %s", client_address[0], exc)
        else:
            log.exception("error answering %s", client_address[0])


class _Handler(BaseHTTPRequestHandler):
    server: Listener
    server_version = "registry-janitor-listen"
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        status, message = self._accept()
        body = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED)

    do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET

    def _accept(self) -> tuple[int, str]:
        given = self.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, self.server.token):
            self.close_connection = True
            return HTTPStatus.UNAUTHORIZED, "a bearer token is required"
        if self.path != PATH:
            self.close_connection = True
            return HTTPStatus.NOT_FOUND, f"notifications are accepted at {PATH}"
        media_type = self.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type != notifications.MEDIA_TYPE:
            self.close_connection = True
            return HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"expected {notifications.MEDIA_TYPE}"
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            return HTTPStatus.LENGTH_REQUIRED, "Content-Length is required"
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"bodies up to {MAX_BODY} bytes"
        body = self.rfile.read(length)
        try:
            events = notifications.parse_envelope(body)
        except notifications.BadEnvelope as exc:
            log.warning("refused an envelope from %s: %s", self.client_address[0], exc)
            return HTTPStatus.BAD_REQUEST, f"bad envelope: {exc}"
        try:
            journal.append(self.server.settings.journal, events, time.time())
        except OSError as exc:
            log.error("cannot write the journal %s: %s", self.server.settings.journal, exc)
            return HTTPStatus.SERVICE_UNAVAILABLE, "cannot write the journal"
        with self.server._count:
            self.server.accepted += len(events)
        return HTTPStatus.OK, f"accepted {len(events)} event(s)"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.client_address[0], *args)


def serve(settings: Listen, stop: threading.Event) -> None:
    """Answers notifications until `stop` is set."""
    journal.start(settings.journal)
    server = Listener(settings)
    log.info(
        "listening for the registry's notifications on http://%s:%d%s, journal %s",
        settings.host,
        server.server_address[1],
        PATH,
        settings.journal,
    )
    thread = threading.Thread(target=server.serve_forever, name="listen", daemon=True)
    thread.start()
    try:
        while not stop.is_set():  # not stop.wait(): a signal handler sets it (see app._sleep)
            time.sleep(0.2)
    finally:
        server.shutdown()
        server.server_close()
        log.info("stopped listening (%d event(s) accepted)", server.accepted)
