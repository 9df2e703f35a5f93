"""The janitor against the containerised registry, driven from outside as operators do.

Real clients inside the converged host (the docker CLI and skopeo) push
and pull through the published port 5000; sweeps run through registry-janitor.service,
playbooks/sweep.yml and an ad-hoc `ansible` command; the store is read on the host's data
directory (the Storage Box path). The tests share one registry; each one pushes to its own
repositories and sets up what it needs (fixtures), so a later sweep never changes an earlier
test's verdict and any test can run alone (-k NAME, see the README's test section).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import testinfra.utils.ansible_runner
from registry_cache_testing import (
    age_links,
    blob_data,
    controller_tool,
    journal_cursor,
    sh,
    sweep_by_service,
    unit_journal,
)

# The push loads (push_load.py) sweep other hosts: nothing here touches it.
HOST = "registry-cache-janitor"
testinfra_hosts = testinfra.utils.ansible_runner.AnsibleRunner(
    os.environ["MOLECULE_INVENTORY_FILE"]
).get_hosts(HOST)

REG = "127.0.0.1:5000"
DATA = "/var/lib/registry-cache/data"
V2 = f"{DATA}/docker/registry/v2"
METRICS = "/var/lib/registry-cache/metrics/registry_janitor.prom"
WORK = "/var/tmp/molecule-janitor"
OCIGEN = "/usr/local/lib/molecule-janitor/ocigen.py"
SKOPEO = "skopeo --insecure-policy"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_ACCEPT = (
    "application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json,"
    f"application/vnd.docker.distribution.manifest.list.v2+json,{DOCKER_MANIFEST}"
)
UNIQUE_SIZE = 256 * 1024
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The janitor engine (this host's): one `sweep done: ...` line per sweep, reclaimed bytes in
# it. The registry engine: `prune done: ...`, then `gc done: ...` from its read-only window.
SWEEP_SUMMARY = re.compile(
    r"(?:sweep|prune) done: \d+ repositor(?:y|ies), \d+ tags kept, \d+ deleted"
)
GC_SUMMARY = re.compile(r"(?:sweep|gc) done: .* reclaimed")

# --- helpers ------------------------------------------------------------------------------


def blobs_present(host, digests) -> set[str]:
    """The subset of digests whose data file exists in the store (one command)."""
    digests = sorted(set(digests))
    if not digests:
        return set()
    paths = " ".join(shlex.quote(blob_data(V2, d)) for d in digests)
    out = host.run(f"ls -1 {paths} 2>/dev/null").stdout.split()
    return {d for d in digests if blob_data(V2, d) in out}


def blobs_bytes(host) -> int:
    return int(sh(host, f"du -sb {V2}/blobs").split()[0])


def http(host, path: str, *, method: str = "GET", accept: str = OCI_ACCEPT) -> tuple[int, bytes]:
    """Status and body of a request to the registry, made inside the host."""
    out = sh(
        host,
        f"curl -sS -X {method} {'-I' if method == 'HEAD' else ''} -H 'Accept: {accept}' "
        f"-o /tmp/molecule-janitor-body -w '%{{http_code}}' 'http://{REG}{path}'; "
        "echo; base64 -w0 /tmp/molecule-janitor-body 2>/dev/null; rm -f /tmp/molecule-janitor-body",
    )
    status, _, body = out.partition("\n")
    return int(status), base64.b64decode(body.strip() or b"")


def tags(host, repo: str) -> list[str]:
    status, body = http(host, f"/v2/{repo}/tags/list")
    if status == 404:
        return []
    assert status == 200, body
    return sorted(json.loads(body).get("tags") or [])


def catalog(host) -> list[str]:
    status, body = http(host, "/v2/_catalog?n=1000")
    assert status == 200, body
    return sorted(json.loads(body).get("repositories") or [])


def push_oci(
    host, repo: str, tag: str, *, kind: str = "image", shared: str = "base", size: int = UNIQUE_SIZE
) -> dict:
    """An image (or index) built as an OCI layout in the host, pushed with skopeo."""
    layout = f"{WORK}/oci/{repo.replace('/', '_')}-{tag}"
    spec = json.dumps({"dir": layout, "tag": tag, "kind": kind, "shared": shared, "size": size})
    info = json.loads(sh(host, f"rm -rf {layout} && python3 {OCIGEN} {shlex.quote(spec)}"))
    sh(
        host,
        f"{SKOPEO} copy -q --all --preserve-digests --dest-tls-verify=false "
        f"oci:{layout}:{tag} docker://{REG}/{repo}:{tag}",
    )
    return info


def push_docker(host, repo: str, tag: str, *, shared: str = "base") -> dict:
    """An image built with `docker build` (FROM scratch, a shared and a random file) and
    pushed with `docker push`; its digests read back from the registry."""
    image = f"{REG}/{repo}:{tag}"
    sh(
        host,
        f"""set -eu
