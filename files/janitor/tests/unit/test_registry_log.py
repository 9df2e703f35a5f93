"""Reading the registry's log: which blobs clients touched. The lines are Distribution
2.8.2's own (Debian's docker-registry, text formatter), captured from a real process."""

from __future__ import annotations

import json
import os
from pathlib import Path

from registry_janitor.registry_log import Position, Pull, RegistryLog, pull, touches

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


def _manifest(method: str, uri: str, status: int = 200, when: str = "2026-12-07T01:03:01Z") -> str:
    return (
        f'time="{when}" level=info msg="response completed" http.request.method={method}'
        f' http.request.uri="{uri}" http.response.status={status}'
    )


def test_manifest_pulls_by_tag_and_digest_with_get_and_head() -> None:
    by_tag = pull(_manifest("GET", "/v2/team/app/manifests/b5"), NOW)
    assert by_tag == Pull("team/app", "b5", False, 1_796_605_381.0)
    by_digest = pull(_manifest("HEAD", f"/v2/a/b/manifests/{A}"), NOW)
    assert by_digest is not None and (by_digest.repository, by_digest.reference) == ("a/b", A)
    assert by_digest.head
    assert pull(_manifest("GET", "/v2/a/manifests/x", 404), NOW) is None
    assert pull(_manifest("PUT", "/v2/a/manifests/x", 201), NOW) is None
    assert pull(HEAD_200, NOW) is None  # a blob, not a manifest
    line = json.dumps(
        {
            "time": "2026-12-07T01:03:01Z",
            "msg": "response completed",
            "http.request.method": "GET",
            "http.request.uri": "/v2/x/manifests/latest",
            "http.response.status": 200,
        }
    )
    assert pull(line, NOW) == Pull("x", "latest", False, 1_796_605_381.0)


def _lines(n: int, start: int = 0) -> str:
    return "".join(
        _manifest("GET", f"/v2/r/manifests/t{i}", when=f"2026-12-07T01:{i // 60:02}:{i % 60:02}Z")
        + "\n"
        for i in range(start, start + n)
    )


def _read(path: Path, pos: Position | None) -> tuple[bool, list[str], Position | None, float]:
    """One run's read: continuous or not, the references pulled, where it stopped, and the
    time of the first line it read."""
    reader = RegistryLog(path, pulls=True)
    try:
        continuous = reader.read_since(pos)
        return (
            continuous,
            [p.reference for p in reader.pulls],
            reader.position(),
            reader.first_time or 0,
        )
    finally:
        reader.close()


def _copytruncate(path: Path, copy: bytes | None, then: str) -> None:
    """logrotate's copytruncate (the copy, when given, to `<path>.1`), then new lines."""
    if copy is not None:
        path.with_name(path.name + ".1").write_bytes(copy)
    with path.open("r+") as f:
        f.truncate(0)
    with path.open("a") as f:
        f.write(then)


def test_read_since_resumes_follows_a_copytruncate_and_sees_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "registry.log"
    path.write_text(_lines(3))
    continuous, refs, pos, first = _read(path, None)
    assert not continuous  # no position: from the start, not continuous
    assert refs == ["t0", "t1", "t2"] and first == 1_796_605_200.0  # 01:00:00
    with path.open("a") as f:
        f.write(_lines(2, 3) + _lines(1, 5)[:30])  # the last line still being written
    continuous, refs, pos, _ = _read(path, pos)
    assert continuous and refs == ["t3", "t4"]
    # Copied to .1, then cut: the rest of .1 and the new file are read, nothing is missing.
    with path.open("a") as f:
        f.write(_lines(1, 5)[30:])
    _copytruncate(path, path.read_bytes(), _lines(2, 6))
    continuous, refs, pos, _ = _read(path, pos)
    assert continuous and refs == ["t5", "t6", "t7"]
    # Rotated twice before a read (.1 is a newer copy, the one read is compressed away):
    # what followed t7 is gone, a gap; the new file is read from its start.
    with path.open("a") as f:
        f.write(_lines(1, 8))
    _copytruncate(path, b"", _lines(1, 9))
    continuous, refs, _, first = _read(path, pos)
    assert not continuous and refs == ["t9"] and first == 1_796_605_209.0
    # Cut in place and grown past the old offset: the first bytes differ, a gap too.
    _, _, pos, _ = _read(path, None)
    path.write_text(_lines(5, 20))
    assert not _read(path, pos)[0]
    # An empty log has no position: whatever file comes next is read as a gap.
    path.write_text("")
    assert _read(path, None)[2] is None


def test_read_since_a_missing_log_raises(tmp_path: Path) -> None:
    try:
        RegistryLog(tmp_path / "gone.log", pulls=True).read_since(None)
    except FileNotFoundError:
        return
    raise AssertionError("a missing log must not read as an empty one")
