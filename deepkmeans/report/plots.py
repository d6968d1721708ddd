"""The figures of the paper's evaluation, each written as one PNG.

Memory share per layer, filters before/after weight sharing, the row distribution before/after
re-training, hardness per re-training epoch, and accuracy vs compression ratio. Figures are built on
``matplotlib.figure.Figure`` (no pyplot global state) and written atomically, so a report folder never
holds a half-written image.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from deepkmeans.accounting import Accounting
from deepkmeans.files.atomic import write_figure
from deepkmeans.sweep import Anchor, SweepPoint

DPI = 110
BEFORE_COLOR, AFTER_COLOR = "#4c72b0", "#dd8452"
SCATTER_ROWS = 5000  # rows drawn per scatter panel; histograms and errors always use every row
FILTER_GAP = 2  # pixels between filters in a mosaic (channels of one filter are 1 pixel apart)
MAX_TILES = 320  # kernel tiles per filter mosaic when the number of filters is left automatic


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches on its own Agg canvas (no pyplot state), laid out tightly."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _numpy(t: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().to(torch.float64).numpy()
    return np.asarray(t, dtype=np.float64)


def plot_memory_share(accounting_before: Accounting, accounting_after: Accounting, path: str | Path) -> Path:
    """Layer-wise memory before (dense) and after weight sharing, as a share and in bits.

    The dense bars use each layer's ``bits_before`` from ``accounting_before``, the compressed bars
    ``bits_after`` from ``accounting_after`` (pass the same :class:`Accounting` twice for one
    compression). Shares show which layer dominates the model; the log-scale bits show by how much
    each layer shrank.
    """
    after = {la.name: la for la in accounting_after.layers}
    names = [la.name for la in accounting_before.layers if la.name in after]
    if not names:
        raise ValueError("the two accountings have no layer in common")
    before = {la.name: la for la in accounting_before.layers}
    before_bits = np.array([before[n].bits_before for n in names], dtype=float)
    after_bits = np.array([after[n].bits_after for n in names], dtype=float)
    before_share = 100 * before_bits / before_bits.sum()
    after_share = 100 * after_bits / after_bits.sum()

    fig = new_figure(max(8.0, 1.6 * len(names) + 4.0), 4.2)
    share_ax, bits_ax = fig.subplots(1, 2)
    x = np.arange(len(names))
    width = 0.4
    for ax, values, fmt in (
        (share_ax, (before_share, after_share), "{:.1f}%"),
        (bits_ax, (before_bits, after_bits), ""),
    ):
        for offset, series, color, label in (
            (-width / 2, values[0], BEFORE_COLOR, "dense"),
            (width / 2, values[1], AFTER_COLOR, "weight-shared"),
        ):
            bars = ax.bar(x + offset, series, width, color=color, label=label)
            if fmt:
                ax.bar_label(bars, [fmt.format(v) for v in series], fontsize=7, padding=1)
        ax.set_xticks(x, names, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    share_ax.set_ylabel("share of conv + linear memory (%)")
    share_ax.set_ylim(0, 110)
    share_ax.set_title("memory share per layer")
    share_ax.legend(fontsize=8, loc="upper left")
    bits_ax.set_yscale("log")
    bits_ax.set_ylabel("bits (paper accounting)")
    ratios = before_bits / after_bits
    for xi, top, ratio in zip(x, np.maximum(before_bits, after_bits), ratios, strict=True):
        bits_ax.annotate(f"{ratio:.1f}x", (xi, top), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
    bits_ax.set_ylim(top=before_bits.max() * 4)
    bits_ax.set_title(f"bits per layer (total {before_bits.sum() / after_bits.sum():.1f}x smaller)")
    return write_figure(fig, path, DPI)


def _filter_mosaic(weight: np.ndarray, scale: np.ndarray, filters_per_row: int) -> np.ndarray:
    """Tile filters (m, n, h, w) into one image: channels side by side, filters in a grid, NaN gaps."""
    m, n, h, w = weight.shape
    gap, filter_gap = 1, FILTER_GAP
    block_w = n * w + (n - 1) * gap
    rows = math.ceil(m / filters_per_row)
    image = np.full(
        (rows * h + (rows - 1) * filter_gap, filters_per_row * block_w + (filters_per_row - 1) * filter_gap), np.nan
    )
    for i in range(m):
        top = (i // filters_per_row) * (h + filter_gap)
        left = (i % filters_per_row) * (block_w + filter_gap)
        for c in range(n):
            x0 = left + c * (w + gap)
            image[top : top + h, x0 : x0 + w] = weight[i, c] / scale[i]
    return image


def plot_filters(
    weight_before: torch.Tensor | np.ndarray,
    weight_after: torch.Tensor | np.ndarray,
    path: str | Path,
    max_filters: int | None = None,
    max_channels: int = 20,
    title: str = "",
) -> Path:
    """Filters before vs after weight sharing: each filter's input channels as small grayscale tiles.

    Each filter is shown on one symmetric gray scale shared by its before and after version
    (+-max|w| over both), so the change the shared centers make is visible and comparable.
    ``max_filters=None`` shows as many filters as fit in about ``MAX_TILES`` tiles (at least 8).
    A conv1d weight (m, n, w) is drawn with h = 1.
    """
    before, after = _numpy(weight_before), _numpy(weight_after)
    if before.shape != after.shape:
        raise ValueError(f"weights differ in shape: {before.shape} vs {after.shape}")
    if before.ndim == 3:
        before, after = before[:, :, None, :], after[:, :, None, :]
    if before.ndim != 4:
        raise ValueError(f"expected a conv weight (m, n, h, w), got shape {before.shape}")
    m, n, h, w = before.shape
    shown_n = min(n, max_channels)
    shown_m = min(m, max_filters if max_filters is not None else max(8, MAX_TILES // shown_n))
    before, after = before[:shown_m, :shown_n], after[:shown_m, :shown_n]
    scale = np.maximum(np.abs(before).reshape(shown_m, -1).max(1), np.abs(after).reshape(shown_m, -1).max(1))
    scale[scale == 0] = 1.0
    # Aim for a roughly square mosaic: a filter with many channels takes a whole row.
    tiles_per_row = max(shown_n, math.ceil(math.sqrt(shown_m * shown_n * h / w)))
    filters_per_row = max(1, tiles_per_row // shown_n)
    images = [_filter_mosaic(x, scale, filters_per_row) for x in (before, after)]

    height, width = images[0].shape
    panel_w = min(7.0, max(2.5, width / 12))
    panel_h = min(9.0, max(2.2, panel_w * height / width))
    fig = new_figure(2 * panel_w + 0.6, panel_h + 0.9)
    axes = fig.subplots(1, 2)
    cmap = _gray_with_gaps()
    for ax, image, label in zip(axes, images, ("before (dense)", "after (weight-shared)"), strict=True):
        ax.imshow(image, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
        ax.set_title(label, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        if filters_per_row == 1:  # one filter per mosaic row: label the rows with the filter index
            ax.set_yticks(
                [i * (h + FILTER_GAP) + (h - 1) / 2 for i in range(shown_m)], [str(i) for i in range(shown_m)]
            )
            ax.tick_params(axis="y", length=0, labelsize=7)
    shown = f"{shown_m} of {m} filters" if shown_m < m else f"{m} filters"
    shown += f", {shown_n} of {n} channels" if shown_n < n else f" x {n} channel{'s' if n > 1 else ''}"
    layout = "one row per filter, its channels left to right" if filters_per_row == 1 else "filters in reading order"
    fig.suptitle(
        f"{title + ': ' if title else ''}{shown} ({h}x{w} kernels)\n{layout}; gray scale +-max|w| per filter",
        fontsize=9,
    )
    return write_figure(fig, path, DPI)


def _gray_with_gaps() -> Colormap:
    """Grayscale colormap whose NaN gaps between tiles are drawn in a light blue-gray."""
    return colormaps["gray"].with_extremes(bad="#dfe6ee")


def _pca_basis(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the top two principal directions (d, 2), from the small d x d covariance."""
    mean = points.mean(0)
    cov = np.cov((points - mean).T).reshape(points.shape[1], points.shape[1])
    eigval, eigvec = np.linalg.eigh(cov)
    return mean, eigvec[:, np.argsort(eigval)[::-1][:2]]