mkdir -p {WORK}
shared={WORK}/shared-{shared}.bin
test -s "$shared" || python3 -c 'import random, sys; sys.stdout.buffer.write(\
random.Random(sys.argv[1]).randbytes(65536))' {shared} > "$shared"
ctx=$(mktemp -d)
cp "$shared" "$ctx/shared.bin"
head -c {UNIQUE_SIZE} /dev/urandom > "$ctx/unique.bin"
printf 'FROM scratch\\nCOPY shared.bin /shared.bin\\nCOPY unique.bin /unique.bin\\n' \
    > "$ctx/Dockerfile"
DOCKER_BUILDKIT=0 docker build -q -t {image} "$ctx" >/dev/null
rm -rf "$ctx"
docker push -q {image} >/dev/null
""",
    )
    status, body = http(host, f"/v2/{repo}/manifests/{tag}", accept=DOCKER_MANIFEST)
    assert status == 200, body
    manifest = json.loads(body)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    layers = manifest["layers"]
    assert len(layers) == 2, manifest
    blobs = {d["digest"]: d["size"] for d in [manifest["config"], *layers]}
    blobs[digest] = len(body)
    return {
        "digest": digest,
        "children": [],
        "blobs": blobs,
        "shared": [layers[0]["digest"]],
        "unique": sorted([digest, manifest["config"]["digest"], layers[1]["digest"]]),
    }


def pull(host, repo: str, ref: str, *, oci: bool = True) -> subprocess.CompletedProcess:
    """A complete pull with skopeo: every blob of every platform is fetched and its digest
    verified. OCI content into an OCI layout, docker-built images into a dir: copy."""
    dest = f"{WORK}/pull/{repo.replace('/', '_')}-{ref.replace(':', '_')}"
    target = f"oci:{dest}:x" if oci else f"dir:{dest}"
    sep = "@" if ref.startswith("sha256:") else ":"
    result = host.run(
        f"rm -rf {dest} && mkdir -p {dest} && {SKOPEO} copy -q --all --preserve-digests "
        f"--src-tls-verify=false docker://{REG}/{repo}{sep}{ref} {target}"
    )
    host.run(f"rm -rf {dest}")
    return result


UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def reported_bytes(log: str) -> float:
    """Bytes reclaimed according to the janitor's summary line ("... / 1.5 MiB reclaimed")."""
    match = re.search(r"(?:sweep|gc) done: .*?/ ([0-9.]+) ?(B|KiB|MiB|GiB)\b.*?reclaimed", log)
    assert match, log
    return float(match[1]) * UNITS[match[2]]


