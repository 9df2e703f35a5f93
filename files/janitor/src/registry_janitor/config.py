"""Settings: environment variables, overridden by command-line flags, validated up front.

A bad value raises ConfigError before anything on disk is touched; the CLI turns it into one
line on stderr and exit status 2.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from registry_janitor.output import human_bytes, human_duration
from registry_janitor.policy import (
    Policy,
    PolicyError,
    Rule,
    check_rule,
    load_policy,
    parse_duration,
    parse_tag_pattern,
)
from registry_janitor.s3 import S3Settings

ConfigError = PolicyError

# Threads for filesystem I/O. They all go through the mount's one SMB session (the Storage
# Box's limit of 10 connections does not count them); what they buy is requests in flight
# on a slow link, and the benchmarks on a 2 ms filesystem model gain nothing beyond 8.
MAX_CONCURRENCY = 10
GC_ENGINES = ("janitor", "registry")
STORAGES = ("filesystem", "s3")

# S3 credentials: only from the environment or from files, never from flags (a process's
# arguments are visible to every user of the host). The registry's own variables are read
# too, so one env file can serve the registry and the janitor.
S3_ACCESS_KEY_ENV = ("JANITOR_S3_ACCESS_KEY", "REGISTRY_STORAGE_S3_ACCESSKEY")
S3_SECRET_KEY_ENV = ("JANITOR_S3_SECRET_KEY", "REGISTRY_STORAGE_S3_SECRETKEY")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}


# GC_SETTLE's floor, in seconds (see the error in load()). Tests, which pause the collection
# at exact points instead, lower it through the environment; nothing else should.
SETTLE_FLOOR = 2
SETTLE_FLOOR_ENV = "JANITOR_TEST_SETTLE_FLOOR"


@dataclass(frozen=True)
class Setting:
    env: str
    flag: str
    default: str
    help: str
    boolean: bool = False


# One table drives argparse, env lookup and the README: name -> setting.
SETTINGS: dict[str, Setting] = {
    s.flag.removeprefix("--").replace("-", "_"): s
    for s in (
        Setting("KEEP_LAST_N", "--keep-last-n", "10", "tags kept per repository (newest first)"),
        Setting("JANITOR_INTERVAL_SECS", "--interval-secs", "3600", "seconds between sweeps"),
        Setting(
            "GC_DELETE_UNTAGGED",
            "--gc-delete-untagged",
            "true",
            "unlink revisions no remaining tag reaches (index-aware)",
            boolean=True,
        ),
        Setting("RUN_ONCE", "--run-once", "false", "one sweep, then exit", boolean=True),
        Setting("DRY_RUN", "--dry-run", "false", "say what would go; change nothing", boolean=True),
        Setting("JANITOR_DATA_DIR", "--data-dir", "/var/lib/registry", "registry root directory"),
        Setting(
            "JANITOR_REGISTRY_CONFIG",
            "--registry-config",
            "/etc/docker/registry/config.yml",
            "registry config passed to garbage-collect",
        ),
        Setting("JANITOR_REGISTRY_BIN", "--registry-bin", "registry", "registry binary"),
        Setting("RUN_GC", "--run-gc", "true", "run garbage-collect after pruning", boolean=True),
        Setting("KEEP_MIN_AGE", "--keep-min-age", "0", "never delete tags pushed more recently"),
        Setting("PROTECT_TAGS", "--protect-tags", "", "regex; tags it fully matches are kept"),
        Setting(
            "KEEP_PULLED_WITHIN",
            "--keep-pulled-within",
            "0",
            "also keep tags pushed or pulled within this long (0: off; needs the registry's log"
            " or the notification journal)",
        ),
        Setting(
            "KEEP_LAST_PULLED",
            "--keep-last-pulled",
            "0",
            "also keep this many tags per repository, most recently pushed or pulled first"
            " (0: off; needs the registry's log or the notification journal)",
        ),
        Setting(
            "COUNT_HEAD_AS_PULL",
            "--count-head-as-pull",
            "true",
            "a manifest HEAD counts as a pull for the two settings above",
            boolean=True,
        ),
        Setting("JANITOR_POLICY_FILE", "--policy-file", "", "TOML file with per-repository rules"),
        Setting("JANITOR_METRICS_FILE", "--metrics-file", "", "Prometheus textfile to write"),
        Setting(
            "JANITOR_LOCK_FILE",
            "--lock-file",
            "",
            "lock file (default <data dir>/.registry-janitor.lock)",
        ),
        Setting("JANITOR_CONCURRENCY", "--concurrency", "8", "threads for filesystem I/O (1-10)"),
        Setting(
            "GC_ENGINE",
            "--gc-engine",
            "janitor",
            "janitor: collect blobs without stopping pushes; registry: the registry's own"
            " garbage-collect (run it only while the registry is read-only or stopped)",
        ),
        Setting(
            "GC_GRACE",
            "--gc-grace",
            "2h",
            "unreferenced blobs younger than this stay (janitor engine)",
        ),
        Setting(
            "GC_SETTLE",
            "--gc-settle",
            "60s",
            "how long held blobs wait for manifest pushes in flight (janitor engine)",
        ),
        Setting(
            "JANITOR_REGISTRY_LOG",
            "--registry-log",
            "",
            "the registry's log file (info level): blobs clients touched are never held, and"
            " a held blob a client asks for goes back at once (janitor engine)",
        ),
        Setting(
            "JANITOR_NOTIFICATIONS_JOURNAL",
            "--notifications-journal",
            "",
            "the file `listen` appends the registry's notifications to; pull rules read pulls"
            " from it (with or without the registry's log)",
        ),
        Setting(
            "JANITOR_NOTIFICATIONS_PENDING_URLS",
            "--notifications-pending-urls",
            "",
            "comma-separated /debug/vars URLs of every registry that notifies the listener:"
            " the journal counts as complete only when none has a notification for the"
            " endpoint named registry-janitor still queued",
        ),
        Setting(
            "JANITOR_LISTEN_ADDRESS",
            "--listen-address",
            "127.0.0.1:5080",
            "listen: host:port to accept the registry's notifications on",
        ),
        Setting(
            "JANITOR_LISTEN_TOKEN_FILE",
            "--listen-token-file",
            "",
            "listen: file holding the token the registry sends as `Authorization: Bearer`",
        ),
        Setting(
            "REVISION_GRACE",
            "--revision-grace",
            "1h",
            "unreachable manifests stay linked until unreachable this long",
        ),
        Setting(
            "VERIFY_BUDGET",
            "--verify-budget",
            "10m",
            "verify: stop starting blobs after this much data or run time (2GiB, 10m, both"
            " as 2GiB,10m, or unlimited)",
        ),
        Setting(
            "VERIFY_INTERVAL",
            "--verify-interval",
            "30d",
            "verify: hash a verified blob again after this long, with budget left over from"
            " blobs never verified (never: only new blobs)",
        ),
        Setting(
            "JANITOR_STORAGE",
            "--storage",
            "filesystem",
            "filesystem: the store under the data directory; s3: in a bucket (the registry's"
            " s3 driver; needs boto3)",
        ),
        Setting("JANITOR_S3_BUCKET", "--s3-bucket", "", "bucket (storage s3)"),
        Setting(
            "JANITOR_S3_ENDPOINT",
            "--s3-endpoint",
            "",
            "endpoint URL, e.g. https://fsn1.your-objectstorage.com (empty: AWS)",
        ),
        Setting("JANITOR_S3_REGION", "--s3-region", "us-east-1", "region (signs the requests)"),
        Setting(
            "JANITOR_S3_ROOT_DIRECTORY",
            "--s3-root-directory",
            "",
            "key prefix of the store: the registry's storage.s3.rootdirectory",
        ),
        Setting(
            "JANITOR_S3_PATH_STYLE",
            "--s3-path-style",
            "true",
            "path-style requests (endpoint/bucket/key), as the registry 2.8 makes them",
            boolean=True,
        ),
        Setting(
            "JANITOR_S3_VERIFY_TLS",
            "--s3-verify-tls",
            "true",
            "verify the endpoint's TLS certificate (AWS_CA_BUNDLE names extra CAs)",
            boolean=True,
        ),
        Setting(
            "JANITOR_S3_ACCESS_KEY_FILE",
            "--s3-access-key-file",
            "",
            "file holding the access key (or env JANITOR_S3_ACCESS_KEY)",
        ),
        Setting(
            "JANITOR_S3_SECRET_KEY_FILE",
            "--s3-secret-key-file",
            "",
            "file holding the secret key (or env JANITOR_S3_SECRET_KEY; never a flag)",
        ),
    )
}


@dataclass(frozen=True)
class Listen:
    """Where `listen` accepts the registry's notifications and what it asks of them."""

    host: str
    port: int
    token: str = field(repr=False)
    journal: Path


