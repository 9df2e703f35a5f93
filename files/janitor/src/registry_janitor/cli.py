"""Command line: parse flags, load the configuration, dispatch to a command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from registry_janitor import __version__, config

PROG = "registry-janitor"
COMMANDS = ("sweep", "prune", "gc", "gc-due", "report", "verify", "check", "listen")
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit 2 like every other config error."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{PROG}: {message}\n")
        sys.exit(EXIT_CONFIG)


def _options() -> _Parser:
    # SUPPRESS defaults: a flag given before or after the subcommand both count, and "not
    # given" stays distinguishable from a value so the environment can fill it in.
    p = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    for key, s in config.SETTINGS.items():
        help_text = f"{s.help} (env {s.env}, default {s.default or 'none'})"
        if s.boolean:
            p.add_argument(s.flag, dest=key, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            p.add_argument(s.flag, dest=key, metavar=s.env, help=help_text)
    p.add_argument("--json", action="store_true", help="one JSON object per event on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def build_parser() -> argparse.ArgumentParser:
    options = _options()
    parser = _Parser(
        prog=PROG,
        parents=[options],
        argument_default=argparse.SUPPRESS,
        description="Retention and safe garbage collection for a Distribution registry.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    helps = {
        "sweep": "prune, then collect garbage (default; loops unless RUN_ONCE)",
        "prune": "apply retention, unlink unreachable revisions, remove leftovers; no GC",
        "gc": "collect garbage only (GC_ENGINE decides how)",
        "gc-due": "exit 0 when a `gc` would run now (registry engine: after a prune removed"
        " something), 1 otherwise; for wrappers that stop writes around it",
        "report": "per repository: tags, push times, unique and shared bytes",
        "verify": "hash stored blobs against their digests within VERIFY_BUDGET, move corrupt"
        " ones into the quarantine and name the tags they break; exit 1 when something is"
        " broken",
        "check": "exit 0 when the store is there (the data directory's store, or the bucket"
        " answers), 1 with the reason otherwise; changes nothing (the registry unit's start-up"
        " check)",
        "listen": "accept the registry's notifications (JANITOR_LISTEN_ADDRESS, a bearer token"
        " from JANITOR_LISTEN_TOKEN_FILE) and append them to JANITOR_NOTIFICATIONS_JOURNAL,"
        " where pull rules read them",
    }
    for name in COMMANDS:
        cmd = sub.add_parser(name, parents=[options], help=helps[name], description=helps[name])
        if name == "report":
            cmd.add_argument(
                "--html",
                metavar="PATH",
                help="write a static HTML page (usage, tag ages, the next sweep's deletions,"
                " GC history, the store's fill) to PATH instead of the table",
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    command = str(args.pop("command", None) or "sweep")
    as_json = bool(args.pop("json", False))
    verbose = bool(args.pop("verbose", False))
    html = args.pop("html", None)
    try:
        cfg = config.load(args, command=command)
    except config.ConfigError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_CONFIG
    from registry_janitor import app  # imported late: config errors need none of it

    try:
        return app.run(command, cfg, as_json=as_json, verbose=verbose, html=html)
    except KeyboardInterrupt:  # only `report` lets Ctrl-C through; sweeps stop cleanly
        return 130
