"""The study's figures (PNG, matplotlib's Agg canvas, no pyplot state):

- ``accuracy_vs_noise-HW.png``: one panel per architecture, accuracy against noise scale with a
  band (95% interval over seeds) per method;
- ``midpoint_by_depth-HW.png``: midpoint noise level per method against the architectures
  ordered by depth, with 95% intervals;
- ``cross_hardware.png``: per architecture, the midpoint of each method relative to the baseline
  (geometric mean of the per-seed ratios, as in the comparison table), methods (with the hardware
  they trained for) x evaluation hardware.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from analog_onnx.evaluate.report_files import wrapped_title, zero_level_axis, zero_position
from analog_onnx.files import write_bytes
from analog_onnx.study.depth import DEPTH
from analog_onnx.study.results import Results

FIGURES = ("accuracy_vs_noise-*.png", "midpoint_by_depth-*.png", "cross_hardware.png")  # what draw_figures writes


def draw_figures(results: Results, folder: Path) -> list[Path]:
    """Write the figures of ``results`` into ``folder``; figures of ours that an earlier version of
    the study drew and this one does not (a hardware since removed) are deleted."""
    paths = []
    if results.rows:
        folder.mkdir(parents=True, exist_ok=True)
        for hardware in results.spec.hardware:
            paths.append(_save(_accuracy_vs_noise(results, hardware), folder / f"accuracy_vs_noise-{hardware}.png"))
            paths.append(_save(_midpoint_by_depth(results, hardware), folder / f"midpoint_by_depth-{hardware}.png"))
        paths.append(_save(_cross_hardware(results), folder / "cross_hardware.png"))
    stale = [p for pattern in FIGURES for p in folder.glob(pattern) if p not in paths] if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return paths


def _legend(ax: Any) -> None:
    """A legend when the axes have labelled artists (matplotlib warns about an empty one)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    write_bytes(path, buffer.getvalue(), force=True)
    return path


def _accuracy_vs_noise(results: Results, hardware: str) -> Figure:
    archs = results.spec.archs
    figure = Figure(figsize=(max(4 * len(archs), 6), 3.9), layout="constrained")
    axes = figure.subplots(1, len(archs), squeeze=False)[0]
    positive = [s for s in results.spec.noise_scales if s > 0]
    for ax, arch in zip(axes, archs, strict=True):
        for method in results.spec.methods:
            row = results.row(arch, method.name, hardware)
            if row is None:
                continue
            points = [(s, stat) for s, stat in row.curve if s > 0]
            scales = np.array([s for s, _ in points])
            mean = np.array([stat.mean for _, stat in points])
            (line,) = ax.plot(scales, mean, marker="o", markersize=2.5, label=method.name)
            if all(stat.low is not None for _, stat in points):
                ax.fill_between(scales, [stat.low for _, stat in points], [stat.high for _, stat in points],
                                color=line.get_color(), alpha=0.18, linewidth=0)
            zero = row.accuracy_at(0.0)
            if zero is not None and positive:
                ax.plot([zero_position(positive)], [zero.mean], marker="s", markersize=3.5, color=line.get_color())
        ax.set_xscale("log")
        if 0.0 in results.spec.noise_scales and positive:
            zero_level_axis(ax, positive)
        ax.set_ylim(0, 1.02)
        ax.set_title(arch)
        ax.set_xlabel("noise scale" + (" (0 left of the break)" if 0.0 in results.spec.noise_scales else ""))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    _legend(axes[-1])
    seeds = len(results.spec.seeds)
    bands = "bands: 95% interval over seeds" if seeds > 1 else "one seed: no interval"
    figure.suptitle(wrapped_title(f"{results.spec.name}: evaluated on {hardware}, {seeds} seed(s); {bands}",
                                  width=int(11 * figure.get_figwidth())), fontsize=10)
    return figure


def _midpoint_by_depth(results: Results, hardware: str) -> Figure:
    archs = sorted(results.spec.archs, key=lambda a: DEPTH.get(a, 0))
    figure = Figure(figsize=(6, 3.8), layout="constrained")
    ax = figure.add_subplot()
    methods = results.spec.methods
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        xs, means, errors = [], [], []
        for j, arch in enumerate(archs):
            row = results.row(arch, method.name, hardware)
            stat = row.midpoint if row else None
            if stat is None:
                continue
            xs.append(j + (i - (len(methods) - 1) / 2) * width)
            means.append(stat.mean)
            low, high = (stat.low, stat.high) if stat.low is not None else (stat.mean, stat.mean)
            errors.append((stat.mean - max(low, 1e-12), high - stat.mean))
        if xs:
            ax.errorbar(xs, means, yerr=np.array(errors).T, fmt="o", capsize=2, label=method.name)
    ax.set_xticks(range(len(archs)), [f"{a}\n(depth {DEPTH.get(a, '?')})" for a in archs])
    ax.set_xlim(-0.5, len(archs) - 0.5)  # one architecture too: its methods side by side, not at the edges
    ax.set_yscale("log")
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(FuncFormatter(lambda value, _: f"{value:.3g}"))  # 0.21, not 2.1 x 10^-1
    ax.set_ylabel("midpoint noise level")
    ax.grid(alpha=0.3, axis="y")
    _legend(ax)
    interval = "95% interval over seeds" if len(results.spec.seeds) > 1 else "one seed: no interval"
    ax.set_title(wrapped_title(f"{results.spec.name}: midpoint noise on {hardware}", f"({interval})", width=60),
                 fontsize=10)
    return figure


def _cross_hardware(results: Results) -> Figure:
    spec = results.spec
    hardware = list(spec.hardware)
    methods = list(spec.methods)
    figure = Figure(figsize=(2.2 + 1.6 * len(hardware) * len(spec.archs), 0.8 + 0.45 * len(methods)),
                    layout="constrained")
    axes = figure.subplots(1, len(spec.archs), squeeze=False)[0]
    baseline = next((m.name for m in methods if m.kind == "baseline"), None)
    ratios = {(c.arch, c.method, c.hardware): c.log10_ratio.mean for c in results.comparisons
              if c.versus == baseline and c.log10_ratio is not None}
    for ax, arch in zip(axes, spec.archs, strict=True):
        grid = np.full((len(methods), len(hardware)), np.nan)
        for i, method in enumerate(methods):
            for j, hw in enumerate(hardware):
                if method.name == baseline and results.row(arch, method.name, hw):
                    grid[i, j] = 0.0
                elif (arch, method.name, hw) in ratios:
                    grid[i, j] = ratios[(arch, method.name, hw)] * math.log2(10)
        limit = max(1.0, float(np.nanmax(np.abs(grid)))) if np.isfinite(grid).any() else 1.0
        image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            ax.text(j, i, "-" if np.isnan(value) else f"x{2**value:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(hardware)), hardware, fontsize=7, rotation=15)
        labels = [f"{m.name} ({m.train_hardware})" for m in methods] if ax is axes[0] else [""] * len(methods)
        ax.set_yticks(range(len(methods)), labels, fontsize=7)
        ax.set_title(arch, fontsize=9)
    bar = figure.colorbar(image, ax=list(axes), shrink=0.9)
    ticks = [t for t in range(-int(limit), int(limit) + 1)]
    bar.set_ticks(ticks, labels=[f"x{2.0**t:g}" for t in ticks], fontsize=7)
    bar.set_label("midpoint / baseline's", fontsize=7)
    title = f"{spec.name}: midpoint / baseline midpoint; rows: method (trained for), columns: evaluated on"
    figure.suptitle(wrapped_title(title, width=int(13 * figure.get_figwidth())), fontsize=9)
    return figure
