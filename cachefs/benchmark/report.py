"""The benchmark's outputs in text: the table printed on stdout and the JSON file.

`format_table`, `fmt_number`, `host_info` and `emit_report` serve the scripts
in bench/ too.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .model import FIGURE_BY_KEY, FIGURES, MODE_BY_KEY, MODES, NATIVE, Figure, Mode, Results


def host_info() -> dict[str, Any]:
    """What the figures depend on besides cachefs."""
    info: dict[str, Any] = {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "uid": os.geteuid(),
        "root": os.geteuid() == 0,
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu_model"] = models[0] if models else None
        with open("/proc/meminfo", encoding="utf-8") as f:
            info["mem_total_mib"] = int(f.readline().split()[1]) // 1024
    except OSError:
        pass
    return info


def fmt_number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


def table_rows(results: Results) -> list[list[str]]:
    rows: list[list[str]] = []
    for figure in FIGURES:
        first = True
        for mode in MODES:
            cells = [f"{figure.short} ({figure.unit})" if first else "", mode.label]
            s = results.summary(mode, figure)
            if s is None:
                reason = results.skip_reason(mode, figure)
                short = reason if reason and len(reason) <= 16 else "not measured"
                cells += ["-", "", "", short]
            else:
                cells += [fmt_number(s.median, figure.digits), fmt_number(s.low, figure.digits),
                          fmt_number(s.high, figure.digits),
                          _ratio(results.ratio_to_native(mode, figure)) if mode is not NATIVE else ""]
            rows.append(cells)
            first = False
    return rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """The first `left` columns left-aligned, the others right-aligned; a rule under the header."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def render(results: Results, title: str) -> str:
    """The table, then what was not measured and why, then notes."""
    table = format_table(["figure", "mode", "median", "min", "max", "vs native"], table_rows(results),
                         left=2)
    lines = [title, "", table, ""]
    lines.append("vs native: the mode's median over native's (the cache files read directly); "
                 "for ms and MiB lower is better.")
    for (mode_key, figure_key), reason in results.skipped.items():
        what = [MODE_BY_KEY[mode_key].label if mode_key else "",
                FIGURE_BY_KEY[figure_key].short if figure_key else ""]
        lines.append(f"not measured: {', '.join(w for w in what if w)}: {reason}")
    lines += results.notes
    return "\n".join(lines)


def _summary_json(results: Results, mode: Mode, figure: Figure) -> dict[str, Any]:
    s = results.summary(mode, figure)
    if s is None:
        return {"skipped": results.skip_reason(mode, figure) or "not measured"}
    return {"median": s.median, "min": s.low, "max": s.high, "runs": s.runs,
            "ratio_to_native": results.ratio_to_native(mode, figure)}


def document(results: Results, config: dict[str, Any], started: datetime.datetime,
             load: tuple[float, float]) -> dict[str, Any]:
    """Everything of a run, for the JSON file."""
    return {
        "tool": "cachefs bench",
        "date": started.isoformat(timespec="seconds"),
        "host": {**host_info(), "loadavg_1m_start": load[0], "loadavg_1m_end": load[1]},
        "config": config,
        "modes": {m.key: {"label": m.label, "description": m.description} for m in MODES},
        "figures": {
            f.key: {"title": f.title, "unit": f.unit, "higher_is_better": f.higher_is_better,
                    "modes": {m.key: _summary_json(results, m, f) for m in MODES}}
            for f in FIGURES
        },
        "notes": results.notes,
        "facts": results.facts,
    }


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def emit_report(table: str, report: dict[str, Any], json_path: Path | None) -> None:
    """A script's end: print the table; write the raw numbers as JSON when asked."""
    print()
    print(table)
    if json_path is not None:
        write_json(report, json_path)
        print(f"raw numbers: {json_path}")


def script_document(config: dict[str, Any], figures: dict[str, Any],
                    facts: dict[str, Any]) -> dict[str, Any]:
    """Everything of a run of a script in bench/, for its JSON file."""
    return {"config": config, "host": host_info(), "figures": figures, "facts": facts}


def load_line(facts: dict[str, Any]) -> str:
    """The 1-minute load average at a script's start and end (facts
    loadavg_1m_start and loadavg_1m_end), as its checks print it."""
    return (f"host:   1-min load average {facts.get('loadavg_1m_start', 0):.2f} at start, "
            f"{facts.get('loadavg_1m_end', 0):.2f} at end ({os.cpu_count()} CPUs); "
            "other load makes the figures noisy")