@dataclass(frozen=True)
class Budget:
    """How much one `verify` run may do; None: no limit of that kind."""

    bytes: int | None = None
    seconds: int | None = None

    def __str__(self) -> str:
        parts = [human_bytes(self.bytes)] if self.bytes is not None else []
        parts += [human_duration(self.seconds)] if self.seconds is not None else []
        return " or ".join(parts) or "unlimited"


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kib|mib|gib|tib|kb|mb|gb|tb)")
_DURATION_TEXT = re.compile(r"\d+[smhdw]?")
_SIZE_UNITS = {
    "b": 1,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}


def parse_budget(setting: str, text: str) -> Budget:
    """`2GiB`, `500MB`, `10m` (a duration), `2GiB,10m` (whichever comes first), `unlimited`.

    A size needs its unit with the B (`10m` is ten minutes, `10MiB` ten mebibytes)."""
    value = text.strip().lower()
    if value == "unlimited":
        return Budget()
    error = ConfigError(
        setting,
        "must be a size like 2GiB or 500MB, a duration like 10m or 1h, both (2GiB,10m),"
        f' or unlimited, got "{text}"',
    )
    size: int | None = None
    seconds: int | None = None
    for given in (p.strip() for p in text.split(",")):
        part = given.lower()
        m = _SIZE.fullmatch(part)
        if m is not None and size is None:
            size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
        # Durations in lower case only: `10M` may be meant as megabytes.
        elif m is None and seconds is None and _DURATION_TEXT.fullmatch(given):
            seconds = parse_duration(setting, part)
        else:
            raise error
    if size == 0 or seconds == 0:
        raise error
    return Budget(size, seconds)


