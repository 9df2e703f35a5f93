"""`registry-janitor report --html PATH`, and the page each sweep writes beside its metrics.

One static HTML file, no script: usage per repository, tag ages, what the next sweep would
delete and why, the sweeps' GC history and the store's fill, with inline SVG charts. Every
name from the store (repositories, tags) is HTML-escaped: a registry accepts names the page
must not interpret. Cells carry `data-*` attributes with raw numbers so a test (or a script)
reads the figures without parsing human units.
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from registry_janitor import atomic, manifests, plan, pulls, store
from registry_janitor.config import Config
from registry_janitor.output import human_bytes, iso
from registry_janitor.records import SweepStats
from registry_janitor.registry_log import RegistryLog
from registry_janitor.report import RepoUsage, usage
from registry_janitor.storage import Storage
from registry_janitor.survey import Survey

log = logging.getLogger(__name__)

HISTORY_LINES = 200  # sweeps kept in the history file (hourly: about 8 days)
AGE_BUCKETS = ((86400, "< 1 day"), (7 * 86400, "1-7 days"), (30 * 86400, "7-30 days"))


@dataclass(frozen=True)
class Deletion:
    repository: str
    what: str  # a tag name, or a manifest digest
    kind: str  # "tag" or "manifest"
    reason: str


@dataclass
class Page:
    store: str
    generated: float
    usage: list[RepoUsage] = field(default_factory=list)
    tag_ages: list[tuple[str, str, float]] = field(default_factory=list)  # repo, tag, age s
    deletions: list[Deletion] = field(default_factory=list)
    history: list[dict[str, object]] = field(default_factory=list)
    fill: tuple[int, int] | None = None  # (size, available) bytes of the store's filesystem
    gaps: list[str] = field(default_factory=list)


def history_file(metrics_file: Path) -> Path:
    return metrics_file.with_name(f"{metrics_file.stem}_history.jsonl")


def page_file(metrics_file: Path) -> Path:
    return metrics_file.with_name(f"{metrics_file.stem}_report.html")


def record_sweep(path: Path, stats: SweepStats, now: float) -> None:
    """Appends one sweep to the history file (the last HISTORY_LINES kept), atomically."""
    entry = {
        "time": round(now, 3),
        "command": stats.command,
        "ok": stats.ok,
        "gc_ran": stats.gc_ran,
        "gc_reason": stats.gc_reason,
        "blobs_deleted": stats.blobs_deleted,
        "bytes_reclaimed": stats.bytes_reclaimed,
        "tags_deleted": stats.tags_deleted,
        "duration": round(stats.duration, 3),
    }
    lines = read_history(path)[-(HISTORY_LINES - 1) :] + [entry]
    atomic.write_text(path, "".join(json.dumps(e) + "\n" for e in lines), mode=0o644)


def read_history(path: Path) -> list[dict[str, object]]:
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def build(cfg: Config, storage: Storage, pool: Executor, now: float | None = None) -> Page:
    """Reads the store (a scan, the manifests, the plan of a dry run): never writes."""
    now = time.time() if now is None else now
    page = Page(store=cfg.store, generated=now)
    survey = Survey(storage)
    repos = store.scan(survey, pool)
    page.gaps = [str(g) for g in survey.gaps]
    reader = manifests.ManifestReader(storage, pool)
    try:
        page.usage = sorted(usage(repos, reader), key=lambda u: (-u.unique_bytes, u.repository))
        plans = plan.plan_all(
            repos,
            cfg.policy,
            now,
            reader,
            storage,
            unlink_untagged=cfg.gc_delete_untagged,
            revision_grace=cfg.revision_grace,
            # A copy: the report must not change what the next sweep dates.
            first_seen=plan.load_first_seen(storage) if cfg.gc_delete_untagged else {},
            pool=pool,
            feed=_pull_feed(cfg, storage, now),
        )
    finally:
        reader.close()
    for r in repos:
        page.tag_ages += [(r.name, t.name, max(0.0, now - t.mtime)) for t in r.tags]
    for p in plans:
        name = p.repository.name
        rule = f"keep_last_n {p.rule.keep_last_n}, keep_min_age {p.rule.keep_min_age} s"
        page.deletions += [
            Deletion(name, d.tag.name, "tag", f"{d.reason} ({rule})") for d in p.deleted
        ]
        page.deletions += [
            Deletion(name, t.name, "tag", "leftover tag directory without a link")
            for t in p.leftovers
        ]
        page.deletions += [
            Deletion(name, digest, "manifest", "no tag reaches it any more")
            for digest in sorted(p.unlink)
        ]
    if cfg.metrics_file is not None:
        page.history = read_history(history_file(cfg.metrics_file))
    if cfg.s3 is None:
        try:
            st = os.statvfs(cfg.data_dir)
            page.fill = (st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)
        except OSError as exc:
            page.gaps.append(f"statvfs {cfg.data_dir}: {exc.strerror or exc}")
    return page


def _pull_feed(cfg: Config, storage: Storage, now: float) -> pulls.Feed | None:
    """The pull record with the registry's log and journal read to their ends, as the sweep
    reads them, but never saved: the page's plan decides pull rules as the next sweep would."""
    uses = cfg.policy.default.uses_pulls or any(r.uses_pulls for _, r in cfg.policy.rules)
    if not uses:
        return None
    reader = RegistryLog(cfg.registry_log, pulls=True) if cfg.registry_log else None
    try:
        return pulls.read_feed(
            storage, reader, now, cfg.notifications_journal, cfg.notifications_pending_urls
        )
    finally:
        if reader is not None:
            reader.close()


