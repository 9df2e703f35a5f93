"""The registry's notifications: the envelope it POSTs to an endpoint, checked strictly.

Distribution (`notifications/event.go`, `bridge.go`) sends `{"events": [...]}` with the
media type below. Each event has an `action` (pull, push, mount, delete), a `timestamp` taken
when the request was served, a `target` (repository, digest, tag, url, mediaType), a
`request` (method) and a `source` (`addr`: the registry's host and port; `instanceID`: new at
every start of the registry process). A manifest GET or HEAD answered 200 is a `pull` whose
target url names `/manifests/`; a blob's names `/blobs/`.

An envelope with anything this module does not know is refused as a whole (`BadEnvelope`):
the registry keeps it queued and retries, and someone reads why in the listener's log, rather
than the janitor guessing at what a pull was.
"""

from __future__ import annotations

import json
import re
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from registry_janitor.registry_log import Pull

MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
ACTIONS = ("pull", "push", "mount", "delete")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_TARGET_URL = re.compile(r"/v2/(.+)/(manifests|blobs)/([^/?#]+)(?:[?#]|$)")


# The name the registry's config gives the listener's endpoint: its queue is the one
# `undelivered` reads.
ENDPOINT_NAME = "registry-janitor"


class BadEnvelope(ValueError):
    """What the listener answers 400 with."""


@dataclass(frozen=True)
class Event:
    """The fields of one notification the janitor uses."""

    action: str
    repository: str
    digest: str
    tag: str
    manifest: bool  # the target is a manifest (else a blob, or a delete without a url)
    method: str
    when: float  # the event's timestamp
    addr: str  # source.addr: which registry host
    instance: str  # source.instanceID: which run of that registry process


def parse_envelope(body: bytes) -> list[dict[str, Any]]:
    """The events of an envelope, each one checked by `event`; BadEnvelope otherwise."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadEnvelope(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"events"} or not isinstance(doc["events"], list):
        raise BadEnvelope('expected an object with one key, "events", holding a list')
    for i, raw in enumerate(doc["events"]):
        try:
            event(raw)
        except BadEnvelope as exc:
            raise BadEnvelope(f"events[{i}]: {exc}") from None
    return list(doc["events"])


def event(raw: object) -> Event:
    """One event of an envelope, or BadEnvelope naming what is missing or unknown."""
    if not isinstance(raw, dict):
        raise BadEnvelope("not an object")
    action = _text(raw, "action")
    if action not in ACTIONS:
        raise BadEnvelope(f'unknown action "{action}" (known: {", ".join(ACTIONS)})')
    target, request, source = (_object(raw, k) for k in ("target", "request", "source"))
    repository = _text(target, "repository")
    digest = str(target.get("digest") or "")
    if digest and not _DIGEST.fullmatch(digest):
        raise BadEnvelope(f'target.digest "{digest}" is not a digest')
    tag = target.get("tag") or ""
    if not isinstance(tag, str):
        raise BadEnvelope("target.tag is not a string")
    url = target.get("url") or ""
    m = _TARGET_URL.search(url) if isinstance(url, str) else None
    method = str(request.get("method") or "")
    if action != "delete":
        if not digest:
            raise BadEnvelope(f"a {action} without target.digest")
        if m is None:
            raise BadEnvelope(f'target.url "{url}" names neither a manifest nor a blob')
    if action == "pull" and method not in ("GET", "HEAD"):
        raise BadEnvelope(f'a pull with request.method "{method}" (known: GET, HEAD)')
    stamp = _text(raw, "timestamp")
    try:
        when = datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        raise BadEnvelope(f'timestamp "{stamp}" is not an RFC 3339 time') from None
    return Event(
        action=action,
        repository=repository,
        digest=digest,
        tag=tag,
        manifest=m is not None and m.group(2) == "manifests",
        method=method,
        when=when,
        addr=_text(source, "addr"),
        instance=_text(source, "instanceID"),
    )


def pull(e: Event) -> Pull | None:
    """The manifest pull an event records (by tag when it names one, as the log does)."""
    if e.action != "pull" or not e.manifest:
        return None
    return Pull(e.repository, e.tag or e.digest, e.method == "HEAD", e.when)


def _object(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise BadEnvelope(f"{key} is missing or not an object")
    return value


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise BadEnvelope(f"{key} is missing or not a non-empty string")
    return value


def undelivered(debug_vars_url: str, timeout: float = 10.0) -> int:
    """How many notifications the registry at `debug_vars_url` (its debug server's
    `/debug/vars`) holds for the endpoint named ENDPOINT_NAME, queued or being retried: 0
    means every event created before this call was acknowledged, so it is in the journal.
    OSError or ValueError when that cannot be told."""
    with urllib.request.urlopen(debug_vars_url, timeout=timeout) as r:
        doc = json.load(r)
    endpoints = doc.get("registry", {}).get("notifications", {}).get("endpoints") or []
    for endpoint in endpoints:
        if isinstance(endpoint, dict) and endpoint.get("name") == ENDPOINT_NAME:
            pending = endpoint.get("Metrics", {}).get("Pending")
            if isinstance(pending, int):
                return pending
    raise ValueError(f"no notifications endpoint named {ENDPOINT_NAME} with a Pending count")
