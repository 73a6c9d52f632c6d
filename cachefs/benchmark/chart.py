"""The PNG: one panel per figure, one horizontal bar per mode.

Bars show the median, thin whiskers the min-max range, and each bar carries
its value. A panel whose values span more than LOG_SPAN uses a log scale
(hot page-cache reads are often 100x a cold read) and says so. Colours stay
with the mode across panels; the last panel explains the modes.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from .model import FIGURES, MODES, NATIVE, Figure, Mode, Results

# Above this max/min ratio a linear axis would hide the small bars.
LOG_SPAN = 20.0
COLORS = {
    "cold": "#4477aa",
    "warm_daemon": "#ee7733",
    "warm_passthrough": "#228833",
    "hot": "#aa3377",
    "opened_cold": "#66ccee",
    "native": "#777777",
}


def _label(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def _panel(ax_: Any, results: Results, figure: Figure) -> None:
    """One figure: a bar per mode. `ax_` is a matplotlib Axes (imported lazily)."""
    modes: list[Mode] = list(MODES)
    ys = list(range(len(modes)))[::-1]  # first mode on top
    medians, lows, highs = [], [], []
    for mode in modes:
        s = results.summary(mode, figure)
        medians.append(s.median if s else 0.0)
        lows.append(s.median - s.low if s else 0.0)
        highs.append(s.high - s.median if s else 0.0)
    present = [m for m in medians if m > 0]
    log = bool(present) and max(present) / min(present) > LOG_SPAN
    ax_.barh(ys, medians, color=[COLORS[m.key] for m in modes], height=0.7,
             xerr=[lows, highs], error_kw={"elinewidth": 1, "capsize": 3, "ecolor": "#333333"})
    ax_.set_yticks(ys, [m.label for m in modes], fontsize=10)
    better = "higher is better" if figure.higher_is_better else "lower is better"
    ax_.set_title(f"{figure.title}\n{figure.unit}, {better}" + (", log scale" if log else ""),
                  fontsize=11, loc="left")
    if log:
        ax_.set_xscale("log")
        ax_.set_xlim(min(present) / 2, max(present) * 40)
    elif present:
        ax_.set_xlim(0, max(h + m for h, m in zip(highs, medians)) * 1.45)
    ax_.grid(axis="x", color="#dddddd", linewidth=0.8)
    ax_.set_axisbelow(True)
    for spine in ("top", "right"):
        ax_.spines[spine].set_visible(False)
    native = results.summary(NATIVE, figure)
    if native is not None:
        # The reference every other bar is compared with.
        ax_.axvline(native.median, color="#555555", linestyle="--", linewidth=1, zorder=0)
    if log:
        ax_.xaxis.set_major_formatter(_tick_formatter())
    for y, mode, median, high in zip(ys, modes, medians, highs):
        if median > 0:
            text = "  " + _label(median)
            ratio = results.ratio_to_native(mode, figure)
            if ratio is not None and mode is not NATIVE:
                text += f"  ({_ratio(ratio)} native)"
            # A white box keeps the native line from striking through the text.
            ax_.text((median + high) * (1.05 if log else 1.0), y, text, va="center", fontsize=9,
                     bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
        else:
            reason = results.skip_reason(mode, figure)
            ax_.text(0.02, y, "not measured" + (f" ({_short(reason)})" if reason else ""),
                     va="center", fontsize=8, color="#888888", transform=ax_.get_yaxis_transform())


def _ratio(ratio: float) -> str:
    if ratio < 1:
        return f"{ratio:.2f}x"
    return f"{ratio:.1f}x" if ratio < 10 else f"{ratio:,.0f}x"


def _tick_formatter() -> Any:
    """Plain numbers (0.1, 10, 1k, 1M) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter

    def fmt(value: float, _pos: int) -> str:
        for div, suffix in ((1e6, "M"), (1e3, "k")):
            if value >= div:
                return f"{value / div:g}{suffix}"
        return f"{value:g}"

    return FuncFormatter(fmt)


def _short(reason: str) -> str:
    return reason if len(reason) <= 40 else reason[:38] + "..."


def _legend(ax: Any) -> None:
    ax.axis("off")
    ax.text(0.0, 1.0, "What the modes are", fontsize=11, weight="bold", va="top")
    y = 0.86
    for mode in MODES:
        ax.add_patch(_swatch(0.0, y - 0.035, COLORS[mode.key]))
        wrapped = textwrap.fill(f"{mode.label}: {mode.description}", 58)
        ax.text(0.07, y, wrapped, fontsize=8.5, va="top")
        y -= 0.07 + 0.055 * wrapped.count("\n")
    ax.text(0.0, y - 0.02, "Bars: median of the runs; whiskers: min to max;\n"
            "dashed line: native (ratios in brackets are to it).\n"
            "MB = 10^6 bytes.", fontsize=8.5, va="top", color="#444444")


def _swatch(x: float, y: float, color: str) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), 0.045, 0.045, facecolor=color)


def draw(results: Results, title: str, path: Path) -> None:
    """Write the chart to `path` (PNG), without needing a display."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to the file
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(13, 12.5))
    panels = list(axes.flat)
    for ax, figure in zip(panels, FIGURES):
        _panel(ax, results, figure)
    _legend(panels[len(FIGURES)])
    fig.suptitle(title, fontsize=13, weight="bold", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.96), h_pad=2.5, w_pad=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