@dataclass(frozen=True)
class _RowPanel:
    """One side of the row figure: rows, their centers and assignments, and how to draw them."""

    label: str
    rows: np.ndarray
    centers: np.ndarray
    assignments: np.ndarray
    color: str

    @property
    def distances(self) -> np.ndarray:
        return np.linalg.norm(self.rows - self.centers[self.assignments], axis=1)

    @property
    def relative_error(self) -> float:
        return float(np.linalg.norm(self.rows - self.centers[self.assignments]) / max(np.linalg.norm(self.rows), 1e-30))


def _row_panels(
    rows_before: torch.Tensor | np.ndarray,
    rows_after: torch.Tensor | np.ndarray,
    centers: torch.Tensor | np.ndarray,
    assignments: torch.Tensor | np.ndarray,
    centers_before: torch.Tensor | np.ndarray | None,
    assignments_before: torch.Tensor | np.ndarray | None,
) -> tuple[_RowPanel, _RowPanel]:
    """Validated numpy panels for before and after re-training (the before clustering defaults to the after one)."""
    after, c_after = _numpy(rows_after), _numpy(centers)
    a_after = np.asarray(assignments, dtype=np.int64)
    before = _numpy(rows_before)
    c_before = c_after if centers_before is None else _numpy(centers_before)
    a_before = a_after if assignments_before is None else np.asarray(assignments_before, dtype=np.int64)
    if before.ndim != 2 or before.shape != after.shape:
        raise ValueError(f"rows must be two (N, d) matrices of one shape, got {before.shape} and {after.shape}")
    panels = (
        _RowPanel("before re-training", before, c_before, a_before, BEFORE_COLOR),
        _RowPanel("after re-training", after, c_after, a_after, AFTER_COLOR),
    )
    n_rows, d = after.shape
    for p in panels:
        fits = p.assignments.shape == (n_rows,) and p.centers.ndim == 2 and p.centers.shape[1] == d
        if not fits or p.assignments.max() >= len(p.centers):
            shapes = f"centers {p.centers.shape} and assignments {p.assignments.shape}"
            raise ValueError(f"{p.label}: {shapes} do not fit rows {p.rows.shape}")
    return panels


