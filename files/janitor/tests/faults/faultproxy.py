"""An HTTP proxy in front of the S3 server (the RADOS Gateway) that fails chosen requests:
the S3 fault layer of the janitor's fault trials.

Point the janitor's S3 endpoint at it (``--s3-endpoint http://127.0.0.1:PORT``). Requests
are forwarded unchanged, Host header included (SigV4 signs it, and the gateway checks the
signature against what it receives), one upstream connection per proxy thread. Which
requests fail, how and when comes from a JSON control file re-read at run time
(faultrules.py). A request is classified as one operation, matched on the key or prefix
(path-style URLs: ``/<bucket>/<key>``):

| op            | request                               | matched on                    |
|---------------|---------------------------------------|-------------------------------|
| `list`        | GET on the bucket (ListObjectsV2)     | the `prefix` parameter        |
| `head_bucket` | HEAD on the bucket                    | ""                            |
| `get`, `head`, `put`, `delete` | on a key             | the key                       |
| `copy`        | PUT with `x-amz-copy-source`          | target and source keys        |
| `delete_many` | POST `?delete` (DeleteObjects)        | every key in the body         |

Faults: ``503`` (SlowDown, as S3 throttles), ``500`` (InternalError), ``reset`` (the
connection is reset before an answer: RST), all three instead of forwarding (the gateway never
sees the request); and ``truncate`` on a listing: forwarded, then only the first half of its
entries (keys and common prefixes in key order) is returned, with ``IsTruncated`` true and no
``NextContinuationToken``. boto3 retries the first three itself (the janitor: 5 attempts), so a
fault that should get through must fire on every attempt (``times`` unset, or >= 5).

Usage (foreground)::

    python3 faultproxy.py --upstream http://127.0.0.1:7480 --control rules.json \
        --log faults.jsonl [--port 0]
"""

from __future__ import annotations

import argparse
import http.client
import socket
import struct
import sys
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

from faultrules import Faults

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
ET.register_namespace("", S3_NS)
# Hop-by-hop headers (RFC 9110 7.6.1) and the length, which the proxy sets itself.
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-connection", "content-length"}  # fmt: skip

ERRORS = {
    "503": (503, "SlowDown", "Please reduce your request rate."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
}


def classify(method: str, path: str, query: dict[str, list[str]], copy_source: str | None,
             body: bytes) -> tuple[str, str, tuple[str, ...]]:  # fmt: skip
    """(op, bucket, the keys or prefix it is matched on)."""
    bucket, _, key = urllib.parse.unquote(path).lstrip("/").partition("/")
    if not key:
        if method == "GET":
            return "list", bucket, ((query.get("prefix") or [""])[0],)
        if method == "POST" and "delete" in query:
            keys = [k.text or "" for k in ET.fromstring(body).iter(f"{{{S3_NS}}}Key")]
            return "delete_many", bucket, tuple(keys) or ("",)
        return f"{method.lower()}_bucket", bucket, ("",)
    if method == "PUT" and copy_source:
        source = urllib.parse.unquote(copy_source).lstrip("/").partition("/")[2]
        return "copy", bucket, (key, source.split("?", 1)[0])
    return (
        {"GET": "get", "HEAD": "head", "PUT": "put", "DELETE": "delete"}.get(
            method, method.lower()
        ),
        bucket,
        (key,),
    )


def truncate_listing(body: bytes) -> bytes:
    """The first half of a ListObjectsV2 page's entries, IsTruncated true, no token."""
    root = ET.fromstring(body)
    entries = [e for e in root if e.tag in (f"{{{S3_NS}}}Contents", f"{{{S3_NS}}}CommonPrefixes")]

    def name(e: ET.Element) -> str:
        return e.findtext(f"{{{S3_NS}}}Key") or e.findtext(f"{{{S3_NS}}}Prefix") or ""

    entries.sort(key=name)
    for e in entries[len(entries) // 2 :]:
        root.remove(e)
    for tag, value in (("IsTruncated", "true"), ("KeyCount", str(len(entries) // 2))):
        el = root.find(f"{{{S3_NS}}}{tag}")
        if el is not None:
            el.text = value
    token = root.find(f"{{{S3_NS}}}NextContinuationToken")
    if token is not None:
        root.remove(token)
    return ET.tostring(root, xml_declaration=True, encoding="UTF-8")


class FaultProxy:
    """The proxy, served from a thread of this process (`start`/`stop`, or a `with`)."""

    def __init__(self, upstream: str, control: Path, log: Path, port: int = 0) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.faults = Faults(control, log)
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self
        local = threading.local()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects

            def log_message(self, format: str, *args: object) -> None:
                pass  # the fault log says what matters

            def _upstream(self) -> http.client.HTTPConnection:
                conn = getattr(local, "conn", None)
                if conn is None:
                    conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                    local.conn = conn
                return conn

            def _reset(self) -> None:
                # SO_LINGER 0: close() sends RST instead of FIN.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.close_connection = True
                self.connection.close()

            def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                for attempt in (1, 2):
                    conn = self._upstream()
                    try:
                        conn.request(self.command, self.path, body=body, headers=headers)
                        resp = conn.getresponse()
                        data = resp.read()
                        return resp.status, resp.getheaders(), data
                    except (OSError, http.client.HTTPException):
                        conn.close()  # a kept-alive connection the gateway closed: once more
                        local.conn = None
                        if attempt == 2:
                            raise
                raise AssertionError("unreachable")

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                split = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
                op, bucket, paths = classify(
                    self.command, split.path, query, self.headers.get("x-amz-copy-source"), body
                )
                rule = proxy.faults.check(op, *paths, bucket=bucket)
                if rule is not None and rule.fault == "reset":
                    self._reset()
                    return
                if rule is not None and rule.fault in ERRORS:
                    status, code, message = ERRORS[rule.fault]
                    xml = (
                        '<?xml version="1.0" encoding="UTF-8"?>\n'
                        f"<Error><Code>{code}</Code><Message>{message}</Message>"
                        f"<Resource>{split.path}</Resource><RequestId>fault</RequestId></Error>"
                    ).encode()
                    self._answer(status, [("Content-Type", "application/xml")], xml)
                    return
                try:
                    status, headers, data = self._forward(body)
                except (OSError, http.client.HTTPException):
                    self._reset()  # the gateway is gone: the client sees what it would
                    return
                if rule is not None and rule.fault == "truncate" and op == "list" and status == 200:
                    data = truncate_listing(data)
                self._answer(status, headers, data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

        return Handler


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--upstream", required=True, help="the S3 server, http://127.0.0.1:PORT")
    p.add_argument("--control", type=Path, required=True, help="JSON rules (faultrules.py)")
    p.add_argument("--log", type=Path, required=True, help="injected faults, one JSON line each")
    p.add_argument("--port", type=int, default=0, help="on 127.0.0.1; 0: a free one")
    a = p.parse_args(argv)
    proxy = FaultProxy(a.upstream, a.control, a.log, a.port)
    print(proxy.endpoint, flush=True)
    try:
        proxy.server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
