"""Filters for the registry role's pull-through mirrors (registry_mirrors).

`registry_mirrors_resolved` fills in each entry's defaults, so templates and tasks read one
shape; `registry_mirror_problems` lists what is wrong with the entries, one sentence each,
naming registry_mirrors and the entry, for the role's assert (and so the preflight) to
refuse before anything on the host changes. Neither ever puts a password in a message.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
# scheme://host[:port], nothing after it: the registry appends /v2/ to it as it is.
LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
REMOTE_URL = re.compile(rf"^https?://({LABEL}(\.{LABEL})*|\[[0-9A-Fa-f:.]+\])(:[0-9]{{1,5}})?$")
DOCKER_HUB_NAMES = ("docker.io", "www.docker.io", "hub.docker.com")


def registry_mirrors_resolved(
    mirrors: Iterable[Mapping[str, Any]], data_root: str, secrets: bool = False
) -> list[dict[str, Any]]:
    """Each entry with every key present: the defaults of meta/argument_specs.yml, the data
    directory `<data_root>/<name>` unless given, and `service`, its Compose service name.
    Without `secrets` the upstream account is left out (`credentials` says whether there is
    one), so tasks can loop over the entries and print them."""
    resolved = []
    for mirror in mirrors:
        name = str(mirror.get("name", ""))
        entry = {
            "name": name,
            "remote_url": str(mirror.get("remote_url", "")),
            "port": mirror.get("port"),
            "credentials": bool(mirror.get("username") or mirror.get("password")),
            "data_dir": mirror.get("data_dir") or posixpath.join(str(data_root), name),
            "auth": mirror.get("auth", True),
            "share_upstream_account": mirror.get("share_upstream_account", False),
            "ca_certificate": mirror.get("ca_certificate") or "",
            "metrics_port": mirror.get("metrics_port") or 0,
            "service": f"mirror-{name}",
        }
        if secrets:
            entry["username"] = mirror.get("username") or ""
            entry["password"] = mirror.get("password") or ""
        resolved.append(entry)
    return resolved


def _port(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        port = int(value)
    except (TypeError, ValueError):
        return None
    return port if 1 <= port <= 65535 else None


def _overlap(a: str, b: str) -> bool:
    """Same directory, or one inside the other."""
    a, b = posixpath.normpath(a), posixpath.normpath(b)
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def registry_mirror_problems(
    mirrors: Iterable[Mapping[str, Any]],
    data_root: str,
    taken_ports: Mapping[str, Any],
    stores: Mapping[str, Any],
    auth_users: bool = False,
) -> list[str]:
    """Everything wrong with registry_mirrors, one sentence per problem; [] when usable.

    taken_ports: {variable name: port} of the other ports on the host (registry_port, SSH);
    stores: {variable name: directory} of data no mirror may share (registry_data_dir, the
    janitor's data directory): a mirror's store is never swept, and a swept store never
    holds a mirror's data. auth_users: registry_auth_users is set (a mirror with `auth` then
    asks clients to log in).
    """
    mirrors = list(mirrors)
    problems: list[str] = []
    if not isinstance(data_root, str) or not data_root.startswith("/"):
        problems.append(f"registry_mirrors_data_dir must be an absolute path, not {data_root!r}.")
    ports: dict[int, str] = {}
    for variable, value in taken_ports.items():
        port = _port(value)
        if port is not None:
            ports.setdefault(port, variable)
    dirs: dict[str, str] = {}
    for variable, path in stores.items():
        if path:
            # registry_data_dir and janitor_data_dir are usually the same directory.
            dirs[str(path)] = " and ".join(filter(None, [dirs.get(str(path)), variable]))
    names: set[str] = set()
    for index, mirror in enumerate(
        registry_mirrors_resolved(mirrors, str(data_root), secrets=True)
    ):
        name = mirror["name"]
        label = f"registry_mirrors[{index}] ({name or 'no name'})"

        if not NAME.match(name):
            problems.append(
                f"{label}: name must be 1-32 lower-case letters, digits and '-' (not at either"
                " end); it names the Compose service mirror-<name> and the data directory."
            )
        elif name in names:
            problems.append(
                f"{label}: the name {name} is used by an earlier entry; names must be unique."
            )
        names.add(name)

        url = mirror["remote_url"]
        host = re.sub(r"^https?://", "", url).split(":")[0].lower()
        if not REMOTE_URL.match(url):
            problems.append(
                f"{label}: remote_url {url!r} must be http(s)://host[:port] with no path or"
                " trailing slash, e.g. https://registry-1.docker.io."
            )
        elif host in DOCKER_HUB_NAMES:
            problems.append(
                f"{label}: remote_url {url!r} is not a registry API endpoint; Docker Hub's is"
                " https://registry-1.docker.io."
            )

        for key in ("port", "metrics_port"):
            value = mirror[key]
            if key == "metrics_port" and value in (0, "0", None, ""):
                continue
            port = _port(value)
            if port is None:
                problems.append(f"{label}: {key} must be a number from 1 to 65535, not {value!r}.")
            elif port in ports:
                problems.append(
                    f"{label}: {key} {port} is already taken by {ports[port]}; every published"
                    " port must differ."
                )
            else:
                ports[port] = f"{label} {key}"

        username, password = mirror["username"], mirror["password"]
        if not isinstance(username, str) or not isinstance(password, str):
            problems.append(f"{label}: username and password must be strings.")
        elif bool(username) != bool(password):
            problems.append(
                f"{label}: set both username and password (the upstream's account, e.g. a"
                " Docker Hub access token) or neither; only "
                + ("a password" if password else "a username")
                + " is set."
            )
        elif ":" in username:
            problems.append(f"{label}: username must not contain ':'.")

        if not isinstance(mirror["auth"], bool):
            problems.append(f"{label}: auth must be true or false.")
        elif (
            username
            and not (mirror["auth"] and auth_users)
            and mirror["share_upstream_account"] is not True
        ):
            # The mirror pulls with the account for whoever asks it: every repository the
            # account can read, private ones included, is then open to the allowed networks.
            problems.append(
                f"{label}: the upstream account {username!r} would be used for anyone who can"
                " reach this mirror without logging in (auth false, or no registry_auth_users):"
                " every repository it can read, private ones included, becomes pullable from"
                " registry_cache_allowed_cidrs. Use an account that reads only public images"
                " and set share_upstream_account: true to say so, or serve the mirror with"
                " auth (registry_auth_users)."
            )

        data_dir = mirror["data_dir"]
        if not isinstance(data_dir, str) or not data_dir.startswith("/"):
            problems.append(f"{label}: data_dir must be an absolute path, not {data_dir!r}.")
            continue
        for other, variable in dirs.items():
            if _overlap(data_dir, other):
                problems.append(
                    f"{label}: data_dir {data_dir} overlaps {variable} ({other}); each mirror"
                    " needs a directory of its own, outside the push registry's store (the"
                    " janitor's retention must never see a mirror's images)."
                )
        dirs[data_dir] = f"{label} data_dir"
    return problems


def registry_paths_outside(paths: Iterable[Any], root: str) -> list[str]:
    """The paths that are not strictly below `root` as written, or that have '.' or '..'
    components (which could lead out of it)."""
    top = str(root).rstrip("/")
    outside = []
    for path in map(str, paths):
        parts = path.split("/")
        if "." in parts or ".." in parts or not path.rstrip("/").startswith(top + "/"):
            outside.append(path)
    return outside


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "registry_mirrors_resolved": registry_mirrors_resolved,
            "registry_mirror_problems": registry_mirror_problems,
            "registry_paths_outside": registry_paths_outside,
        }