def parse_interval(setting: str, text: str) -> int | None:
    """A duration, or `never` (None)."""
    if text.strip().lower() == "never":
        return None
    try:
        return parse_duration(setting, text)
    except ConfigError:
        raise ConfigError(
            setting, f'must be a duration like 7d or 30d, or never, got "{text}"'
        ) from None


@dataclass(frozen=True)
class Config:
    keep_last_n: int
    interval_secs: int
    gc_delete_untagged: bool
    run_once: bool
    dry_run: bool
    data_dir: Path
    registry_config: Path
    registry_bin: str
    run_gc: bool
    keep_min_age: int
    protect_tags: re.Pattern[str] | None
    policy_file: Path | None
    metrics_file: Path | None
    lock_file: Path
    concurrency: int
    policy: Policy
    gc_engine: str = "janitor"
    gc_grace: int = 7200
    gc_settle: int = 60
    revision_grace: int = 3600
    verify_budget: Budget = Budget(seconds=600)
    verify_interval: int | None = 30 * 86400
    s3: S3Settings | None = None  # set: the store is in a bucket, not under data_dir
    registry_log: Path | None = None  # the registry's log file (registry_log.py)
    notifications_journal: Path | None = None  # journal.py
    notifications_pending_urls: tuple[str, ...] = ()  # notifications.undelivered
    listen: Listen | None = None  # set for the `listen` command

    @property
    def store(self) -> str:
        """Where the store is, for messages."""
        return self.s3.describe() if self.s3 is not None else str(self.data_dir)

    @property
    def repositories_dir(self) -> Path:
        return self.data_dir / "docker" / "registry" / "v2" / "repositories"