def _draw_values(ax: Axes, panel: _RowPanel, bins: np.ndarray) -> None:
    """d = 1: a histogram of the values with the centers as vertical lines."""
    ax.hist(panel.rows[:, 0], bins=bins, color=panel.color, alpha=0.85)
    ax.set_yscale("log")
    for c in panel.centers[:, 0]:
        ax.axvline(c, color="black", lw=0.6, alpha=0.7)
    ax.set_xlabel("row value (d = 1); black lines: centers")
    ax.set_xlim(bins[0], bins[-1])


def _draw_projection(ax: Axes, panel: _RowPanel, xy: np.ndarray, cxy: np.ndarray, shown: np.ndarray) -> None:
    """d >= 2: rows in a 2-D PCA projection, the largest cluster in gray, the centers as crosses."""
    cluster = panel.assignments[shown]
    largest = np.bincount(panel.assignments, minlength=len(panel.centers)).argmax()
    main = cluster == largest
    ax.scatter(xy[main, 0], xy[main, 1], s=3, color="#b0b0b0", alpha=0.5, lw=0, label="largest cluster")
    ax.scatter(xy[~main, 0], xy[~main, 1], s=3, c=cluster[~main] % 20, cmap="tab20", vmin=0, vmax=19, alpha=0.6, lw=0)
    ax.scatter(cxy[:, 0], cxy[:, 1], s=40, marker="x", color="black", lw=1.2, label=f"{len(panel.centers)} centers")
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    legend = ax.legend(fontsize=8, loc="upper right")
    legend.legend_handles[0].set_sizes([20])  # the 3-point row markers are too small to read


def _draw_rows(top: list[Axes], panels: tuple[_RowPanel, _RowPanel], shown: np.ndarray) -> None:
    """The two top panels: value histograms (d = 1) or one shared PCA projection (d >= 2)."""
    if panels[0].rows.shape[1] == 1:
        lo, hi = np.percentile(np.concatenate([p.rows[:, 0] for p in panels]), [0.1, 99.9])
        for ax, panel in zip(top, panels, strict=True):
            _draw_values(ax, panel, np.linspace(lo, hi, 80))
    else:
        mean, basis = _pca_basis(np.concatenate([p.rows for p in panels]))
        projected = [(p.rows - mean) @ basis for p in panels]
        lo, hi = np.percentile(np.concatenate(projected), [0.2, 99.8], axis=0)
        pad = 0.08 * (hi - lo)
        for ax, panel, xy in zip(top, panels, projected, strict=True):
            _draw_projection(ax, panel, xy[shown], (panel.centers - mean) @ basis, shown)
            ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
            ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    for ax, panel in zip(top, panels, strict=True):
        ax.set_title(f"{panel.label}: ||W - Q(W)|| / ||W|| = {panel.relative_error:.4f}", fontsize=10)


