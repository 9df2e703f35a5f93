"""Runs a command with a loaded configuration: locking, loop, signals, summary, metrics."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from registry_janitor import html_report, listener, metrics, report
from registry_janitor.backends import open_storage, store_missing
from registry_janitor.config import Config
from registry_janitor.lock import LockHeld, SweepLock
from registry_janitor.output import Output, human_duration, setup_logging
from registry_janitor.records import SweepStats, VerifyStats
from registry_janitor.summary import summary, verify_summary
from registry_janitor.sweep import Janitor, warn_blobdescriptor
from registry_janitor.verify import Verifier

log = logging.getLogger("registry_janitor")

EXIT_OK, EXIT_FAILED = 0, 1


def _install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        # Only sets a flag: the tag operation in progress finishes, the next does not start.
        log.warning(
            "received %s: stopping after the current operation", signal.Signals(signum).name
        )
        # Safe in a handler because the main thread never blocks inside the event's own
        # methods (see _sleep): set() would otherwise wait forever for the lock wait() holds.
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _sleep(stop: threading.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `stop`; True if it was set.

    Polls with time.sleep instead of stop.wait(): a signal handler calling stop.set() while
    the main thread sits in stop.wait() deadlocks on the event's lock (hung a CI run).
    """
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, 0.2))
    return True


def _describe(command: str, cfg: Config) -> str:
    rule = cfg.policy.default
    parts = [
        f"keep {rule.keep_last_n} per repository",
        f"min age {rule.keep_min_age} s",
        f"protect {rule.protect_tags.pattern!r}" if rule.protect_tags else "",
        f"keep pulled within {rule.keep_pulled_within} s" if rule.keep_pulled_within else "",
        f"keep last {rule.keep_last_pulled} pulled" if rule.keep_last_pulled else "",
        f"{len(cfg.policy.rules)} policy rules" if cfg.policy.rules else "",
        "unlink unreachable manifests" if cfg.gc_delete_untagged else "keep untagged manifests",
        f"gc engine {cfg.gc_engine}" if command != "prune" and cfg.run_gc else "",
        "DRY RUN" if cfg.dry_run else "",
    ]
    return f"{command} started on {cfg.store}: {', '.join(p for p in parts if p)}"


def _store_missing(cfg: Config, out: Output) -> bool:
    """True (and says why) when there is no registry store to work on (backends.py).

    Checked before anything is written, the lock file included.
    """
    why = store_missing(cfg)
    if why is None:
        return False
    out.emit("no_store", why, level=logging.ERROR, store=cfg.store)
    return True


def _gc_due(cfg: Config, janitor: Janitor, out: Output) -> int:
    """Decided by the janitor alone: the deployment's wrapper opens a read-only window only
    when this says so."""
    if not cfg.run_gc:
        reason, due = "RUN_GC is false", False
    elif cfg.gc_engine == "janitor":
        reason, due = "the janitor engine collects during every sweep", False
    elif janitor.gc_pending():
        reason, due = "a prune removed something garbage-collect has not collected yet", True
    else:
        reason, due = "nothing removed since the last garbage-collect", False
    out.emit("gc_due", f"gc {'due' if due else 'not due'}: {reason}", due=due, reason=reason)
    return EXIT_OK if due else EXIT_FAILED


def _lock(command: str, cfg: Config, out: Output, stop: threading.Event) -> SweepLock | None:
    """The janitor's lock, taken; None (and said why) when it cannot be had."""

    def waiting(holder: str) -> None:
        out.emit(
            "lock_wait",
            f"waiting for the running {holder} to finish (lock {cfg.lock_file})",
            holder=holder,
            lock_file=str(cfg.lock_file),
        )

    lock = SweepLock(cfg.lock_file, command, stop=stop, on_wait=waiting)
    try:
        return lock.__enter__()
    except LockHeld as exc:
        out.emit("locked", str(exc), level=logging.ERROR, lock_file=str(cfg.lock_file))
    except OSError as exc:  # e.g. a read-only mount: nothing could be changed anyway
        msg = f"cannot open lock file {cfg.lock_file}: {exc.strerror or exc}"
        out.emit("lock_failed", msg, level=logging.ERROR, lock_file=str(cfg.lock_file))
    return None


def _once(command: str, cfg: Config, janitor: Janitor, out: Output) -> int:
    stats = SweepStats(command=command, dry_run=cfg.dry_run)
    if _store_missing(cfg, out):
        return EXIT_FAILED
    if command == "gc-due":
        return _gc_due(cfg, janitor, out)
    out.emit(
        "started",
        _describe(command, cfg),
        command=command,
        data_dir=str(cfg.data_dir),
        store=cfg.store,
    )
    with ExitStack() as stack:
        if not cfg.dry_run:  # a dry run changes nothing: it neither needs nor creates the lock
            lock = _lock(command, cfg, out, janitor.stop)
            if lock is None:
                return EXIT_FAILED
            stack.push(lock)
        try:
            janitor.sweep(
                stats,
                run_prune=command in ("sweep", "prune"),
                run_gc=command == "gc" or (command == "sweep" and cfg.run_gc),
            )
        except Exception:  # a failed sweep is reported; in loop mode the next one runs
            log.exception("%s failed", command)
            stats.errors += 1
    line = summary(stats, command, revision_grace=cfg.revision_grace, gc_grace=cfg.gc_grace)
    fields = {"command": command, "ok": stats.ok, **vars(stats)}
    out.record("summary", line, fields, logging.INFO if stats.ok else logging.ERROR)
    if cfg.metrics_file is not None and not cfg.dry_run:
        try:
            metrics.write(cfg.metrics_file, stats, command=command)
        except OSError as exc:
            log.error("cannot write metrics file %s: %s", cfg.metrics_file, exc)
        _write_page(command, cfg, janitor, stats)
    return EXIT_OK if stats.ok else EXIT_FAILED


