"""The one table: figures, target ratios from the benchmark issue, met / not met.

Every row can carry the load average (1 min) of the machine while its figure was taken: the
benchmarks share 2 cores with other work, so a figure means little without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

SMOKE_STATUS = "n/a at smoke size"


@dataclass
class Row:
    figure: str
    value: str
    target: str = ""
    met: bool | None = None  # None: information only
    load: str = ""  # load average(s) while the figure was taken
    note: str = ""  # qualifies the status, e.g. "extrapolated"
    na: bool = False  # a target that means nothing at this size

    @property
    def status(self) -> str:
        if self.met is None:
            return ""
        if self.na:
            return SMOKE_STATUS
        text = "met" if self.met else "NOT MET"
        return f"{text} ({self.note})" if self.note else text

    @property
    def is_check(self) -> bool:
        """A correctness check (target 0 of something broken): it counts at every size."""
        return self.target == "0"


def ratio_row(
    figure: str,
    num: float,
    den: float,
    *,
    at_most: float | None = None,
    at_least: float | None = None,
    load: str = "",
    note: str = "",
) -> Row:
    if den <= 0:
        return Row(figure, "n/a", load=load)
    r = num / den
    if at_most is not None:
        return Row(figure, f"{r:.2f}x", f"<= {at_most:g}x", r <= at_most, load, note)
    if at_least is not None:
        return Row(figure, f"{r:.2f}x", f">= {at_least:g}x", r >= at_least, load, note)
    return Row(figure, f"{r:.2f}x", load=load, note=note)


def check_row(figure: str, bad: int, of: int | None = None, *, what: str = "") -> Row:
    """A correctness check: `bad` things wrong (0 expected)."""
    value = f"{bad}" + (f" of {of}" if of is not None else "") + (f" {what}" if what else "")
    return Row(figure, value, "0", bad == 0)


def for_smoke(rows: list[Row]) -> list[Row]:
    """At smoke size the ratios are not measurements: only correctness checks keep a status."""
    return [r if r.is_check or r.met is None else replace(r, na=True) for r in rows]


def load_now() -> float:
    return os.getloadavg()[0]


def loads(*values: float) -> str:
    """Load averages taken at the start and end of the runs behind a figure."""
    return "-".join(f"{v:.1f}" for v in values)


def secs(v: float) -> str:
    return f"{v:.2f} s" if v < 100 else f"{v:,.0f} s"


def mib(kb: int) -> str:
    return f"{kb / 1024:.0f} MiB"


HEADS = ("figure", "value", "target", "status", "load")


def _cells(r: Row) -> tuple[str, str, str, str, str]:
    return (r.figure, r.value, r.target, r.status, r.load)


def text_table(rows: list[Row], title: str) -> str:
    cells = [HEADS] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADS))]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [title, line]
    for i, c in enumerate(cells):
        out.append(" | ".join(c[k].ljust(widths[k]) for k in range(len(HEADS))).rstrip())
        if i == 0:
            out.append(line)
    out.append(line)
    return "\n".join(out)


def markdown_table(rows: list[Row]) -> str:
    out = ["| " + " | ".join(HEADS) + " |", "|" + " --- |" * len(HEADS)]
    for r in rows:
        out.append("| " + " | ".join(_cells(r)) + " |")
    return "\n".join(out)