def _draw_distances(ax: Axes, panels: tuple[_RowPanel, _RowPanel]) -> None:
    """Histogram of each row's distance to its center, before and after."""
    distances = [p.distances for p in panels]
    top_d = max(np.percentile(dist, 99.5) for dist in distances)
    bins = np.linspace(0, top_d if top_d > 0 else 1.0, 80)
    for dist, panel in zip(distances, panels, strict=True):
        label = f"{panel.label}: median {np.median(dist):.3g}, mean {dist.mean():.3g}"
        ax.hist(np.minimum(dist, bins[-1]), bins=bins, histtype="step", lw=1.6, color=panel.color, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("distance of a row to its assigned center (last bin: 99.5th percentile and above)")
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)


def plot_row_distribution(
    rows_before: torch.Tensor | np.ndarray,
    rows_after: torch.Tensor | np.ndarray,
    centers: torch.Tensor | np.ndarray,
    assignments: torch.Tensor | np.ndarray,
    path: str | Path,
    centers_before: torch.Tensor | np.ndarray | None = None,
    assignments_before: torch.Tensor | np.ndarray | None = None,
    title: str = "",
    seed: int = 0,
) -> Path:
    """Weight rows before vs after re-training, and how far each row lies from its center.

    ``centers`` / ``assignments`` are the compression of ``rows_after``; ``centers_before`` /
    ``assignments_before`` that of ``rows_before`` (default: the same clustering). Top: both row sets in
    one 2-D PCA projection (histograms of the values when d = 1) with the centers marked. Bottom: the
    distance of each row to its assigned center; harder assignments shift it towards zero.
    """
    panels = _row_panels(rows_before, rows_after, centers, assignments, centers_before, assignments_before)
    n_rows, d = panels[1].rows.shape
    fig = new_figure(11.0, 8.2)
    grid = fig.add_gridspec(2, 2, height_ratios=(1.25, 1))
    top = [fig.add_subplot(grid[0, 0])]
    top.append(fig.add_subplot(grid[0, 1], sharex=top[0], sharey=top[0]))
    shown = np.random.default_rng(seed).choice(n_rows, size=min(n_rows, SCATTER_ROWS), replace=False)
    _draw_rows(top, panels, shown)
    _draw_distances(fig.add_subplot(grid[1, :]), panels)
    note = ""
    if d > 1:
        note = " (gray: the largest cluster; colours: the others)"
        if len(shown) < n_rows:
            note = f"; scatter shows {len(shown)} of them{note}"
    fig.suptitle(f"{title + ': ' if title else ''}{n_rows} rows of length {d}{note}", fontsize=10)
    return write_figure(fig, path, DPI)


def plot_hardness(history: Mapping[int, Mapping[str, float]], path: str | Path) -> Path:
    """Per-layer hardness ||W - Q(W)||_F / ||W||_F per re-training epoch (epoch 0: before re-training).

    ``history`` maps epoch -> {layer: hardness}. The left panel shows the values, the right one each
    layer relative to its first epoch, so that layers of very different error are comparable.
    """
    epochs = sorted(history)
    if not epochs:
        raise ValueError("no hardness history to plot")
    names = list(dict.fromkeys(n for e in epochs for n in history[e]))
    fig = new_figure(10.0, 4.0)
    abs_ax, rel_ax = fig.subplots(1, 2, sharex=True)
    for name in names:
        xs = [e for e in epochs if name in history[e]]
        ys = np.array([history[e][name] for e in xs])
        (line,) = abs_ax.plot(xs, ys, marker="o", label=name)
        if ys[0] > 0:
            rel_ax.plot(xs, ys / ys[0], marker="o", color=line.get_color(), label=name)
    abs_ax.set_ylabel("||W - Q(W)|| / ||W||")
    abs_ax.set_title("hardness per layer (lower: harder assignments)")
    abs_ax.set_ylim(bottom=0)
    rel_ax.set_ylabel(f"relative to epoch {epochs[0]}")
    rel_ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    rel_ax.set_title("change during re-training")
    for ax in (abs_ax, rel_ax):
        ax.set_xlabel("re-training epoch")
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    abs_ax.legend(fontsize=8)
    return write_figure(fig, path, DPI)


