"""Prometheus text-format metrics for node_exporter's textfile collector.

Written atomically (temp file in the same directory, then os.replace) so the collector never
reads half a file. `_total` counters survive one-shot runs: each write adds to the values in
the previous file.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from registry_janitor import atomic
from registry_janitor.records import SweepStats, VerifyStats

P = "registry_janitor_"
_SAMPLE = re.compile(r"^([a-z_:][a-z0-9_:]*)(\{[^}]*\})?\s+(\S+)\s*$", re.IGNORECASE)

# name -> (type, help)
METRICS: dict[str, tuple[str, str]] = {
    "last_run_timestamp_seconds": ("gauge", "Unix time the last sweep ended."),
    "last_success_timestamp_seconds": ("gauge", "Unix time the last successful sweep ended."),
    "last_run_success": ("gauge", "1 if the last sweep succeeded, else 0."),
    "sweep_duration_seconds": ("gauge", "Duration of the last sweep, GC included."),
    "gc_duration_seconds": ("gauge", "Duration of the last garbage collection (0 if not run)."),
    "phase_duration_seconds": ("gauge", "Duration of each phase of the last run."),
    "gc_ok": (
        "gauge",
        (
            "1 if the last garbage collection collected (or found nothing to), 0 if it failed"
            " closed and deleted nothing; reason says which (records.GC_REASONS)."
        ),
    ),
    "repositories": ("gauge", "Repositories seen by the last sweep."),
    "tags": ("gauge", "Tags seen by the last sweep."),
    "tags_kept": ("gauge", "Tags kept by the last sweep."),
    "manifests_spared": (
        "gauge",
        "Unreachable manifests the last sweep left linked: not unreachable for long enough yet.",
    ),
    "blobs_marked": ("gauge", "Blobs the last garbage collection found in use."),
    "blobs_spared": (
        "gauge",
        "Unreferenced blobs the last garbage collection left: younger than the grace period.",
    ),
    "sweeps_total": ("counter", "Sweeps run, by result."),
    "tags_deleted_total": ("counter", "Tags deleted."),
    "manifests_unlinked_total": ("counter", "Unreachable manifest revisions unlinked."),
    "blobs_deleted_total": ("counter", "Blobs deleted by garbage collection."),
    "bytes_reclaimed_total": ("counter", "Bytes of blobs deleted by garbage collection."),
    "blobs_restored_total": (
        "counter",
        "Blobs garbage collection held and put back: a manifest pushed meanwhile named them.",
    ),
    "blobs_touched_total": (
        "counter",
        "Garbage candidates kept because the registry's log showed a client asking for them.",
    ),
    "blobs_not_held_total": (
        "counter",
        "Garbage candidates that could not be held (an error on the share): left in place.",
    ),
    "manifest_pulls_total": (
        "counter",
        "Manifest pulls (GET or HEAD answered 200) read from the registry's log, by repository.",
    ),
    "pull_record_coverage_seconds": (
        "gauge",
        "How far back the pull record holds every pull; 0: not usable in the last run.",
    ),
    "notifications_undelivered": (
        "gauge",
        "Notifications the registry held for the janitor's listener; -1: it did not answer.",
    ),
}


def read_previous(path: Path) -> dict[str, float]:
    """Sample values of the previous file, keyed by `name{labels}`."""
    values: dict[str, float] = {}
    try:
        text = path.read_text()
    except OSError:
        return values
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and not line.startswith("#"):
            try:
                values[m.group(1) + (m.group(2) or "")] = float(m.group(3))
            except ValueError:
                continue
    return values


def render(
    stats: SweepStats, previous: dict[str, float], now: float, *, command: str = "sweep"
) -> str:
    result = "success" if stats.ok else "failure"
    samples: dict[str, list[tuple[str, float]]] = {
        "last_run_timestamp_seconds": [("", float(now))],
        "last_success_timestamp_seconds": [
            ("", now if stats.ok else previous.get(P + "last_success_timestamp_seconds", 0.0))
        ],
        "last_run_success": [("", 1.0 if stats.ok else 0.0)],
        "sweep_duration_seconds": [("", stats.duration)],
        "gc_duration_seconds": [("", stats.gc_duration)],
        "repositories": [("", stats.repositories)],
        "tags": [("", stats.tags_seen)],
        "tags_kept": [("", stats.tags_kept)],
        "manifests_spared": [("", stats.manifests_spared)],
        "pull_record_coverage_seconds": [
            ("", max(0.0, now - since) if (since := stats.pulls_covered_since) else 0.0)
        ],
        "manifest_pulls_total": _pulls(stats, previous),
        "notifications_undelivered": (
            [("", float(stats.notifications_undelivered))]
            if stats.notifications_undelivered is not None
            else []
        ),
        "blobs_marked": [("", stats.blobs_marked)],
        "blobs_spared": [("", stats.blobs_spared)],
        "phase_duration_seconds": [
            (f'{{phase="{name}"}}', seconds) for name, seconds in sorted(stats.phases.items())
        ],
    }
    samples["gc_ok"] = [_gc_outcome(stats, previous)]
    counters = {
        "tags_deleted_total": stats.tags_deleted,
        "manifests_unlinked_total": stats.manifests_unlinked,
        "blobs_deleted_total": stats.blobs_deleted,
        "bytes_reclaimed_total": stats.bytes_reclaimed,
        "blobs_restored_total": stats.blobs_restored,
        "blobs_not_held_total": stats.blobs_not_held,
        "blobs_touched_total": stats.blobs_touched,
    }
    for name, value in counters.items():
        samples[name] = [("", previous.get(P + name, 0.0) + value)]
    samples["sweeps_total"] = [
        (
            f'{{result="{r}"}}',
            previous.get(f'{P}sweeps_total{{result="{r}"}}', 0.0)
            + (1 if r == result and command != "gc" else 0),
        )
        for r in ("success", "failure")
    ]
    if command == "gc":
        # A separate `gc` completes the `prune` before it (the deployment runs GC in a
        # read-only window): it keeps that run's figures and adds its own.
        names = ("repositories", "tags", "tags_kept", "manifests_spared")
        for name in (*names, "pull_record_coverage_seconds"):
            samples[name] = [("", previous.get(P + name, 0.0))]
        if P + "notifications_undelivered" in previous:
            samples["notifications_undelivered"] = [("", previous[P + "notifications_undelivered"])]
        samples["sweep_duration_seconds"] = [
            ("", previous.get(P + "sweep_duration_seconds", 0.0) + stats.duration)
        ]
    lines: list[str] = []
    for name, (kind, help_text) in METRICS.items():
        lines += [f"# HELP {P}{name} {help_text}", f"# TYPE {P}{name} {kind}"]
        for labels, sample in samples[name]:
            lines.append(f"{P}{name}{labels} {_fmt(sample)}")
    return "\n".join(lines) + "\n"


def _gc_outcome(stats: SweepStats, previous: dict[str, float]) -> tuple[str, float]:
    """The last GC's outcome: this run's, or, when this run collected nothing (a `prune`
    before the registry engine's `gc`, RUN_GC false), the previous file's, so the series
    says what the last garbage collection did instead of flapping to "not_run"."""
    if stats.gc_ran:
        return f'{{reason="{stats.gc_reason}"}}', 1.0 if stats.gc_ok else 0.0
    for key, value in previous.items():
        if key.startswith(P + "gc_ok{"):
            return key[len(P + "gc_ok") :], value
    return '{reason="not_run"}', 1.0


def _pulls(stats: SweepStats, previous: dict[str, float]) -> list[tuple[str, float]]:
    """Every repository and method counted so far (the previous file's), plus this run's."""
    out: dict[str, float] = {}
    prefix = P + "manifest_pulls_total"
    for key, value in previous.items():
        if key.startswith(prefix + "{"):
            out[key.removeprefix(prefix)] = value
    for repo, methods in stats.pulls_read.items():
        for method, n in methods.items():
            labels = f'{{repository="{_label(repo)}",method="{method}"}}'
            out[labels] = out.get(labels, 0.0) + n
    return sorted(out.items())


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def write(
    path: Path, stats: SweepStats, now: float | None = None, *, command: str = "sweep"
) -> None:
    previous = read_previous(path)
    text = render(stats, previous, time.time() if now is None else now, command=command)
    # 0644: node_exporter usually runs as another user.
    atomic.write_text(path, text, mode=0o644)


# `verify` writes its own file beside the sweep's (registry_janitor_verify.prom next to
# registry_janitor.prom): the two run on their own schedules and neither rewrites the other's
# figures. Every name differs from the sweep's, so the collector can read both.
VERIFY_METRICS: dict[str, tuple[str, str]] = {
    "verify_last_run_timestamp_seconds": ("gauge", "Unix time the last verify run ended."),
    "verify_last_run_success": (
        "gauge",
        "1 if the last verify run found nothing broken and had no errors, else 0.",
    ),
    "verify_duration_seconds": ("gauge", "Duration of the last verify run."),
    "blobs_verified_total": ("counter", "Blobs hashed and found to match their digest."),
    "bytes_verified_total": ("counter", "Bytes of the blobs found to match their digest."),
    "blobs_corrupt_total": ("counter", "Blobs found not to match their digest (quarantined)."),
    "blobs_unverified": (
        "gauge",
        "Blobs whose current content no verify run has hashed yet (after the last run).",
    ),
    "verify_oldest_unverified_age_seconds": (
        "gauge",
        "Age (since written) of the oldest blob no verify run has hashed yet; 0 if none.",
    ),
    "blobs_quarantined": ("gauge", "Entries in the quarantine (blobs moved out as corrupt)."),
    "broken_tags": (
        "gauge",
        "Tags whose image needs a corrupt, quarantined or missing blob (push them again).",
    ),
    "manifests_unreadable": (
        "gauge",
        "Linked manifests that are intact but cannot be parsed (garbage collection waits).",
    ),
}


def verify_file(metrics_file: Path) -> Path:
    return metrics_file.with_name(f"{metrics_file.stem}_verify{metrics_file.suffix}")


def render_verify(stats: VerifyStats, previous: dict[str, float], now: float) -> str:
    oldest = stats.oldest_unverified
    samples: dict[str, float] = {
        "verify_last_run_timestamp_seconds": now,
        "verify_last_run_success": 1.0 if stats.ok else 0.0,
        "verify_duration_seconds": stats.duration,
        "blobs_unverified": stats.unverified,
        "verify_oldest_unverified_age_seconds": max(0.0, now - oldest) if oldest else 0.0,
        "blobs_quarantined": stats.quarantined,
        "broken_tags": len(stats.broken_tags),
        "manifests_unreadable": len(stats.manifests_unreadable),
    }
    counters = {
        "blobs_verified_total": stats.blobs_verified,
        "bytes_verified_total": stats.bytes_verified,
        "blobs_corrupt_total": len(stats.corrupt),
    }
    for name, value in counters.items():
        samples[name] = previous.get(P + name, 0.0) + value
    lines: list[str] = []
    for name, (kind, help_text) in VERIFY_METRICS.items():
        lines += [f"# HELP {P}{name} {help_text}", f"# TYPE {P}{name} {kind}"]
        lines.append(f"{P}{name} {_fmt(samples[name])}")
    return "\n".join(lines) + "\n"


def write_verify(path: Path, stats: VerifyStats, now: float | None = None) -> None:
    text = render_verify(stats, read_previous(path), time.time() if now is None else now)
    atomic.write_text(path, text, mode=0o644)
