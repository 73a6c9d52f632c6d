"""Figures of clients side by side, their ratios, and goals judged on them.

bench/bench_clients.py measures every client on every source in turns, run
after run. `Figures` holds each value by (source, client, figure) and run,
so that a ratio is taken pair by pair: run i of cachefs over run i of the
best peer (the best of run i), and the ratio reported is the median of
those. A `Goal` is a target on such a ratio (or on a plain figure), judged
`met` or `missed`; `goals_table` prints them.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from .report import fmt_number, format_table


class Better(Enum):
    """Which way a figure improves."""

    HIGHER = "higher"
    LOWER = "lower"

    def best(self, values: Iterable[float]) -> float:
        return max(values) if self is Better.HIGHER else min(values)


Runs = dict[int, float]


@dataclass
class Figures:
    """Measured values by (source, client, figure), each a run number -> value."""

    values: dict[tuple[str, str, str], Runs] = field(default_factory=dict)

    def add(self, source: str, client: str, figure: str, run: int, value: float) -> None:
        self.values.setdefault((source, client, figure), {})[run] = value

    def runs(self, source: str, client: str, figure: str) -> Runs:
        return self.values.get((source, client, figure), {})

    def median(self, source: str, client: str, figure: str) -> float | None:
        return median_of(self.runs(source, client, figure))

    def best_per_run(self, source: str, clients: Sequence[str], figure: str,
                     better: Better) -> tuple[Runs, str | None]:
        """The best value among `clients` in each run, and the client best by
        median (None when none of them was measured)."""
        per_client = {c: self.runs(source, c, figure) for c in clients}
        per_client = {c: r for c, r in per_client.items() if r}
        if not per_client:
            return {}, None
        runs: Runs = {}
        for run in sorted({r for v in per_client.values() for r in v}):
            runs[run] = better.best(v[run] for v in per_client.values() if run in v)
        medians = {c: median_of(r) for c, r in per_client.items()}
        best = (max if better is Better.HIGHER else min)(
            medians, key=lambda c: medians[c] or 0.0)
        return runs, best


def median_of(runs: Runs) -> float | None:
    return statistics.median(runs.values()) if runs else None


def paired_ratio(mine: Runs, theirs: Runs) -> float | None:
    """The median over the runs both have of mine[run] / theirs[run]."""
    ratios = [mine[r] / theirs[r] for r in mine if r in theirs and theirs[r] > 0]
    return statistics.median(ratios) if ratios else None


class Verdict(Enum):
    MET = "met"
    MISSED = "missed"
    UNKNOWN = "not measured"


@dataclass(frozen=True)
class Goal:
    """A target on one measured value (a ratio, or a figure in its unit)."""

    text: str
    target: float
    at_least: bool  # met when measured >= target; else when measured <= target
    measured: float | None
    unit: str = "x"  # "x" for a ratio
    detail: str = ""  # what it was measured against

    @property
    def verdict(self) -> Verdict:
        if self.measured is None:
            return Verdict.UNKNOWN
        ok = self.measured >= self.target if self.at_least else self.measured <= self.target
        return Verdict.MET if ok else Verdict.MISSED

    def target_text(self) -> str:
        sign = ">=" if self.at_least else "<="
        return f"{sign} {_value_text(self.target, self.unit)}"


def _value_text(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "x":
        return f"{value:.2f}x"
    digits = 2 if abs(value) < 10 else 0
    return f"{fmt_number(value, digits)} {unit}"


def goals_table(goals: Sequence[Goal]) -> str:
    """One line per goal: measured, target, verdict, and what it was measured against."""
    rows = [[g.text, _value_text(g.measured, g.unit), g.target_text(), g.verdict.value, g.detail]
            for g in goals]
    counts = {v: sum(1 for g in goals if g.verdict is v) for v in Verdict}
    table = format_table(["goal (issue 17)", "measured", "target", "verdict", "against"], rows)
    tally = (f"{counts[Verdict.MET]} met, {counts[Verdict.MISSED]} missed"
             + (f", {counts[Verdict.UNKNOWN]} not measured" if counts[Verdict.UNKNOWN] else ""))
    return f"{table}\n{tally}"
