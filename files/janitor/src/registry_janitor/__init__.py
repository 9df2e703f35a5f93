"""Retention and safe garbage collection for a CNCF Distribution registry."""

__version__ = "0.1.0"
