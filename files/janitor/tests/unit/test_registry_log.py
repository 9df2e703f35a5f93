"""Reading the registry's log: which blobs clients touched. The lines are Distribution
2.8.2's own (Debian's docker-registry, text formatter), captured from a real process."""

from __future__ import annotations

import json
import os
from pathlib import Path

from registry_janitor.registry_log import RegistryLog, touches

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
NOW = 1_800_000_000.0

HEAD_200 = (
    'time="2026-12-07T01:03:01.02938438Z" level=info msg="response completed"'
    ' go.version=go1.19.8 http.request.host="127.0.0.1:5099" http.request.id=d04e'
    ' http.request.method=HEAD http.request.remoteaddr="127.0.0.1:43840"'
    f' http.request.uri="/v2/team/app/blobs/{A}" http.request.useragent=curl/7.88.1'
    " http.response.duration=3.1ms http.response.status=200 http.response.written=0"
)
MANIFEST_REFUSED = (
    'time="2026-12-07T01:03:02Z" level=error msg="response completed with error"'
    f' err.code="blob unknown" err.detail="{B}" err.message="blob unknown to registry"'
    ' http.request.method=PUT http.request.uri="/v2/team/app/manifests/v1"'
    " http.response.status=400 vars.name=team/app"
)
MOUNT = (
    'time="2026-12-07T01:03:01.049626243Z" level=info msg="response completed"'
    " http.request.method=POST"
    f' http.request.uri="/v2/a/blobs/uploads/?mount={A}&from=b" http.response.status=201'
)
MANIFEST_GET = (
    'time="2026-12-07T01:03:01Z" level=info msg="response completed" http.request.method=GET'
    ' http.request.uri="/v2/a/manifests/latest" http.response.status=200'
)


def test_the_requests_that_touch_a_blob() -> None:
    when = 1_796_605_381.02938  # 2026-12-07T01:03:01.029Z
    [(digest, at)] = touches(HEAD_200, NOW)
    assert digest == A and abs(at - when) < 0.01
    assert [d for d, _ in touches(MANIFEST_REFUSED, NOW)] == [B]
    assert [d for d, _ in touches(MOUNT, NOW)] == [A]
    assert touches(MANIFEST_GET, NOW) == []
    assert touches(HEAD_200.replace("status=200", "status=404"), NOW) == []
    assert touches("not a log line", NOW) == []


def test_the_json_formatter_too() -> None:
    line = json.dumps(
        {
            "time": "2026-12-07T01:03:01Z",
            "level": "info",
            "msg": "response completed",
            "http.request.method": "GET",
            "http.request.uri": f"/v2/x/blobs/{A}",
            "http.response.status": 307,
        }
    )
    assert [d for d, _ in touches(line, NOW)] == [A]


def test_follow_reads_what_was_appended_and_sees_rotation_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "registry.log"
    path.write_text(HEAD_200 + "\n")
    reader = RegistryLog(path)
    assert set(reader.read_all() or {}) == {A}
    assert reader.follow() == ({}, True)
    with path.open("a") as f:
        f.write(MANIFEST_REFUSED[:40])  # a line being written: not read half
    assert reader.follow() == ({}, True)
    with path.open("a") as f:
        f.write(MANIFEST_REFUSED[40:] + "\n")
    found, complete = reader.follow()
    assert set(found) == {B} and complete
    # Rotation by rename: the old file's tail is still read, then the new file.
    with path.open("a") as f:
        f.write(MOUNT.replace(A, B) + "\n")
    os.rename(path, tmp_path / "registry.log.1")
    path.write_text(HEAD_200 + "\n")
    found, complete = reader.follow()
    assert set(found) == {A, B} and complete
    # Cut in place (copytruncate): what was written before the cut may be lost: a gap.
    path.write_text("")
    found, complete = reader.follow()
    assert not complete
    path.unlink()
    assert reader.follow() == ({}, False)  # gone: no barrier this time
    reader.close()


def test_a_missing_log_is_no_barrier_and_says_so(tmp_path: Path) -> None:
    reader = RegistryLog(tmp_path / "nothing.log")
    assert reader.read_all() is None
    assert reader.follow() == ({}, False)