def ansible(tool: str, *args: str) -> subprocess.CompletedProcess:
    """ansible / ansible-playbook on the controller against this test's host in the Molecule
    inventory, from the project root, as an operator would run them."""
    project = os.environ.get("MOLECULE_PROJECT_DIRECTORY", str(Path(__file__).parents[3]))
    result = subprocess.run(
        [
            controller_tool(tool),
            "-i",
            os.environ["MOLECULE_INVENTORY_FILE"],
            "--limit",
            HOST,
            *args,
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1"},
    )
    result.stdout = ANSI.sub("", result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def push_series(host, repo: str, names, push=push_oci, gap: float = 0.2, **kwargs) -> dict:
    infos = {}
    for i, name in enumerate(names):
        if i:
            host.run(f"sleep {gap}")
        infos[name] = push(host, repo, name, **kwargs)
    return infos


def pushed_hours_ago(host, *repos: str, hours: int = 3) -> None:
    """Moves every push into these repositories `hours` back in time, order and gaps kept:
    the mtime of each `link` file (tags' current/link, revisions, layers) is what the janitor
    reads as push time, and the blobs they name with them. The janitor leaves unreachable
    revisions younger than its revision grace and blobs younger than its GC grace for a later
    sweep, so without this the blobs of a tag deleted minutes after its push are not
    reclaimed yet."""
    age_links(host, hours * 3600, *(f"{V2}/repositories/{r}" for r in repos))


def first_seen_unreachable_hours_ago(host, hours: int = 3) -> None:
    """Moves back when the janitor first saw each unreachable revision (its state file in
    the data directory): a revision that lost its tag without the policy deleting it (an
    overwritten `latest`) is dated from then, not from its push."""
    script = (
        "import json, sys; p, shift = sys.argv[1], float(sys.argv[2]); s = json.load(open(p)); "
        "json.dump({r: {d: t - shift for d, t in v.items()} for r, v in s.items()}, open(p, 'w'))"
    )
    path = f"{DATA}/.registry-janitor.unreachable"
    sh(host, f"python3 -c {shlex.quote(script)} {path} {hours * 3600}")


def assert_pruned(
    host, repo: str, infos: dict, kept: list[str], gone: list[str], *, oci: bool = True
) -> None:
    """Kept tags are listed and pull completely with all their blobs on disk; gone tags are
    not listed, do not pull, and the blobs only they used are gone from the store."""
    assert tags(host, repo) == sorted(kept)
    for name in kept:
        result = pull(host, repo, name, oci=oci)
        assert result.rc == 0, f"{repo}:{name} does not pull: {result.stderr}"
        assert blobs_present(host, infos[name]["blobs"]) == set(infos[name]["blobs"])
    kept_blobs = set().union(*(infos[n]["blobs"] for n in kept)) if kept else set()
    for name in gone:
        result = pull(host, repo, name, oci=oci)
        assert result.rc != 0, f"{repo}:{name} still pulls"
        status, _ = http(host, f"/v2/{repo}/manifests/{infos[name]['digest']}")
        assert status == 404, f"{repo}@{infos[name]['digest']} still served"
        only_this = set(infos[name]["unique"]) - kept_blobs
        assert only_this, "test setup: the image has no blob of its own"
        assert blobs_present(host, only_this) == set(), f"{repo}:{name} blobs left"


# --- the deployed stack -------------------------------------------------------------------


def test_stack_is_up_and_store_is_empty(host):
    # A sweep of a cache nobody has pushed to yet succeeds (the role creates the store
    # root; without it the janitor takes the store for an unmounted Storage Box).
    sweep = host.run("systemctl start registry-janitor.service")
    assert sweep.rc == 0, sweep.stdout + sweep.stderr
    assert host.service("registry-cache.service").is_running
    status, _ = http(host, "/v2/")
    assert status == 200
    assert catalog(host) == []
    assert "blobdescriptor:" not in host.file("/opt/registry-cache/config.yml").content_string
    assert host.exists("skopeo") and host.exists("docker")


def test_timer_is_enabled_and_has_not_fired(host):
    """The timer stays enabled as in production; its calendar keeps it out of this run."""
    timer = host.service("registry-janitor.timer")
    assert timer.is_enabled and timer.is_running
    nxt = host.check_output(
        "systemctl show registry-janitor.timer -p NextElapseUSecRealtime --value"
    )
    assert nxt not in ("", "n/a", "0")
    assert host.check_output(
        "systemctl show registry-janitor.timer -p LastTriggerUSec --value"
    ) in ("", "n/a", "0")


# --- 1: retention and reclaimed blobs through the deployed stack --------------------------


def test_1_sweep_by_service_keeps_newest_two_and_reclaims_blobs(host):
    repo = "team/app"
    infos = push_series(host, repo, ["v1", "v2", "v3", "v4"], push=push_docker, gap=1.1)
    shared = {layer for info in infos.values() for layer in info["shared"]}
    assert len(shared) == 1, "the four images should share their first layer"
    mtimes = [
        float(sh(host, f"stat -c %.9Y {V2}/repositories/{repo}/_manifests/tags/{t}/current/link"))
        for t in ("v1", "v2", "v3", "v4")
    ]
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(mtimes)), mtimes
    assert tags(host, repo) == ["v1", "v2", "v3", "v4"]
    pushed_hours_ago(host, repo)
    before = blobs_bytes(host)

    log = sweep_by_service(host)

    assert SWEEP_SUMMARY.search(log), log
    assert_pruned(host, repo, infos, ["v3", "v4"], ["v1", "v2"], oci=False)
    assert blobs_present(host, shared) == shared
    for name in ("v1", "v2"):
        result = host.run(f"docker pull -q {REG}/{repo}:{name}")
        assert result.rc != 0 and "manifest unknown" in result.stderr.lower(), result.stderr
    unique_gone = sum(infos[n]["blobs"][d] for n in ("v1", "v2") for d in infos[n]["unique"])
    reclaimed = before - blobs_bytes(host)
    assert unique_gone >= 2 * UNIQUE_SIZE
    assert reclaimed >= unique_gone, (before, reclaimed, unique_gone)
    # The janitor's own account of it, from the summary line.
    reported = reported_bytes(log)
    assert unique_gone * 0.95 <= reported <= reclaimed * 1.05, (reported, unique_gone, reclaimed)


def test_1b_fresh_untagged_revisions_wait_for_the_grace_period(host):
    """Why the other tests age their pushes: a tag deleted minutes after its push loses its
    name at once, but its manifest and blobs stay until the revision is an hour old (a
    multi-arch push uploads children before the index); the next sweep after that collects."""
    repo = "team/fresh"
    infos = push_series(host, repo, ["f1", "f2", "f3"])

    sweep_by_service(host)

    assert tags(host, repo) == ["f2", "f3"]
    assert pull(host, repo, "f1").rc != 0
    assert http(host, f"/v2/{repo}/manifests/{infos['f1']['digest']}")[0] == 200
    assert blobs_present(host, infos["f1"]["unique"]) == set(infos["f1"]["unique"])

    pushed_hours_ago(host, repo)
    sweep_by_service(host)

    assert_pruned(host, repo, infos, ["f2", "f3"], ["f1"])


# --- 2: the sweep as operators trigger it -------------------------------------------------


def test_2a_sweep_by_playbook(host):
    repo = "ops/playbook"
    infos = push_series(host, repo, ["p1", "p2", "p3"])
    pushed_hours_ago(host, repo)
    result = ansible("ansible-playbook", "playbooks/sweep.yml")
    assert SWEEP_SUMMARY.search(result.stdout), result.stdout
    assert re.search(r"ok=\d+\s+changed=1\s+unreachable=0\s+failed=0", result.stdout)
    assert_pruned(host, repo, infos, ["p2", "p3"], ["p1"])


def test_2b_sweep_by_adhoc_command(host):
    repo = "ops/adhoc"
    infos = push_series(host, repo, ["a1", "a2", "a3"])
    pushed_hours_ago(host, repo)
    cursor = journal_cursor(host)
    result = ansible(
        "ansible",
        "registry_cache",
        "-b",
        "-m",
        "command",
        "-a",
        "systemctl start registry-janitor.service",
    )
    assert "CHANGED" in result.stdout, result.stdout
    log = unit_journal(host, "registry-janitor.service", after_cursor=cursor)
    assert SWEEP_SUMMARY.search(log), log
    assert_pruned(host, repo, infos, ["a2", "a3"], ["a1"])


# --- 3: kept multi-platform images with attestations --------------------------------------


def test_3_kept_multiplatform_index_with_attestations_pulls_completely(host):
    repo = "team/multi"
    infos = push_series(host, repo, ["i1", "i2", "i3"], kind="index", shared="multi-base")
    for info in infos.values():
        assert len(info["children"]) == 4 and len(info["attestations"]) == 2
    pushed_hours_ago(host, repo)

    sweep_by_service(host)

    assert_pruned(host, repo, infos, ["i2", "i3"], ["i1"])
    for name in ("i2", "i3"):
        for child in infos[name]["children"]:
            status, body = http(host, f"/v2/{repo}/manifests/{child}")
            assert status == 200, f"{name} child {child}: {body[:200]!r}"
            assert pull(host, repo, child).rc == 0, f"{name} child {child} does not pull"
    # i1's platform and attestation manifests were unlinked too, not left to GC's mercy.
    for child in infos["i1"]["children"]:
        assert not host.file(
            f"{V2}/repositories/{repo}/_manifests/revisions/sha256/"
            f"{child.removeprefix('sha256:')}/link"
        ).exists


def test_3b_overwritten_index_tag_is_collected_and_new_one_pulls(host):
    repo = "team/latest"
    old = push_oci(host, repo, "latest", kind="index", shared="latest-base")
    host.run("sleep 0.2")
    new = push_oci(host, repo, "latest", kind="index", shared="latest-base")
    pushed_hours_ago(host, repo)

    # The overwritten index is unreachable from now on: whoever pulls the previous `latest`
    # by digest keeps it for the revision grace, however old its push.
    sweep_by_service(host)
    assert http(host, f"/v2/{repo}/manifests/{old['digest']}")[0] == 200
    first_seen_unreachable_hours_ago(host)
    sweep_by_service(host)

    assert tags(host, repo) == ["latest"]
    assert pull(host, repo, "latest").rc == 0
    assert blobs_present(host, new["blobs"]) == set(new["blobs"])
    assert blobs_present(host, old["unique"]) == set(), "the overwritten index was not collected"


# --- 4: no stale blob-descriptor cache after GC -------------------------------------------


def test_4_repush_of_layers_gc_deleted_pulls_completely(host):
    repo = "team/stale"
    infos = push_series(host, repo, ["s1", "s2", "s3"], push=push_docker, shared="stale-base")
    layer = sorted(set(infos["s1"]["unique"]) - {infos["s1"]["digest"]})
    # Let the running registry look at s1's blobs before GC (what would fill a cache).
    for digest in layer:
        assert http(host, f"/v2/{repo}/blobs/{digest}", method="HEAD")[0] == 200
    assert pull(host, repo, "s1", oci=False).rc == 0
    pushed_hours_ago(host, repo)

    sweep_by_service(host)

    assert_pruned(host, repo, infos, ["s2", "s3"], ["s1"], oci=False)
    for digest in layer:
        assert http(host, f"/v2/{repo}/blobs/{digest}", method="HEAD")[0] == 404
    # The same image again: its config and unique layer are exactly the blobs GC deleted.
    push = host.run(f"docker tag {REG}/{repo}:s1 {REG}/{repo}:s4 && docker push {REG}/{repo}:s4")
    assert push.rc == 0, push.stdout + push.stderr
    result = pull(host, repo, "s4", oci=False)
    assert result.rc == 0, f"re-pushed image does not pull (stale cache?): {result.stderr}"
    assert blobs_present(host, layer) == set(layer)
    assert tags(host, repo) == ["s2", "s3", "s4"]


# --- 5: dry run ---------------------------------------------------------------------------


def store_listing(host) -> list[str]:
    return sh(host, f"find {DATA} -printf '%p %y %s %m %u %T@\\n' | LC_ALL=C sort").splitlines()


@pytest.fixture
def metrics_written(host) -> None:
    """The janitor writes its metrics file at the end of a sweep: one first, if none has run
    on this host yet."""
    if not host.file(METRICS).exists:
        sweep_by_service(host)


def test_5_dry_run_lists_and_changes_nothing(host, metrics_written):
    repo = "team/dry"
    infos = push_series(host, repo, ["d1", "d2", "d3"])
    pushed_hours_ago(host, repo)
    before = store_listing(host)
    metrics_before = host.file(METRICS).content_string

    result = ansible("ansible-playbook", "playbooks/sweep.yml", "-e", "dry_run=true")

    out = result.stdout
    assert re.search(rf"{re.escape(repo)}\W+d1\b", out), out
    assert infos["d1"]["digest"].removeprefix("sha256:")[:12] in out, out
    for kept in ("d2", "d3"):
        assert not re.search(rf"{re.escape(repo)}\W+{kept}\b", out), out
    after = store_listing(host)
    assert after == before
    assert (
        hashlib.sha256("\n".join(after).encode()).hexdigest()
        == hashlib.sha256("\n".join(before).encode()).hexdigest()
    )
    assert tags(host, repo) == ["d1", "d2", "d3"]
    assert pull(host, repo, "d1").rc == 0
    assert host.file(METRICS).content_string == metrics_before


# --- 6: retention options end to end ------------------------------------------------------

RETENTION = {
    # PROTECT_TAGS=release-.*: protected tags stay and do not count toward N=2.
    "rel/app": (
        ["release-1", "release-2", "c1", "c2", "c3"],
        ["release-1", "release-2", "c2", "c3"],
    ),
    # Rule young/**: keep 1, min age 1h; y1 pushed 2 h ago, y2-y4 just now.
    "young/app": (["y1", "y2", "y3", "y4"], ["y2", "y3", "y4"]),
    # Rule scratch/**: keep 1.
    "scratch/ci/app": (["t1", "t2", "t3"], ["t3"]),
    # No rule matches: the default keep 2.
    "scratchpad/app": (["t1", "t2", "t3"], ["t2", "t3"]),
    "other/app": (["t1", "t2", "t3"], ["t2", "t3"]),
}


@pytest.fixture(scope="module")
def retention(host):
    infos = {}
    for repo, (names, _) in RETENTION.items():
        if repo == "young/app":
            # y1 pushed two hours ago, then y2-y4 now (younger than the rule's 1h).
            infos[repo] = push_series(host, repo, names[:1], size=4096)
            pushed_hours_ago(host, repo)
            infos[repo].update(push_series(host, repo, names[1:], size=4096))
        else:
            infos[repo] = push_series(host, repo, names, size=4096)
            pushed_hours_ago(host, repo)
    assert tags(host, "young/app") == ["y1", "y2", "y3", "y4"]
    sweep_by_service(host)
    return infos


def check_retention(host, infos, repo):
    names, kept = RETENTION[repo]
    assert_pruned(host, repo, infos[repo], kept, [n for n in names if n not in kept])


def test_6a_protected_tags_survive_beyond_n(host, retention):
    check_retention(host, retention, "rel/app")


def test_6b_tags_younger_than_min_age_survive(host, retention):
    check_retention(host, retention, "young/app")


def test_6c_policy_rule_applies_to_its_repositories_only(host, retention):
    for repo in ("scratch/ci/app", "scratchpad/app", "other/app"):
        check_retention(host, retention, repo)


# --- 7: metrics and journal ---------------------------------------------------------------

METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(
    rf"^(?P<name>{METRIC_NAME})(?:\{{(?P<labels>(?:{LABEL})(?:,{LABEL})*,?)?\}})?"
    r" (?P<value>[^ ]+)(?: (?P<ts>-?[0-9]+))?$"
)
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse_prometheus_text(text: str) -> dict[tuple[str, str], float]:
    """A strict reader of the Prometheus text exposition format (0.0.4): HELP/TYPE at most
    once per family and before its samples, families contiguous, no duplicate series, valid
    names, label syntax and float values, a final newline."""
    assert text.endswith("\n"), "no final newline"
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[tuple[str, str], float] = {}
    finished: set[str] = set()
    current = None

    def family(name: str) -> str:
        for suffix in ("_total", "_bucket", "_sum", "_count", "_created"):
            if name not in types and name.endswith(suffix) and name[: -len(suffix)] in types:
                return name[: -len(suffix)]
        return name

    for number, line in enumerate(text.splitlines(), 1):
        where = f"line {number}: {line!r}"
        assert line.strip(), f"{where}: empty line"
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert re.fullmatch(METRIC_NAME, name), where
                assert name != current and name not in finished, f"{where}: after its samples"
                if parts[1] == "HELP":
                    assert name not in helps, f"{where}: second HELP"
                    helps.add(name)
                else:
                    assert name not in types, f"{where}: second TYPE"
                    assert len(parts) == 4 and parts[3] in TYPES, where
                    types[name] = parts[3]
            continue
        match = SAMPLE.match(line)
        assert match, f"{where}: not a sample"
        fam = family(match["name"])
        if fam != current:
            assert fam not in finished, f"{where}: family {fam} is not contiguous"
            if current is not None:
                finished.add(current)
            current = fam
        value = match["value"]
        assert re.fullmatch(r"[+-]?(?:[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?|Inf)|NaN", value), where
        key = (match["name"], match["labels"] or "")
        assert key not in samples, f"{where}: duplicate series"
        samples[key] = float(value)
    for (name, _), value in samples.items():
        if types.get(family(name)) == "counter":
            assert value >= 0, f"counter {name} is negative"
    return samples


def metric_samples(host) -> dict[tuple[str, str], float]:
    metrics = host.file(METRICS)
    return parse_prometheus_text(metrics.content_string) if metrics.exists else {}


@pytest.fixture(scope="module")
def counted_sweeps(host) -> dict:
    """One sweep started each way operators start one (the service, an ad-hoc `ansible`
    command, playbooks/sweep.yml), each deleting one tag of metrics/app; returns what they
    did, the metrics from before them and the journal cursor from before them."""
    repo = "metrics/app"
    seen = {"sweeps": 0, "service_sweeps": 0, "tags_deleted": 0, "bytes_reclaimed": 0}
    before = metric_samples(host)
    cursor = journal_cursor(host)
    infos = push_series(host, repo, ["m1", "m2"], shared="metrics-base")
    triggers = {
        "m3": lambda: sweep_by_service(host),
        "m4": lambda: ansible(
            "ansible",
            "registry_cache",
            "-b",
            "-m",
            "command",
            "-a",
            "systemctl start registry-janitor.service",
        ),
        "m5": lambda: ansible("ansible-playbook", "playbooks/sweep.yml"),
    }
    for i, (name, sweep) in enumerate(triggers.items()):
        infos.update(push_series(host, repo, [name], shared="metrics-base"))
        pushed_hours_ago(host, repo)
        sweep()
        # KEEP_LAST_N 2: each sweep deletes the oldest remaining tag.
        gone = f"m{i + 1}"
        assert_pruned(host, repo, infos, [f"m{i + 2}", name], [gone])
        seen["sweeps"] += 1
        seen["service_sweeps"] += name != "m5"
        seen["tags_deleted"] += 1
        seen["bytes_reclaimed"] += sum(infos[gone]["blobs"][d] for d in infos[gone]["unique"])
    return {"seen": seen, "before": before, "cursor": cursor}


def counted(samples: dict[tuple[str, str], float], name: str, labels: str = "") -> float:
    return samples.get((name, labels), 0.0)


def test_7a_metrics_file_parses_and_counts_the_sweeps(host, counted_sweeps):
    seen, before = counted_sweeps["seen"], counted_sweeps["before"]
    metrics = host.file(METRICS)
    assert metrics.is_file
    samples = parse_prometheus_text(metrics.content_string)
    names = {name for name, _ in samples}
    for required in (
        "registry_janitor_last_run_timestamp_seconds",
        "registry_janitor_last_success_timestamp_seconds",
        "registry_janitor_last_run_success",
        "registry_janitor_sweep_duration_seconds",
        "registry_janitor_gc_duration_seconds",
        "registry_janitor_repositories",
        "registry_janitor_tags",
        "registry_janitor_tags_kept",
        "registry_janitor_sweeps_total",
        "registry_janitor_tags_deleted_total",
        "registry_janitor_manifests_unlinked_total",
        "registry_janitor_blobs_deleted_total",
        "registry_janitor_bytes_reclaimed_total",
    ):
        assert required in names, f"{required} missing"
    now = int(host.check_output("date +%s"))
    assert samples[("registry_janitor_last_run_success", "")] == 1
    assert 0 <= now - samples[("registry_janitor_last_success_timestamp_seconds", "")] < 900
    # What the counters gained during the fixture's sweeps.
    gained = {
        name: counted(samples, f"registry_janitor_{name}_total", labels)
        - counted(before, f"registry_janitor_{name}_total", labels)
        for name, labels in (
            ("sweeps", 'result="success"'),
            ("tags_deleted", ""),
            ("bytes_reclaimed", ""),
        )
    }
    assert gained["sweeps"] >= seen["sweeps"]
    assert gained["tags_deleted"] >= seen["tags_deleted"]
    assert gained["bytes_reclaimed"] >= seen["bytes_reclaimed"]
    assert samples[("registry_janitor_repositories", "")] == len(catalog(host))
    # Written atomically: no temporary file left beside it, only the sweeps' history and the
    # HTML report each sweep also writes there.
    assert sorted(sh(host, f"ls -A {Path(METRICS).parent}").split()) == [
        Path(METRICS).name,
        "registry_janitor_history.jsonl",
        "registry_janitor_report.html",
    ]


def test_7b_journal_has_the_sweep_summary(host, counted_sweeps):
    seen = counted_sweeps["seen"]
    log = unit_journal(host, "registry-janitor.service", after_cursor=counted_sweeps["cursor"])
    summaries = SWEEP_SUMMARY.findall(log)
    # Every sweep started through systemd (the ad-hoc one included) left its summary.
    assert seen["service_sweeps"] >= 1
    assert len(summaries) == seen["service_sweeps"], log
    assert GC_SUMMARY.search(log), log
