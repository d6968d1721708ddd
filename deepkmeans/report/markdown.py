"""``report.md`` of a run folder, rebuilt from the folder's files alone so it can be regenerated later.

Reads ``metrics.json``, the checkpoints (``pretrain.ckpt``, ``retrain.ckpt``) and the compressed files
(``no_retrain.dkm``, ``model.dkm``) that ``deepkmeans run`` writes, draws the figures beside the report
and links them relatively. Every number comes from those files. What cannot be drawn (no re-training,
an architecture the tool cannot rebuild) is skipped with a line in the report that says why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from deepkmeans.accounting import Accounting, account
from deepkmeans.cluster.rows import to_rows
from deepkmeans.codec.model_file import CompressedModel
from deepkmeans.errors import DeepKMeansError
from deepkmeans.files.atomic import write_atomic
from deepkmeans.files.checkpoints import load_checkpoint
from deepkmeans.files.models import load_compressed, rebuild
from deepkmeans.report import plots
from deepkmeans.report.tables import layer_table, ratio_summary
from deepkmeans.results import RunFiles, RunMetrics, StageMetrics

FILTER_LAYERS = 2  # the first conv layers drawn, as in the paper's filter figure


@dataclass
class Stage:
    """One compressed model of the run: its file, the dense checkpoint it came from, and its metrics."""

    metrics: StageMetrics
    file: Path
    source: Path  # dense checkpoint that was compressed
    cm: CompressedModel | None = None
    accounting: Accounting | None = None
    why_no_accounting: str = ""

    @property
    def label(self) -> str:
        return self.metrics.label


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def _image_name(prefix: str, layer: str) -> str:
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9_.-]', '_', layer)}.png"


def _state(path: Path) -> dict[str, torch.Tensor] | None:
    """The model tensors of a checkpoint (no architecture needed); ``None`` when the file is absent."""
    return load_checkpoint(path)["model"] if path.is_file() else None


def _stages(files: RunFiles, metrics: RunMetrics) -> list[Stage]:
    stages = [Stage(m, files / m.file, files / m.source) for m in metrics.stages]
    for stage in stages:
        if not stage.file.is_file():
            stage.why_no_accounting = f"{stage.file.name} is missing"
            continue
        stage.cm = load_compressed(stage.file)
        try:
            model = rebuild(stage.cm, None, materialize=False, source=str(stage.file))
        except DeepKMeansError as exc:
            stage.why_no_accounting = f"the architecture could not be rebuilt from {stage.file.name} ({exc})"
            continue
        stage.accounting = account(model, stage.file.stat().st_size)
    return stages


def _header(files: RunFiles, metrics: RunMetrics) -> list[str]:
    cfg = metrics.config
    lines = [f"# deepkmeans run: {cfg.get('model', '?')} on {cfg.get('dataset', '?')}", ""]
    lines.append(
        f"Run folder `{files.root.name}`, produced by `deepkmeans run` in {metrics.seconds:.0f}s on {metrics.device}."
        " Every number below is read from the files of this folder; accuracies are measured on the model"
        " decompressed from its file."
    )
    if metrics.quick:
        lines += ["", "**Quick smoke run**: a small training subset and at most one epoch per stage."]
    return [*lines, ""]


def _accuracy_section(metrics: RunMetrics, stages: list[Stage]) -> list[str]:
    dense_acc = metrics.dense.test_acc
    dense_bytes = next((s.accounting.dense_bytes for s in stages if s.accounting is not None), None)
    has_val = metrics.dense.val_acc is not None

    def val(acc: float | None) -> str:
        return f" {_pct(acc) if acc is not None else '-'} |" if has_val else ""

    lines = [
        "## Accuracy and compression",
        "",
        "| model | test accuracy | test error | change vs dense |"
        + (" validation accuracy |" if has_val else "")
        + " paper CR | file CR | bytes |",
        "|---|---|---|---|" + ("---|" if has_val else "") + "---|---|---|",
        f"| dense (pre-trained) | {_pct(dense_acc)} | {_pct(1 - dense_acc)} | - |{val(metrics.dense.val_acc)} 1x | 1x "
        f"| {dense_bytes if dense_bytes is not None else '-'} (dense state dict) |",
    ]
    for stage in stages:
        m = stage.metrics
        lines.append(
            f"| {stage.label} | {_pct(m.test_acc)} | {_pct(1 - m.test_acc)} "
            f"| {100 * (m.test_acc - dense_acc):+.2f} points |{val(m.val_acc)} {m.paper_cr:.1f}x | {m.file_cr:.1f}x "
            f"| {m.file_bytes} (`{stage.file.name}`) |"
        )
    lines += [
        "",
        "Paper CR: dense bits / (K*d*32 + N*H + bias bits) over all parameters but normalization layers (H: entropy"
        " of the assignments). File CR: bytes of the dense state dict / bytes of the compressed file.",
    ]
    if has_val:
        lines += [
            "",
            f"Validation accuracy: on the last {metrics.config.get('validation')} training images, held out of"
            " training; the figure to choose settings by (the test set is for reporting only).",
        ]
    if metrics.finetune_log:
        lines += [
            "",
            f"Centers fine-tuned for {len(metrics.finetune_log)} epoch(s) with the assignments fixed: the file"
            " keeps its size, only the centers, biases and BatchNorm values change.",
        ]
    if not metrics.retrain_log:
        epochs = metrics.config.get("retrain", {}).get("epochs", "?")
        lines += [
            "",
            f"Re-training did not run (retrain.epochs = {epochs}): the compressed model is the pre-trained"
            " model compressed directly, and there are no per-epoch hardness or before/after-re-training figures.",
        ]
    last = metrics.final
    lines += [
        "",
        "Decompressed weights bit-identical to the in-memory weight-shared model: "
        + ("yes." if last.bitwise_equal else "**no**."),
    ]
    if last.index_bits_ideal:
        gap = 100 * (last.index_bits / last.index_bits_ideal - 1)
        lines.append(
            f"Assignment streams: {last.index_bits} bits coded (rANS) vs N*H = {last.index_bits_ideal:.0f}"
            f" bits ({gap:+.2f}%)."
        )
    return [*lines, ""]


def _layers_section(run: Path, stages: list[Stage]) -> list[str]:
    final = stages[-1]
    lines = [f"## Layers ({final.label})", ""]
    if final.accounting is None:
        return [*lines, f"Per-layer table and memory chart skipped: {final.why_no_accounting}.", ""]
    lines += [layer_table(final.accounting), "", ratio_summary(final.accounting).replace("\n", "  \n"), ""]
    for stage in stages[:-1]:
        if stage.accounting is not None:
            lines += [f"{stage.label}: " + ratio_summary(stage.accounting).replace("\n", "  \n"), ""]
    plots.plot_memory_share(final.accounting, final.accounting, run / "memory_share.png")
    lines += [
        "### Memory share per layer, before (dense) and after compression",
        "",
        "![memory share per layer](memory_share.png)",
        "",
    ]
    return lines


def _conv_names(state: dict[str, torch.Tensor]) -> list[str]:
    """Conv layers in state-dict order: the 3-D / 4-D ``*.weight`` tensors (BatchNorm and linear are lower rank)."""
    return [key[: -len(".weight")] for key, t in state.items() if key.endswith(".weight") and t.ndim in (3, 4)]


def _filters_section(run: Path, stages: list[Stage]) -> list[str]:
    final = stages[-1]
    lines = ["## Filters before and after compression", ""]
    dense = _state(final.source)
    if dense is None or final.cm is None:
        missing = final.source.name if dense is None else final.file.name
        return [*lines, f"Skipped: {missing} is missing.", ""]
    after = final.cm.state_dict()
    names = [n for n in _conv_names(dense) if f"{n}.weight" in after][:FILTER_LAYERS]
    if not names:
        return [*lines, "Skipped: the model has no convolution layer.", ""]
    lines += [
        f"Dense weights from `{final.source.name}` vs the weight-shared ones decoded from `{final.file.name}`."
        " Each filter's input channels are small grayscale tiles; a filter and its compressed version share"
        " one gray scale.",
        "",
    ]
    for name in names:
        code = final.cm.layers.get(name)
        image = _image_name("filters", name)
        plots.plot_filters(dense[f"{name}.weight"], after[f"{name}.weight"], run / image, title=name)
        how = f"K = {code.k} centers of length d = {code.d}" if code else "not shared (left dense)"
        lines += [f"### {name} ({how})", "", f"![{name} filters before and after]({image})", ""]
    return lines


def _rows_section(run: Path, stages: list[Stage]) -> list[str]:
    lines = ["## Weight rows before and after re-training", ""]
    retrained = [s for s in stages if s.metrics.file == RunFiles.MODEL]
    if not retrained:
        return [*lines, "Skipped: re-training did not run.", ""]
    base, final = stages[0], retrained[0]
    before, after = _state(base.source), _state(final.source)
    if before is None or after is None or base.cm is None or final.cm is None:
        missing = [p.name for p, x in ((base.source, before), (final.source, after)) if x is None]
        missing += [s.file.name for s in stages if s.cm is None]
        return [*lines, f"Skipped: {', '.join(missing)} missing.", ""]
    if not final.cm.layers:
        return [*lines, "Skipped: no layer is weight-shared.", ""]
    name, code = max(final.cm.layers.items(), key=lambda item: item[1].n_rows * item[1].d)
    key = f"{name}.weight"
    base_code = base.cm.layers.get(name)
    same_rows = base_code is not None and base_code.d == code.d
    image = _image_name("rows", name)
    plots.plot_row_distribution(
        to_rows(before[key].float(), code.d),
        to_rows(after[key].float(), code.d),
        code.centers,
        code.assignments,
        run / image,
        centers_before=base_code.centers if same_rows else None,
        assignments_before=base_code.assignments if same_rows else None,
        title=name,
    )
    clustering = (
        f"`{base.file.name}` for the rows before, `{final.file.name}` for the rows after"
        if same_rows
        else f"`{final.file.name}` for both"
    )
    lines += [
        f"Largest shared layer `{name}`: {code.n_rows} rows of length {code.d}, K = {code.k},"
        f" sparsity p = {code.sparsity_p:g}. Rows of `{base.source.name}` (before) and `{final.source.name}`"
        f" (after) in one PCA projection, with the centers and assignments of {clustering}. Below: each row's"
        " distance to its assigned center; harder assignments move it towards zero.",
        "",
        f"![{name} rows before and after re-training]({image})",
        "",
    ]
    return lines


def hardness_history(metrics: RunMetrics) -> dict[int, dict[str, float]]:
    """Epoch -> {layer: ||W - Q(W)|| / ||W||}; epoch 0 is the model before re-training."""
    return {int(epoch): dict(layers) for epoch, layers in metrics.hardness.items() if layers}


def _hardness_section(run: Path, metrics: RunMetrics) -> list[str]:
    history = hardness_history(metrics)
    lines = ["## Hardness ||W - Q(W)|| / ||W|| per re-training epoch", ""]
    if not history:
        return [*lines, "Skipped: metrics.json holds no hardness values.", ""]
    names = list(dict.fromkeys(n for h in history.values() for n in h))
    logs = {e.epoch: e for e in metrics.retrain_log}
    split = next(iter(logs.values())).monitored[0] if logs else "test"
    dense_acc = metrics.dense.val_acc if split == "validation" else metrics.dense.test_acc
    lines += [
        "Relative quantization error of each layer under the compression step (lower: harder assignments);"
        f" epoch 0 is the pre-trained model. The {split} accuracy is that of the dense model during re-training.",
        "",
        f"| epoch | {split} accuracy (dense) | penalty | " + " | ".join(names) + " |",
        "|---" * (3 + len(names)) + "|",
    ]
    for epoch in sorted(history):
        if epoch in logs:
            acc, penalty = _pct(logs[epoch].monitored[1]), f"{logs[epoch].penalty:.4g}"
        else:
            acc, penalty = (_pct(dense_acc), "-") if epoch == 0 and dense_acc is not None else ("-", "-")
        values = " | ".join(f"{history[epoch][n]:.4f}" if n in history[epoch] else "-" for n in names)
        lines.append(f"| {epoch} | {acc} | {penalty} | {values} |")
    lines.append("")
    if len(history) > 1:
        plots.plot_hardness(history, run / "hardness.png")
        lines += ["![hardness per epoch](hardness.png)", ""]
    else:
        lines += ["No chart: there is only one epoch of hardness values.", ""]
    return lines


def _energy_section(run: Path, metrics: RunMetrics) -> list[str]:
    energy = metrics.energy
    lines = ["## Energy (row-stationary accelerator model, batch 1)", ""]
    if energy is None:
        return [*lines, "Skipped: metrics.json holds no energy estimate.", ""]
    lines += [
        f"Dense {energy.dense:.4g}, weight-shared {energy.shared:.4g}: {energy.ratio:.2f}x less"
        " (normalized energy, 1 = one 16-bit MAC).",
        "",
        "| layer | MACs | unique MACs | dense | weight-shared | dense / shared |",
        "|---|---|---|---|---|---|",
    ]
    for layer in energy.layers:
        unique = "-" if layer.unique_macs is None else format(layer.unique_macs, ".4g")
        shared = "-" if layer.shared is None else format(layer.shared, ".4g")
        lines.append(
            f"| {layer.name} | {layer.macs:.4g} | {unique} | {layer.dense:.4g} | {shared} | {layer.ratio:.2f}x |"
        )
    lines.append("")
    if (run / RunFiles.ENERGY_PLOT).is_file():
        lines += [f"![energy breakdown]({RunFiles.ENERGY_PLOT})", ""]
    return lines


def _files_section(run: Path) -> list[str]:
    present = [name for name in RunFiles.LISTED if (run / name).is_file()]
    lines = ["## Files", "", "| file | bytes |", "|---|---|"]
    lines += [f"| `{name}` | {(run / name).stat().st_size} |" for name in present]
    return [*lines, ""]


def write_report(run_dir: str | Path) -> Path:
    """Build ``report.md`` and its figures in ``run_dir`` from the run's files; returns the report's path."""
    files = RunFiles(Path(run_dir))
    metrics = RunMetrics.read(files)
    stages = _stages(files, metrics)
    run = files.root
    lines = [
        *_header(files, metrics),
        *_accuracy_section(metrics, stages),
        *_layers_section(run, stages),
        *_filters_section(run, stages),
        *_rows_section(run, stages),
        *_hardness_section(run, metrics),
        *_energy_section(run, metrics),
        *_files_section(run),
    ]
    path = files / RunFiles.REPORT
    write_atomic(path, ("\n".join(lines).rstrip() + "\n").encode())
    return path