def parse_bool(setting: str, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(setting, f'must be one of true/false/yes/no/1/0, got "{text}"')


def parse_int(setting: str, text: str, minimum: int, maximum: int | None = None) -> int:
    value = text.strip()
    bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
    if not re.fullmatch(r"[+-]?\d+", value) or not (
        minimum <= int(value) and (maximum is None or int(value) <= maximum)
    ):
        raise ConfigError(setting, f'must be a whole number {bound}, got "{text}"')
    return int(value)


def resolve(flags: Mapping[str, object], env: Mapping[str, str]) -> dict[str, str]:
    """Raw text per setting: flag if given, else environment, else default."""
    raw: dict[str, str] = {}
    for key, s in SETTINGS.items():
        flag = flags.get(key)
        if flag is not None:
            raw[key] = ("true" if flag else "false") if isinstance(flag, bool) else str(flag)
        else:
            raw[key] = env.get(s.env, s.default)
    return raw


def load(
    flags: Mapping[str, object],
    env: Mapping[str, str] | None = None,
    *,
    command: str = "prune",
) -> Config:
    """Build and validate the whole configuration; raises ConfigError on the first bad value.

    `command` matters for one check: when GC will run, the registry config must exist.
    """
    raw = resolve(flags, os.environ if env is None else env)

    def name(key: str) -> str:
        # Name the setting the way the user gave it.
        s = SETTINGS[key]
        return s.flag if flags.get(key) is not None else s.env

    b = {k: parse_bool(name(k), raw[k]) for k, s in SETTINGS.items() if s.boolean}
    keep_last_n = parse_int(name("keep_last_n"), raw["keep_last_n"], 0)
    interval = parse_int(name("interval_secs"), raw["interval_secs"], 1)
    concurrency = parse_int(name("concurrency"), raw["concurrency"], 1, MAX_CONCURRENCY)
    min_age = parse_duration(name("keep_min_age"), raw["keep_min_age"])
    protect = parse_tag_pattern(name("protect_tags"), raw["protect_tags"])

    storage = raw["storage"].strip().lower()
    if storage not in STORAGES:
        raise ConfigError(
            name("storage"), f'must be one of {", ".join(STORAGES)}, got "{raw["storage"]}"'
        )
    s3 = (
        _s3_settings(raw, b, name, env=os.environ if env is None else env)
        if storage == "s3"
        else None
    )
    data_dir = Path(raw["data_dir"])
    journal = Path(raw["notifications_journal"]) if raw["notifications_journal"].strip() else None
    if journal is not None and not journal.parent.is_dir():
        raise ConfigError(
            name("notifications_journal"), f'directory does not exist: "{journal.parent}"'
        )
    pending_urls = tuple(
        u.strip() for u in raw["notifications_pending_urls"].split(",") if u.strip()
    )
    for url in pending_urls:
        if not re.fullmatch(r"https?://[^\s/]+/\S*", url):
            raise ConfigError(
                name("notifications_pending_urls"), f'must be http(s) URLs, got "{url}"'
            )
    listen = _listen(raw, name, journal) if command == "listen" else None
    if s3 is None and listen is None and not data_dir.is_dir():
        raise ConfigError(name("data_dir"), f'directory does not exist: "{data_dir}"')
    registry_config = Path(raw["registry_config"])
    registry_log = Path(raw["registry_log"]) if raw["registry_log"].strip() else None
    if registry_log is not None and not registry_log.parent.is_dir():
        raise ConfigError(
            name("registry_log"), f'directory does not exist: "{registry_log.parent}"'
        )
    gc_will_run = (command == "gc" or (command == "sweep" and b["run_gc"])) and raw[
        "gc_engine"
    ].strip().lower() == "registry"
    if gc_will_run and not registry_config.is_file():
        raise ConfigError(name("registry_config"), f'file does not exist: "{registry_config}"')
    if raw["registry_bin"].strip() == "":
        raise ConfigError(name("registry_bin"), "must not be empty")

    pulled_within = parse_duration(name("keep_pulled_within"), raw["keep_pulled_within"])
    default_rule = Rule(
        keep_last_n=keep_last_n,
        keep_min_age=min_age,
        protect_tags=protect,
        keep_pulled_within=pulled_within or None,
        keep_last_pulled=parse_int(name("keep_last_pulled"), raw["keep_last_pulled"], 0),
        count_head_as_pull=b["count_head_as_pull"],
    )
    check_rule(name("keep_min_age"), default_rule)
    policy_file = Path(raw["policy_file"]) if raw["policy_file"] else None
    policy = load_policy(policy_file, default_rule) if policy_file else Policy(default=default_rule)
    metrics_file = Path(raw["metrics_file"]) if raw["metrics_file"] else None
    if metrics_file is not None and not metrics_file.parent.is_dir():
        raise ConfigError(
            name("metrics_file"), f'directory does not exist: "{metrics_file.parent}"'
        )
    if raw["lock_file"]:
        lock_file = Path(raw["lock_file"])
    elif s3 is not None:  # a lock on this host: one janitor host per bucket (see README)
        lock_file = Path(tempfile.gettempdir()) / f"registry-janitor-{s3.bucket}.lock"
    else:
        lock_file = data_dir / ".registry-janitor.lock"
    if listen is None and not lock_file.parent.is_dir():
        raise ConfigError(name("lock_file"), f'directory does not exist: "{lock_file.parent}"')

    engine = raw["gc_engine"].strip().lower()
    if engine not in GC_ENGINES:
        raise ConfigError(
            name("gc_engine"), f'must be one of {", ".join(GC_ENGINES)}, got "{raw["gc_engine"]}"'
        )
    gc_grace = parse_duration(name("gc_grace"), raw["gc_grace"])
    gc_settle = parse_duration(name("gc_settle"), raw["gc_settle"])
    floor = int(os.environ.get(SETTLE_FLOOR_ENV) or SETTLE_FLOOR)
    if gc_settle < floor:
        raise ConfigError(
            name("gc_settle"),
            f"must be at least {floor}s: a manifest push that found its blobs before they were"
            " held needs that long to link its revision, and a shorter wait deletes blobs of"
            f' an image the registry just accepted; got "{raw["gc_settle"]}"',
        )
    revision_grace = parse_duration(name("revision_grace"), raw["revision_grace"])
    if gc_grace < revision_grace:
        # A blob younger than an unreachable manifest's grace could belong to a push whose
        # manifests are still being linked.
        raise ConfigError(
            name("gc_grace"),
            f"must not be shorter than {name('revision_grace')} ({raw['revision_grace']}),"
            f' got "{raw["gc_grace"]}"',
        )

    verify_budget = parse_budget(name("verify_budget"), raw["verify_budget"])
    verify_interval = parse_interval(name("verify_interval"), raw["verify_interval"])

    return Config(
        keep_last_n=keep_last_n,
        interval_secs=interval,
        gc_delete_untagged=b["gc_delete_untagged"],
        run_once=b["run_once"],
        dry_run=b["dry_run"],
        data_dir=data_dir,
        registry_config=registry_config,
        registry_log=registry_log,
        notifications_journal=journal,
        notifications_pending_urls=pending_urls,
        listen=listen,
        registry_bin=raw["registry_bin"],
        run_gc=b["run_gc"],
        keep_min_age=min_age,
        protect_tags=protect,
        policy_file=policy_file,
        metrics_file=metrics_file,
        lock_file=lock_file,
        concurrency=concurrency,
        policy=policy,
        gc_engine=engine,
        gc_grace=gc_grace,
        gc_settle=gc_settle,
        revision_grace=revision_grace,
        verify_budget=verify_budget,
        verify_interval=verify_interval,
        s3=s3,
    )


def _secret(
    setting_file: str, path: str, names: tuple[str, ...], env: Mapping[str, str]
) -> tuple[str, str]:
    """(value, where it came from) of a credential: the file if one is named, else the first
    environment variable set. The value is never part of an error message."""
    if path:
        try:
            return Path(path).read_text().strip(), setting_file
        except OSError as exc:
            raise ConfigError(
                setting_file, f'cannot read "{path}": {exc.strerror or exc}'
            ) from None
    for var in names:
        if env.get(var, "").strip():
            return env[var].strip(), var
    return "", ""


def _listen(raw: Mapping[str, str], name: Callable[[str], str], journal: Path | None) -> Listen:
    if journal is None:
        raise ConfigError(name("notifications_journal"), "listen needs a journal file")
    m = re.fullmatch(r"\[?([^\s\[\]]+?)\]?:(\d{1,5})", raw["listen_address"].strip())
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise ConfigError(
            name("listen_address"), f'must be host:port, got "{raw["listen_address"]}"'
        )
    token_file = raw["listen_token_file"].strip()
    if not token_file:
        raise ConfigError(name("listen_token_file"), "listen needs a token file")
    try:
        token = Path(token_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            name("listen_token_file"), f'cannot read "{token_file}": {exc.strerror or exc}'
        ) from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ConfigError(
            name("listen_token_file"),
            f'"{token_file}" must hold one token of at least 16 characters, no spaces',
        )
    return Listen(m.group(1), int(m.group(2)), token, journal)


def _s3_settings(
    raw: Mapping[str, str],
    b: Mapping[str, bool],
    name: Callable[[str], str],
    *,
    env: Mapping[str, str],
) -> S3Settings:
    bucket = raw["s3_bucket"].strip()
    if not _BUCKET.fullmatch(bucket):
        raise ConfigError(
            name("s3_bucket"),
            f'must name a bucket (3-63 characters a-z, 0-9, "." and "-"), got "{bucket}"'
            + (" (JANITOR_STORAGE=s3 needs it)" if not bucket else ""),
        )
    endpoint = raw["s3_endpoint"].strip()
    if endpoint and not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", endpoint):
        raise ConfigError(
            name("s3_endpoint"), f'must be an http:// or https:// URL, got "{endpoint}"'
        )
    region = raw["s3_region"].strip()
    if not re.fullmatch(r"[a-z0-9-]+", region):
        raise ConfigError(name("s3_region"), f'must be a region name like fsn1, got "{region}"')
    access, access_from = _secret(
        name("s3_access_key_file"), raw["s3_access_key_file"], S3_ACCESS_KEY_ENV, env
    )
    secret, secret_from = _secret(
        name("s3_secret_key_file"), raw["s3_secret_key_file"], S3_SECRET_KEY_ENV, env
    )
    if bool(access) != bool(secret):
        have, missing = (access_from, "secret key") if access else (secret_from, "access key")
        raise ConfigError(
            have,
            f"the {missing} is missing: set both (JANITOR_S3_ACCESS_KEY and"
            " JANITOR_S3_SECRET_KEY, or their _FILE variants) or neither (boto3's own"
            " credential chain)",
        )
    return S3Settings(
        bucket=bucket,
        endpoint=endpoint.rstrip("/"),
        region=region,
        root_directory=raw["s3_root_directory"].strip().strip("/"),
        path_style=b["s3_path_style"],
        verify_tls=b["s3_verify_tls"],
        access_key=access,
        secret_key=secret,
    )
