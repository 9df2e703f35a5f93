"""The HTML report of a real store, rendered by headless Chromium.

Images pushed with skopeo into a real registry process; `registry-janitor report --html`
writes the page, a sweep writes it again beside its metrics; Chromium loads each page
(`--dump-dom`) and the test reads the figures from the DOM it dumps, comparing them with
what was pushed: repositories, tags, the bytes of each repository (from the OCI layout the
client pushed, not from the janitor's own reading), the tags the next sweep would delete,
the GC history and the filesystem's fill.

REPORT_SCREENSHOT=docs/report.png saves Chromium's screenshot of the page there (how
docs/report.png is made); without it the screenshot goes to a temporary file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import janitor
import oci
import pytest
from registry import Registry, push, running, tag_link
from registry_janitor.output import human_bytes

CHROMIUM = shutil.which("chromium")
OLD = time.time() - 20 * 86400
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="chromium not installed (apt-get install chromium)",
)


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""


@dataclass
class Dom(HTMLParser):
    """Every element with its attributes and the text directly inside it."""

    elements: list[Element] = field(default_factory=list)
    _open: list[Element] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        if tag not in ("rect", "meta", "br", "img", "input"):
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1].text += data

    def by(self, attr: str) -> list[Element]:
        return [e for e in self.elements if attr in e.attrs]

    def one(self, id_: str) -> Element:
        [element] = [e for e in self.elements if e.attrs.get("id") == id_]
        return element


def chromium(*args: str) -> str:
    assert CHROMIUM is not None
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


def rendered(page: Path) -> Dom:
    """The page as Chromium built it (so a page it cannot parse fails here)."""
    dom = Dom()
    dom.feed(chromium("--dump-dom", page.as_uri()))
    return dom


@dataclass
class Pushed:
    layout: oci.Layout
    images: dict[str, oci.Descriptor] = field(default_factory=dict)  # ref -> manifest
    layers: dict[str, list[oci.Descriptor]] = field(default_factory=dict)  # ref -> blobs


def push_images(reg: Registry, work: Path) -> Pushed:
    layout = oci.Layout(work / "layout")
    pushed = Pushed(layout)
    base = layout.layer({"etc/os-release": b"ID=report\n"})  # in both repositories
    refs = ["team/app:b1", "team/app:b2", "team/app:b3", "team/app:b4", "tools/lint:v1"]
    for i, ref in enumerate(refs):
        own = layout.layer({f"{ref}.txt": ref.encode() * (100 * (i + 1))})
        desc = layout.image([base, own], label=ref)
        name = re.sub(r"[^a-z0-9]", "-", ref)
        layout.tag(name, desc)
        push(layout.path, name, reg, ref)
        config = oci.json.loads(layout._read(desc))["config"]
        pushed.images[ref] = desc
        pushed.layers[ref] = [config, base, own]
    # Everything written 20 days ago but the last three pushes: with KEEP_LAST_N=2 the next
    # sweep deletes b1 and b2, unlinks their manifests and collects their own blobs.
    now = time.time()
    recent = ("team/app:b3", "team/app:b4", "tools/lint:v1")
    reg.store.age_all(OLD, {tag_link(*ref.split(":")): now for ref in recent})
    return pushed


def expected_bytes(pushed: Pushed, repo: str) -> tuple[int, int]:
    """(unique, shared) bytes of `repo` from what the client pushed: its manifests, their
    configs and layers; a blob another repository also has counts as shared."""
    mine: dict[str, int] = {}
    others: set[str] = set()
    for ref, desc in pushed.images.items():
        blobs = {d["digest"]: d["size"] for d in [desc, *pushed.layers[ref]]}
        if ref.split(":")[0] == repo:
            mine |= blobs
        else:
            others |= set(blobs)
    unique = sum(s for d, s in mine.items() if d not in others)
    return unique, sum(s for d, s in mine.items() if d in others)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    work = tmp_path_factory.mktemp("html-report")
    with running(work / "registry") as reg:
        yield reg, work, push_images(reg, work)


def test_report_shows_the_stores_repositories_and_numbers(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reg, _work, pushed = store
    page = tmp_path / "report.html"
    result = janitor.run(
        reg, "--keep-last-n", "2", "--keep-min-age", "0", "--html", str(page), command="report"
    )
    assert result.returncode == 0, result.stderr
    dom = rendered(page)

    table = dom.elements[dom.elements.index(dom.one("usage")) :]
    rows = {
        e.attrs["data-repository"]: e
        for e in table
        if e.tag == "tr"
        and "data-repository" in e.attrs
        and "data-tag" not in e.attrs
        and "data-what" not in e.attrs
    }
    usage = {r: _cells(dom, rows[r]) for r in ("team/app", "tools/lint")}
    assert dom.one("usage-total").attrs["data-repositories"] == "2"
    for repo, cells in usage.items():
        figures = {k: v for c in cells for k, v in c.attrs.items() if k.startswith("data-")}
        tags = sum(1 for ref in pushed.images if ref.startswith(repo + ":"))
        assert figures["data-tags"] == figures["data-manifests"] == str(tags)
        unique, shared = expected_bytes(pushed, repo)
        assert (int(figures["data-unique-bytes"]), int(figures["data-shared-bytes"])) == (
            unique,
            shared,
        )
        assert cells[0].text == repo  # the name as text, escaped on the way in

    ages = {
        (e.attrs["data-repository"], e.attrs["data-tag"]): e
        for e in dom.by("data-tag")
        if e.tag == "tr"
    }
    assert set(ages) == {tuple(ref.split(":")) for ref in pushed.images}
    age_of = {
        k: int(c.attrs["data-age"])
        for k, row in ages.items()
        for c in _cells(dom, row)
        if "data-age" in c.attrs
    }
    assert 19 * 86400 < age_of[("team/app", "b1")] < 21 * 86400
    assert age_of[("tools/lint", "v1")] < 600

    going = {
        (e.attrs["data-repository"], e.attrs["data-kind"], e.attrs["data-what"])
        for e in dom.by("data-what")
    }
    assert going == {
        ("team/app", "tag", "b1"),
        ("team/app", "tag", "b2"),
        ("team/app", "manifest", pushed.images["team/app:b1"]["digest"]),
        ("team/app", "manifest", pushed.images["team/app:b2"]["digest"]),
    }
    assert dom.one("deletions-total").attrs["data-count"] == "4"

    fill = dom.one("fill").attrs
    st = os.statvfs(reg.root)
    assert int(fill["data-size"]) == st.f_blocks * st.f_frsize
    assert abs(int(fill["data-available"]) - st.f_bavail * st.f_frsize) < 64 << 20
    assert dom.one("history-none")  # no sweep with a metrics file yet
    assert sum(1 for e in dom.elements if e.tag == "svg") == 3  # fill, usage, ages

    shot = Path(os.environ.get("REPORT_SCREENSHOT") or tmp_path / "report.png").resolve()
    chromium(f"--screenshot={shot}", "--window-size=1100,1500", "--hide-scrollbars", page.as_uri())
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_sweep_writes_the_page_beside_its_metrics(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reg, _work, pushed = store
    metrics = tmp_path / "registry_janitor.prom"
    sweep = janitor.run(
        reg, "--keep-last-n", "2", "--keep-min-age", "0", "--metrics-file", str(metrics)
    )
    assert sweep.returncode == 0, sweep.stderr
    page = tmp_path / "registry_janitor_report.html"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "registry_janitor.prom",
        "registry_janitor_history.jsonl",
        "registry_janitor_report.html",
    ]
    dom = rendered(page)
    # The sweep deleted b1 and b2: the page shows the store after it.
    tags = {(e.attrs["data-repository"], e.attrs["data-tag"]) for e in dom.by("data-tag")}
    assert tags == {("team/app", "b3"), ("team/app", "b4"), ("tools/lint", "v1")}
    assert dom.one("deletions-total").attrs["data-count"] == "0"
    [outcome] = [e for e in dom.by("data-reason")]
    assert outcome.attrs["data-reason"] == "collected" == outcome.text
    assert 'registry_janitor_gc_ok{reason="collected"} 1' in metrics.read_text()
    # b1's and b2's own layers, configs and manifests are what the collection reclaimed.
    gone = sum(
        d["size"]
        for ref in ("team/app:b1", "team/app:b2")
        for d in [pushed.images[ref], *pushed.layers[ref][::2]]
    )
    history_cells = [c for c in dom.elements if c.tag == "td"]
    assert any(c.text == human_bytes(gone) for c in history_cells)


def _cells(dom: Dom, row: Element) -> list[Element]:
    """The <td> elements of a row (the ones after it, up to the next <tr>)."""
    start = dom.elements.index(row) + 1
    cells = []
    for e in dom.elements[start:]:
        if e.tag == "tr":
            break
        if e.tag == "td":
            cells.append(e)
    return cells
