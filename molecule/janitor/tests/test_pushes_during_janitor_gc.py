"""Pushes during sweeps with the janitor's own GC (no read-only window): nothing lost or
broken, and pushes are not refused (push_load.py has the whole story)."""

from push_load import hosts_with_engine, run_push_load

testinfra_hosts = hosts_with_engine("janitor")


def test_pushes_during_sweeps_pull_completely(host):
    run_push_load(host)