def _write_page(command: str, cfg: Config, janitor: Janitor, stats: SweepStats) -> None:
    """The history line and the HTML report beside the metrics file. Read-only on the
    store, after the lock is released; a failure here is logged, never the sweep's."""
    assert cfg.metrics_file is not None
    try:
        html_report.record_sweep(html_report.history_file(cfg.metrics_file), stats, time.time())
        if command != "gc":  # the registry engine's prune wrote it just before
            storage = open_storage(cfg)  # the sweep closed its own
            try:
                page = html_report.build(cfg, storage, janitor.pool)
            finally:
                storage.close()
            html_report.write(html_report.page_file(cfg.metrics_file), page)
    except Exception as exc:  # noqa: BLE001 the page is a convenience: never fail a sweep over it
        log.error("cannot write the HTML report beside %s: %s", cfg.metrics_file, exc)


def _verify(cfg: Config, out: Output, pool: ThreadPoolExecutor, stop: threading.Event) -> int:
    if _store_missing(cfg, out):
        return EXIT_FAILED
    interval = "never" if cfg.verify_interval is None else human_duration(cfg.verify_interval)
    out.emit(
        "started",
        f"verify started on {cfg.store}: budget {cfg.verify_budget}, blobs hashed again"
        f" {interval if interval == 'never' else 'after ' + interval}"
        f"{', DRY RUN' if cfg.dry_run else ''}",
        command="verify",
        data_dir=str(cfg.data_dir),
        store=cfg.store,
    )
    stats = VerifyStats(dry_run=cfg.dry_run)
    with ExitStack() as stack:
        if not cfg.dry_run:  # a dry run moves nothing and records nothing
            lock = _lock("verify", cfg, out, stop)
            if lock is None:
                return EXIT_FAILED
            stack.push(lock)
        # A corrupt blob moved away is uploaded again by the next push only if the registry
        # does not cache that it exists.
        warn_blobdescriptor(cfg.registry_config, out)
        try:
            Verifier(cfg, out, pool, stop).run(stats)
        except Exception:
            log.exception("verify failed")
            stats.errors += 1
    fields = {"command": "verify", "ok": stats.ok, **vars(stats)}
    out.record(
        "summary", verify_summary(stats), fields, logging.INFO if stats.ok else logging.ERROR
    )
    if cfg.metrics_file is not None and not cfg.dry_run:
        path = metrics.verify_file(cfg.metrics_file)
        try:
            metrics.write_verify(path, stats)
        except OSError as exc:
            log.error("cannot write metrics file %s: %s", path, exc)
    return EXIT_OK if stats.ok else EXIT_FAILED


def run(command: str, cfg: Config, *, as_json: bool, verbose: bool, html: str | None = None) -> int:
    setup_logging(as_json=as_json, verbose=verbose)
    out = Output(as_json=as_json)
    stop = threading.Event()
    if command == "listen":
        assert cfg.listen is not None  # config.load sets it for this command
        _install_signal_handlers(stop)
        try:
            listener.serve(cfg.listen, stop)
        except OSError as exc:
            out.emit("listen_failed", f"cannot listen: {exc}", level=logging.ERROR)
            return EXIT_FAILED
        return EXIT_OK
    if command == "check":
        if _store_missing(cfg, out):
            return EXIT_FAILED
        out.emit("store_ok", f"store ready: {cfg.store}", store=cfg.store)
        return EXIT_OK
    with ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="io") as pool:
        if command == "report":  # read-only: Ctrl-C may interrupt it anywhere
            if _store_missing(cfg, out):
                return EXIT_FAILED
            storage = open_storage(cfg)
            try:
                if html:
                    page = html_report.build(cfg, storage, pool)
                    try:
                        html_report.write(Path(html), page)
                    except OSError as exc:
                        msg = f"cannot write {html}: {exc.strerror or exc}"
                        out.emit("report_failed", msg, level=logging.ERROR, path=html)
                        return EXIT_FAILED
                    out.emit("report_written", f"report written to {html}", path=html)
                else:
                    report.run(
                        storage,
                        pool,
                        out,
                        sys.stdout,
                        registry_log=cfg.registry_log,
                        policy=cfg.policy,
                        journal=cfg.notifications_journal,
                        pending_urls=cfg.notifications_pending_urls,
                    )
            finally:
                storage.close()
            return EXIT_OK
        _install_signal_handlers(stop)
        if command == "verify":
            return _verify(cfg, out, pool, stop)
        loop = command == "sweep" and not cfg.run_once
        status = EXIT_OK
        while True:
            # Fresh reader each time: blobs may be gone after a GC, the cache must not outlive it.
            status = _once(command, cfg, Janitor(cfg, out, pool, stop), out)
            if not loop or stop.is_set():
                break
            log.info("next sweep in %d s", cfg.interval_secs)
            started = time.monotonic()
            if _sleep(stop, cfg.interval_secs):
                log.info("stopped after %.0f s of waiting", time.monotonic() - started)
                break
        return status
