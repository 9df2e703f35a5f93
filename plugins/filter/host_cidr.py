"""CIDR filters for the host role's firewall, on the standard library's ipaddress.

ansible.utils' ipaddr filters need the netaddr library on the controller, which the
project does not install; these three cover what the firewall needs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network(value: Any) -> Network:
    """Parse one CIDR (a bare address is a /32 or /128); raise ValueError when malformed."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not a CIDR string")
    return ipaddress.ip_network(value.strip(), strict=True)


def host_invalid_cidrs(values: Iterable[Any]) -> list[str]:
    """Each malformed entry with the reason, e.g. "10.0.0.0/33 (... prefix ...)"; [] if all good."""
    problems = []
    for value in values:
        try:
            _network(value)
        except ValueError as error:
            problems.append(f"{value} ({error})")
    return problems


def host_cidrs_of_family(values: Iterable[Any], version: int) -> list[str]:
    """The entries of one IP version (4 or 6), normalised (203.0.113.7 -> 203.0.113.7/32)."""
    networks = [_network(value) for value in values]
    return [str(network) for network in networks if network.version == int(version)]


def host_cidrs_contain(values: Iterable[Any], address: str) -> bool:
    """Whether an address (IPv4-mapped IPv6 counts as IPv4) lies in one of the CIDRs."""
    ip = ipaddress.ip_address(address.strip().split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in _network(value) for value in values)


class FilterModule:
    """Ansible's entry point for the filters above."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        return {
            "host_invalid_cidrs": host_invalid_cidrs,
            "host_cidrs_of_family": host_cidrs_of_family,
            "host_cidrs_contain": host_cidrs_contain,
        }
