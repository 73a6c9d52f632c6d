"""Modes, figures and the containers the measurements go into.

`Results` holds what `cachefs bench` measures: values per mode and figure.
`Series` and `Record` are the plainer containers of the scripts in bench/:
named series of repeated measurements, and the facts beside them.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Mode:
    """One way of reading the files."""

    key: str
    label: str
    # Longer text for the JSON and the chart's legend.
    description: str


COLD = Mode("cold", "cold",
            "cache empty: every byte comes over HTTP (page cache dropped when root)")
WARM_DAEMON = Mode("warm_daemon", "warm, daemon",
                   "cache complete, mounted with --no-passthrough: the daemon serves reads; "
                   "page cache dropped")
WARM_PASSTHROUGH = Mode("warm_passthrough", "warm, passthrough",
                        "cache complete, passthrough: the kernel reads the cache file; page cache dropped")
HOT = Mode("hot", "page cache hot", "read again through the mount with the page cache kept")
OPENED_COLD = Mode("opened_cold", "opened cold",
                   "one handle opened while the large file was absent, read at random while partial, "
                   "then again once complete (compare: page cache hot)")
NATIVE = Mode("native", "native", "the cache files read directly, not through the mount; page cache dropped")

MODES: tuple[Mode, ...] = (COLD, WARM_DAEMON, WARM_PASSTHROUGH, HOT, OPENED_COLD, NATIVE)
MODE_BY_KEY = {m.key: m for m in MODES}


@dataclass(frozen=True)
class Figure:
    """One measured quantity."""

    key: str
    title: str
    unit: str
    higher_is_better: bool
    # Digits shown in the table.
    digits: int = 0
    # The table's first column.
    short: str = ""


SEQ = Figure("seq_mbps", "sequential read of the large file, 1 MiB blocks", "MB/s", True,
             short="sequential read")
RAND = Figure("rand_iops", "4 KiB reads at random offsets of the large file", "reads/s", True,
              short="4 KiB random reads")
SMALL = Figure("small_fps", "small files, each opened, read whole and closed", "files/s", True,
               short="small files")
TTFB = Figure("ttfb_ms", "time to first byte of the large file (open + first 4 KiB)", "ms", False,
              2, short="time to first byte")
RSS = Figure("rss_mib", "daemon peak resident memory (VmHWM)", "MiB", False, 1,
             short="daemon peak RSS")

FIGURES: tuple[Figure, ...] = (SEQ, RAND, SMALL, TTFB, RSS)
FIGURE_BY_KEY = {f.key: f for f in FIGURES}


@dataclass
class Summary:
    """Median, min and max of one figure in one mode."""

    runs: list[float]
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Summary | None:
        if not values:
            return None
        return cls(list(values), statistics.median(values), min(values), max(values))


@dataclass
class Results:
    """Raw values per (mode, figure), and notes on what was skipped or checked."""

    values: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    # Modes or figures left out, and why: (mode key or "", figure key or "") -> reason.
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, mode: Mode, figure: Figure, value: float) -> None:
        self.values.setdefault((mode.key, figure.key), []).append(value)

    def skip(self, mode: Mode | None, figure: Figure | None, reason: str) -> None:
        self.skipped[(mode.key if mode else "", figure.key if figure else "")] = reason

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def summary(self, mode: Mode, figure: Figure) -> Summary | None:
        return Summary.of(self.values.get((mode.key, figure.key), []))

    def skip_reason(self, mode: Mode, figure: Figure) -> str | None:
        for key in ((mode.key, figure.key), (mode.key, ""), ("", figure.key)):
            if key in self.skipped:
                return self.skipped[key]
        return None

    def ratio_to_native(self, mode: Mode, figure: Figure) -> float | None:
        """The mode's median over native's median (both in the figure's unit)."""
        mine, native = self.summary(mode, figure), self.summary(NATIVE, figure)
        if mine is None or native is None or native.median <= 0:
            return None
        return mine.median / native.median


@dataclass
class Series:
    """Repeated measurements of one figure, for the scripts in bench/."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def low(self) -> float | None:
        return min(self.values) if self.values else None

    @property
    def high(self) -> float | None:
        return max(self.values) if self.values else None


@dataclass
class Record:
    """A script's series by key, and everything that is not a timing: checks,
    request counts, daemon log lines (`note` appends to a list per key)."""

    series: dict[str, Series] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def note(self, key: str, value: Any) -> None:
        self.facts.setdefault(key, []).append(value)
