"""The one table: figures, target ratios from the benchmark issue, met / not met."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    figure: str
    value: str
    target: str = ""
    met: bool | None = None  # None: information only

    @property
    def status(self) -> str:
        if self.met is None:
            return ""
        return "met" if self.met else "NOT MET"


def ratio_row(
    figure: str,
    num: float,
    den: float,
    *,
    at_most: float | None = None,
    at_least: float | None = None,
) -> Row:
    if den <= 0:
        return Row(figure, "n/a")
    r = num / den
    if at_most is not None:
        return Row(figure, f"{r:.2f}x", f"<= {at_most:g}x", r <= at_most)
    if at_least is not None:
        return Row(figure, f"{r:.2f}x", f">= {at_least:g}x", r >= at_least)
    return Row(figure, f"{r:.2f}x")


def secs(v: float) -> str:
    return f"{v:.2f} s" if v < 100 else f"{v:.0f} s"


def mib(kb: int) -> str:
    return f"{kb / 1024:.0f} MiB"


def text_table(rows: list[Row], title: str) -> str:
    heads = ("figure", "value", "target", "status")
    cells = [heads] + [(r.figure, r.value, r.target, r.status) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    line = "+".join("-" * (w + 2) for w in widths)
    out = [title, line]
    for i, c in enumerate(cells):
        out.append(" | ".join(c[k].ljust(widths[k]) for k in range(4)).rstrip())
        if i == 0:
            out.append(line)
    out.append(line)
    return "\n".join(out)


def markdown_table(rows: list[Row]) -> str:
    out = ["| figure | value | target | status |", "| --- | --- | --- | --- |"]
    for r in rows:
        out.append(f"| {r.figure} | {r.value} | {r.target} | {r.status} |")
    return "\n".join(out)
