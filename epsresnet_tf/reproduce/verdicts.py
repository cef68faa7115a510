"""Verdicts and the table type every piece's measurement returns."""

from __future__ import annotations

import dataclasses

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
NOT_TESTABLE = "not testable here"
PENDING = "pending"  # the piece's runs have not finished: no verdict yet


@dataclasses.dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]


@dataclasses.dataclass
class Result:
    """A piece's measurement: its tables, the verdict its rule gives and why."""

    tables: list[Table]
    verdict: str
    why: str


def pct(value: float | None, digits: int = 2) -> str:
    """A fraction as a percentage, or "–" when there is none."""
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if value is None else fmt.format(value)


def seconds(value: float | None) -> str:
    """A wall time as h:mm:ss, or "–"."""
    if value is None:
        return "–"
    value = int(round(value))
    return f"{value // 3600}:{value // 60 % 60:02d}:{value % 60:02d}"
