"""What bench/bench_clients.py reports: its figures, tables and issue 17's goals.

The figures each client gets on each source, how they are shown, the table
per source (medians, cachefs over the best peer and over the reference), the
proxy table, and `issue_goals`: issue 17's goals judged on a `Figures`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .goals import Better, Figures, Goal, paired_ratio
from .peers import Peer
from .report import fmt_number, format_table
from .sources import Source

CACHEFS = "cachefs"
PROXIED = "cachefs-proxy"  # cachefs with --proxy through tinyproxy
PROXY_SOURCES = ("http", "https")  # HTTPS goes through the proxy with CONNECT


@dataclass(frozen=True)
class Shown:
    """How a figure is shown and compared."""

    title: str
    unit: str
    better: Better
    digits: int


FIGURES: dict[str, Shown] = {
    "mount": Shown("mount until it lists", "s", Better.LOWER, 2),
    "ls_cold": Shown("ls -lR cold", "s", Better.LOWER, 3),
    "ls_warm": Shown("ls -lR warm", "s", Better.LOWER, 3),
    "small_cold": Shown("small files cold", "files/s", Better.HIGHER, 0),
    "small_warm": Shown("small files warm", "files/s", Better.HIGHER, 0),
    "big_cold": Shown("big file cold", "MB/s", Better.HIGHER, 0),
    "cpu_file": Shown("CPU per small file", "ms", Better.LOWER, 2),
    "cpu_mb": Shown("CPU per MB, big cold", "ms", Better.LOWER, 2),
    "rss": Shown("peak RSS", "MiB", Better.LOWER, 0),
}
# The reference beside a figure: native reads of the source files, or curl.
REFERENCE = {"small_warm": "native", "big_cold": "curl"}
MOUNT_TARGET_S = 0.3
RSS_TARGET_MIB = 70.0


def source_table(fig: Figures, source: Source, clients: list[str]) -> str:
    """Figures by client, with cachefs over the best peer and over the reference."""
    peers = [c for c in clients if c != CACHEFS]
    rows = []
    for key, shown in FIGURES.items():
        title, unit, better, digits = shown.title, shown.unit, shown.better, shown.digits
        ref = REFERENCE.get(key)
        cells = [f"{title} ({unit})"]
        cells += [fmt_number(fig.median(source.name, c, key), digits)
                  if fig.runs(source.name, c, key) else "-" for c in clients]
        cells.append(f"{ref} {fmt_number(fig.median(source.name, ref, key), digits)}"
                     if ref and fig.runs(source.name, ref, key) else "")
        mine = fig.runs(source.name, CACHEFS, key)
        best, name = fig.best_per_run(source.name, peers, key, better)
        vs_best = paired_ratio(mine, best)
        cells.append(f"{vs_best:.2f}x {name}" if vs_best is not None else "")
        vs_ref = paired_ratio(mine, fig.runs(source.name, ref, key)) if ref else None
        cells.append(f"{vs_ref:.2f}x" if vs_ref is not None else "")
        rows.append(cells)
    head = ["figure", *clients, "reference", "cachefs/best peer", "cachefs/ref"]
    return f"{source.label}\n\n{format_table(head, rows)}"


def proxy_table(fig: Figures, sources: list[str]) -> str:
    rows = []
    for src in sources:
        for client, key, what in ((CACHEFS, "small_cold", "cachefs small files cold (files/s)"),
                                  ("curl", "small_cold", "curl small files, the ceiling (files/s)"),
                                  (CACHEFS, "big_cold", "cachefs big file cold (MB/s)"),
                                  ("curl", "big_cold", "curl, the ceiling (MB/s)")):
            through = PROXIED if client == CACHEFS else "curl-proxy"
            rows.append([f"{src}: {what}", fmt_number(fig.median(src, client, key)),
                         fmt_number(fig.median(src, through, key)),
                         ratio_text(paired_ratio(fig.runs(src, through, key), fig.runs(src, client, key)))])
    return ("Through tinyproxy (cachefs --proxy, curl --proxy)\n\n"
            + format_table(["figure", "direct", "through tinyproxy", "proxy/direct"], rows))


def ratio_text(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio is not None else "n/a"


def issue_goals(fig: Figures, sources: list[Source], peers: list[Peer], proxied: bool) -> list[Goal]:
    """Issue 17's goals, judged on what this run measured."""
    out: list[Goal] = []
    names = [s.name for s in sources]

    def vs_best(src: str, key: str, target: float, at_least: bool, text: str) -> None:
        better = FIGURES[key].better
        others = [p.name for p in peers if src in p.sources]
        if not others:
            return  # cachefs alone (--add none): nothing to judge against
        best, who = fig.best_per_run(src, others, key, better)
        out.append(Goal(text, target, at_least, paired_ratio(fig.runs(src, CACHEFS, key), best),
                        detail=f"best peer: {who}" if who else "no peer measured"))

    for src in names:
        if src in ("http", "s3"):
            vs_best(src, "small_cold", 2.0, True, f"small files cold, {src}: cachefs / best peer")
    for src in names:
        vs_best(src, "ls_cold", 0.5, False, f"ls -lR cold, {src}: cachefs / best peer (time)")
        vs_best(src, "ls_warm", 1.0, False, f"ls -lR warm, {src}: cachefs / best peer (time)")
    for src in names:
        out.append(Goal(f"small files warm, {src}: cachefs passthrough / native", 0.8, True,
                        paired_ratio(fig.runs(src, CACHEFS, "small_warm"),
                                     fig.runs(src, "native", "small_warm")),
                        detail="native reads, page cache dropped"))
    for src in names:
        vs_best(src, "big_cold", 2.0, True, f"big file cold, {src}: cachefs / best peer")
        out.append(Goal(f"big file cold, {src}: cachefs / curl to a file", 0.6, True,
                        paired_ratio(fig.runs(src, CACHEFS, "big_cold"),
                                     fig.runs(src, "curl", "big_cold")), detail="curl -o FILE"))
    if "http" in names and "https" in names:
        for key, what in (("big_cold", "big file cold"), ("small_cold", "small files cold")):
            out.append(Goal(f"HTTPS / HTTP, {what}", 0.8, True,
                            paired_ratio(fig.runs("https", CACHEFS, key),
                                         fig.runs("http", CACHEFS, key)), detail="cachefs"))
    for src in (n for n in names if proxied and n in PROXY_SOURCES):
        for key, what in (("big_cold", "big file cold"), ("small_cold", "small files cold")):
            out.append(Goal(f"through tinyproxy / direct, {src}, {what}", 0.8, True,
                            paired_ratio(fig.runs(src, PROXIED, key),
                                         fig.runs(src, CACHEFS, key)), detail="cachefs --proxy"))
    for src in names:
        out.append(Goal(f"mount until it lists, {src}", MOUNT_TARGET_S, False,
                        fig.median(src, CACHEFS, "mount"), unit="s", detail="cachefs"))
    for src in names:
        out.append(Goal(f"daemon peak RSS, {src}", RSS_TARGET_MIB, False,
                        fig.median(src, CACHEFS, "rss"), unit="MiB", detail="cachefs"))
    return out
