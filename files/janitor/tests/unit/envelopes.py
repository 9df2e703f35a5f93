"""Notifications as Distribution 2.8.3 sends them (notifications/bridge.go), for tests."""

from __future__ import annotations

import json
import time
from typing import Any

from registry_janitor import notifications

DIGEST = "sha256:" + "ab" * 32
INDEX = "application/vnd.oci.image.index.v1+json"


def event(
    action: str = "pull",
    *,
    repository: str = "ci/app",
    tag: str = "",
    digest: str = DIGEST,
    method: str = "GET",
    when: float = 1_796_605_200.0,
    addr: str = "registry-1:5000",
    instance: str = "11111111-1111-1111-1111-111111111111",
    blob: bool = False,
) -> dict[str, Any]:
    kind = "blobs" if blob else "manifests"
    target: dict[str, Any] = {
        "mediaType": "application/octet-stream" if blob else INDEX,
        "size": 525,
        "digest": digest,
        "length": 525,
        "repository": repository,
        "url": f"http://127.0.0.1:5000/v2/{repository}/{kind}/{digest}",
    }
    if tag:
        target["tag"] = tag
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
    return {
        "id": "6c6ef8ee-8e11-4a4f-8c1a-6e3dbbf0c1a2",
        "timestamp": f"{stamp}.{int(when % 1 * 1e9):09d}Z",
        "action": action,
        "target": target,
        "request": {
            "id": "4e0f8b8f-0a7b-4d1e-9d7a-1f2c3d4e5f60",
            "addr": "10.0.0.7:41234",
            "host": "registry.example:5000",
            "method": method,
            "useragent": "skopeo/1.9",
        },
        "actor": {},
        "source": {"addr": addr, "instanceID": instance},
    }


def envelope(*events: dict[str, Any]) -> bytes:
    return json.dumps({"events": list(events)}).encode()


HEADERS = {"Content-Type": notifications.MEDIA_TYPE}
