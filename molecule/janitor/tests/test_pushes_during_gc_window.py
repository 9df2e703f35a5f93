"""Pushes during sweeps with the registry's garbage-collect in its read-only window: writes
are refused, never corrupted, and the journal says for how long (push_load.py has the whole
story). Then, on the same host, pushes during a converge that changes a mirror, a janitor
setting and the firewall: none refused (converge_load.py)."""

from converge_load import run_converge_under_load
from push_load import hosts_with_engine, run_push_load

testinfra_hosts = hosts_with_engine("registry")


def test_pushes_during_sweeps_pull_completely(host):
    run_push_load(host)


def test_pushes_during_a_converge_are_not_refused(host):
    run_converge_under_load(host)