_RUN_COLORS = ("#dd8452", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd", "#c44e52")


def _run_stage_marker(stage: str) -> tuple[str, bool]:
    """Marker and fill for a run's stage: hollow circle before re-training, diamond after, plus after fine-tuning."""
    if "fine-tuned" in stage:
        return "P", True
    if "no re-training" in stage:
        return "o", False
    return "D", True


def _plot_runs(ax: Axes, runs: Sequence[SweepPoint]) -> None:
    """Models of run folders: one color per run (in the legend), one marker per stage (keyed in the legend)."""
    names = list(dict.fromkeys(pt.name.split(": ", 1)[0] for pt in runs))
    for i, name in enumerate(names):
        color = _RUN_COLORS[i % len(_RUN_COLORS)]
        for pt in (pt for pt in runs if pt.name.split(": ", 1)[0] == name):
            marker, filled = _run_stage_marker(pt.name.split(": ", 1)[-1])
            ax.plot(
                pt.paper_cr,
                pt.error_pct,
                marker=marker,
                markersize=8,
                ls="none",
                color=color,
                markerfacecolor=color if filled else "none",
            )
        ax.plot([], [], marker="s", ls="none", color=color, label=f"run {name}")
    seen = sorted({_run_stage_marker(pt.name.split(": ", 1)[-1]) for pt in runs}, key=lambda m: "oDP".index(m[0]))
    keys = {"o": "compressed, no re-training", "D": "re-trained + compressed", "P": "+ centers fine-tuned"}
    for marker, filled in seen:
        ax.plot(
            [],
            [],
            marker=marker,
            ls="none",
            color="black",
            markerfacecolor="black" if filled else "none",
            label=keys[marker],
        )


def plot_sweep(points: Sequence[SweepPoint], anchors: Sequence[Anchor], path: str | Path) -> Path:
    """Measured test error vs paper-accounting CR, one line per grid, with published anchors marked.

    Anchors are numbers reported in the literature (drawn as labeled stars, legend "published"), not
    measurements of this run; the swept checkpoint itself, uncompressed, is a dashed horizontal reference line.
    """
    fig = new_figure(10.5, 5.5)
    ax = fig.add_subplot()
    dense = [pt for pt in points if pt.grid == "dense"]
    for pt in dense:
        ax.axhline(
            pt.error_pct, color="gray", ls="--", lw=1, label=f"the checkpoint, uncompressed: {pt.error_pct:.2f}%"
        )
    styles = {"K": ("o", "#4c72b0", "K scaled"), "p": ("s", "#55a868", "sparsity p shifted")}
    for grid, (marker, color, label) in styles.items():
        series = sorted((pt for pt in points if pt.grid == grid), key=lambda pt: pt.paper_cr)
        if not series:
            continue
        ax.plot(
            [pt.paper_cr for pt in series], [pt.error_pct for pt in series], marker=marker, color=color, label=label
        )
        for pt in series:
            ax.annotate(pt.label, (pt.paper_cr, pt.error_pct), xytext=(4, 4), textcoords="offset points", fontsize=7)
    _plot_runs(ax, [pt for pt in points if pt.grid == "run"])
    crs = [pt.paper_cr for pt in points if pt.grid != "dense"] + [a.paper_cr for a in anchors]
    middle = math.sqrt(min(crs) * max(crs)) if crs else 1.0
    for i, anchor in enumerate(anchors):
        ax.plot(
            anchor.paper_cr,
            anchor.error_pct,
            marker="*",
            markersize=14,
            color="#c44e52",
            markeredgecolor="black",
            ls="none",
            label="published (literature, not measured here)" if i == 0 else None,
        )
        left = anchor.paper_cr > middle  # write the label towards the middle of the plot
        ax.annotate(
            f"{anchor.method} (published)\n{anchor.citation}: {anchor.paper_cr:g}x, {anchor.error_pct:g}%",
            (anchor.paper_cr, anchor.error_pct),
            xytext=(-10 if left else 10, 0),
            textcoords="offset points",
            ha="right" if left else "left",
            va="center",
            fontsize=7,
            color="#8c2d30",
        )
    ax.set_xscale("log")
    errors = [pt.error_pct for pt in points] + [a.error_pct for a in anchors]
    if errors and min(errors) > 0:  # a perfect score has no place on a log axis
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("compression ratio (paper accounting: dense bits / (K*d*32 + N*H + bias bits))")
    ax.set_ylabel("test error")
    ax.set_title("test error vs compression ratio" + (": lines measured here, stars published" if anchors else ""))
    ax.grid(alpha=0.3, which="both")
    ax.margins(x=0.1)  # room for the point labels at both ends
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return write_figure(fig, path, DPI)