def write(path: Path, page: Page) -> None:
    atomic.write_text(path, render(page), mode=0o644)


# -- rendering ----------------------------------------------------------------------------
def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _bar_chart(rows: Sequence[tuple[str, Sequence[tuple[float, str]]]], unit: str) -> str:
    """Horizontal stacked bars: (label, [(value, css class), ...]) per row."""
    if not rows:
        return "<p>Nothing to show.</p>"
    top = max(sum(v for v, _ in parts) for _, parts in rows) or 1.0
    label_w, bar_w, row_h = 220, 460, 22
    out = [
        (
            f'<svg class="chart" role="img" width="{label_w + bar_w + 110}" '
            f'height="{row_h * len(rows) + 4}" xmlns="http://www.w3.org/2000/svg">'
        )
    ]
    for i, (label, parts) in enumerate(rows):
        y = i * row_h + 2
        out.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{_e(label)}</text>')
        x = float(label_w)
        for value, cls in parts:
            w = bar_w * value / top
            out.append(
                f'<rect class="{cls}" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h - 6}"/>'
            )
            x += w
        total = sum(v for v, _ in parts)
        shown = human_bytes(int(total)) if unit == "bytes" else f"{total:g}"
        out.append(f'<text x="{x + 6:.1f}" y="{y + 15}">{_e(shown)}</text>')
    out.append("</svg>")
    return "".join(out)


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1100px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { padding: 2px 10px; border-bottom: 1px solid #eee; text-align: right; }
th { text-align: left; } td.name { text-align: left; }
.chart text { font: 12px system-ui, sans-serif; fill: #333; }
rect.unique { fill: #3b6fb6; } rect.shared { fill: #9cb8e0; } rect.used { fill: #c0504d; }
rect.free { fill: #d9ead3; } rect.ok { fill: #6aa84f; } rect.failed { fill: #cc0000; }
rect.tags { fill: #e69138; }
.muted { color: #777; } .warn { color: #b00; }
"""


def render(page: Page) -> str:
    u = page.usage
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>registry-cache report: {_e(page.store)}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>registry-cache report</h1>",
        (
            f'<p class="muted">Store <code id="store">{_e(page.store)}</code>, generated '
            f'<time id="generated" datetime="{_e(iso(page.generated))}">{_e(iso(page.generated))}'
            "</time> by registry-janitor.</p>"
        ),
    ]
    for gap in page.gaps:
        parts.append(f'<p class="warn">Could not read: {_e(gap)}</p>')
    parts += _fill(page.fill)
    parts += _usage(u)
    parts += _ages(page.tag_ages)
    parts += _deletions(page.deletions)
    parts += _history(page.history)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _fill(fill: tuple[int, int] | None) -> list[str]:
    out = ["<h2>Storage Box fill</h2>"]
    if fill is None:
        return [*out, '<p class="muted">Not a filesystem store: see the bucket\'s usage.</p>']
    size, avail = fill
    used = size - avail
    share = used / size if size else 0.0
    out.append(
        f'<p id="fill" data-size="{size}" data-available="{avail}" data-used="{used}">'
        f"{_e(human_bytes(used))} used of {_e(human_bytes(size))} ({share:.1%}), "
        f"{_e(human_bytes(avail))} free.</p>"
    )
    out.append(_bar_chart([("filesystem", [(used, "used"), (avail, "free")])], "bytes"))
    return out


def _usage(rows: list[RepoUsage]) -> list[str]:
    unique = sum(r.unique_bytes for r in rows)
    out = [
        "<h2>Usage per repository</h2>",
        (
            f'<p id="usage-total" data-repositories="{len(rows)}" data-unique-bytes="{unique}">'
            f"{len(rows)} repositories; {_e(human_bytes(unique))} used by one repository only. "
            "Bars: bytes only this repository uses (dark), bytes it shares with others (light).</p>"
        ),
        _bar_chart(
            [
                (r.repository, [(r.unique_bytes, "unique"), (r.shared_bytes, "shared")])
                for r in rows[:25]
            ],
            "bytes",
        ),
        (
            '<table id="usage"><thead><tr><th>Repository</th><th>Tags</th><th>Manifests</th>'
            "<th>Newest push</th><th>Oldest push</th><th>Unique</th><th>Shared</th></tr></thead>"
            "<tbody>"
        ),
    ]
    for r in rows:
        out.append(
            f'<tr data-repository="{_e(r.repository)}"><td class="name">{_e(r.repository)}</td>'
            f'<td data-tags="{r.tags}">{r.tags}</td>'
            f'<td data-manifests="{r.manifests}">{r.manifests}</td>'
            f"<td>{_e(iso(r.newest_push)) if r.newest_push else '-'}</td>"
            f"<td>{_e(iso(r.oldest_push)) if r.oldest_push else '-'}</td>"
            f'<td data-unique-bytes="{r.unique_bytes}">{_e(human_bytes(r.unique_bytes))}</td>'
            f'<td data-shared-bytes="{r.shared_bytes}">{_e(human_bytes(r.shared_bytes))}</td>'
            "</tr>"
        )
    out.append("</tbody></table>")
    return out


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _ages(ages: list[tuple[str, str, float]]) -> list[str]:
    counts = []
    lower = 0
    for upper, label in AGE_BUCKETS:
        counts.append((label, sum(1 for *_, a in ages if lower <= a < upper)))
        lower = upper
    counts.append(("> 30 days", sum(1 for *_, a in ages if a >= lower)))
    out = [
        "<h2>Tag ages</h2>",
        "<p>Since each tag's last push.</p>",
        _bar_chart([(label, [(n, "tags")]) for label, n in counts], "count"),
        (
            '<details><summary>Every tag, oldest first</summary><table id="tags"><thead><tr>'
            "<th>Repository</th><th>Tag</th><th>Age</th></tr></thead><tbody>"
        ),
    ]
    for repo, tag, age in sorted(ages, key=lambda t: -t[2]):
        out.append(
            f'<tr data-repository="{_e(repo)}" data-tag="{_e(tag)}"><td class="name">{_e(repo)}'
            f'</td><td class="name">{_e(tag)}</td><td data-age="{age:.0f}">{_age(age)}</td></tr>'
        )
    out.append("</tbody></table></details>")
    return out


def _deletions(deletions: list[Deletion]) -> list[str]:
    out = [
        "<h2>What the next sweep would delete</h2>",
        (
            f'<p id="deletions-total" data-count="{len(deletions)}">{len(deletions)} '
            "(a dry run of the retention policy on the store as it is now).</p>"
        ),
    ]
    if not deletions:
        return out
    out.append(
        '<table id="deletions"><thead><tr><th>Repository</th><th>Tag or manifest</th>'
        "<th>Why</th></tr></thead><tbody>"
    )
    for d in deletions:
        out.append(
            f'<tr data-repository="{_e(d.repository)}" data-kind="{d.kind}" data-what="{_e(d.what)}">'
            f'<td class="name">{_e(d.repository)}</td><td class="name">{_e(d.what)}</td>'
            f'<td class="name">{_e(d.reason)}</td></tr>'
        )
    out.append("</tbody></table>")
    return out


def _history(history: list[dict[str, object]]) -> list[str]:
    out = ["<h2>Garbage collection history</h2>"]
    runs = [h for h in history if h.get("gc_ran")]
    if not runs:
        return [*out, '<p class="muted" id="history-none">No garbage collection recorded yet.</p>']
    out.append("<p>Bytes reclaimed by each collection (red: failed closed, nothing deleted).</p>")
    rows = []
    for h in runs[-30:]:
        reclaimed = float(h.get("bytes_reclaimed", 0) or 0)  # type: ignore[arg-type]
        cls = "ok" if h.get("gc_reason") == "collected" else "failed"
        rows.append((iso(float(h.get("time", 0) or 0)), [(reclaimed, cls)]))  # type: ignore[arg-type]
    out.append(_bar_chart(rows, "bytes"))
    out.append(
        '<table id="history"><thead><tr><th>Ended</th><th>Outcome</th><th>Blobs deleted</th>'
        "<th>Reclaimed</th><th>Tags deleted</th></tr></thead><tbody>"
    )
    for h in reversed(runs[-30:]):
        out.append(
            f"<tr><td>{_e(iso(float(h.get('time', 0) or 0)))}</td>"  # type: ignore[arg-type]
            f'<td data-reason="{_e(h.get("gc_reason"))}">{_e(h.get("gc_reason"))}</td>'
            f"<td>{_e(h.get('blobs_deleted'))}</td>"
            f"<td>{_e(human_bytes(int(h.get('bytes_reclaimed', 0) or 0)))}</td>"  # type: ignore[call-overload]
            f"<td>{_e(h.get('tags_deleted'))}</td></tr>"
        )
    out.append("</tbody></table>")
    return out
