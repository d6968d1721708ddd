"""The rows, the peer and the page of ``convnet.py`` (beside it): what the driver measures is kept and written here.

The row and run facts are saved as JSON in the work folder, so the page can be rebuilt from them alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from deepkmeans import account
from deepkmeans.data import Batches
from deepkmeans.files.atomic import write_atomic, write_figure
from deepkmeans.report.plots import new_figure
from deepkmeans.train import Loop, evaluate
from deepkmeans.weights import weights_info

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "wrn16_1_mnist": "WRN-16-1 with WRN-16-4's 16 conv layers (the first block of each stage keeps its 1x1 shortcut"
    " conv), no dropout",
    "wrn16_2_mnist": "WRN-16-2 with WRN-16-4's 16 conv layers (the first block of each stage keeps its 1x1 shortcut"
    " conv), no dropout",
    "resnet20_mnist": "ResNet-20 (He et al. 2016: 19 bias-free 3x3 convs, option-A shortcuts, 0.27M parameters)",
    "resnet20": "ResNet-20 (He et al. 2016: 19 bias-free 3x3 convs, option-A shortcuts, 0.27M parameters)",
    "digit_cnn": "two 3x3 conv blocks (32 and 64 channels, max-pooled) and a 3136-128-10 classifier, 0.42M"
    " parameters (95% in the first linear layer)",
}
DATASETS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}
EXTRA_PS = (0.98, 0.99)  # sparsities added for a family whose grid cannot reach a target (scalar sharing at 100x)
PEER_PTQ, PEER_DKM = "f. coremltools post-training k-means", "f. coremltools DKMPalettizer"


@dataclass(frozen=True)
class Facts:
    """What the page says besides the rows, measured once and kept in ``rows.json`` for ``--render``."""

    argv: list[str]
    name: str
    sizes: list[int]  # training and test images
    dense_acc: float
    epoch_seconds: float
    seconds: float
    dense_pr: list[float] | None  # macro precision and recall of a third party's network
    resumed: list[str]  # target sizes whose rows an earlier run made
    step: float | None  # seconds of a WRN-16-4 training step on this machine


@dataclass
class Row:
    """One method at one target size: accuracy per seed and what it costs."""

    method: str
    target: float
    accs: list[float] = field(default_factory=list)
    paper_cr: float = 0.0
    file_cr: float = 0.0
    energy: float = 0.0  # dense / shared energy of the row-stationary model
    seconds: list[float] = field(default_factory=list)
    note: str = ""

    def add(self, acc: float, seconds: float) -> None:
        self.accs.append(acc)
        self.seconds.append(seconds)


def write_json(path: Path, data: object, indent: int | None = 1) -> None:
    """Caches and rows a later run resumes or renders from: written atomically, never left half written."""
    write_atomic(path, json.dumps(data, indent=indent).encode())


def load_target(path: Path) -> dict[str, list[Row]]:
    """Rows of one target size finished by an earlier run with the same work folder (a run resumes there)."""
    if not path.is_file():
        return {}
    return {part: [Row(**r) for r in rows] for part, rows in json.loads(path.read_text()).items()}


def save_target(path: Path, done: dict[str, list[Row]]) -> None:
    write_json(path, {part: [asdict(r) for r in rows] for part, rows in done.items()})


def save_rows(path: Path, facts: Facts, rows: list[Row]) -> None:
    """Everything the page is made of, so that ``--render`` rebuilds it without re-running anything."""
    data = {
        "resumed": facts.resumed,
        "wrn16_4_step_seconds": facts.step,
        "dense_pr": facts.dense_pr,
        "argv": facts.argv,
        "sizes": facts.sizes,
        "name": facts.name,
        "dense_acc": facts.dense_acc,
        "epoch_seconds": facts.epoch_seconds,
        "seconds": facts.seconds,
        "rows": [asdict(r) for r in rows],
    }
    write_json(path, data)


def print_rows(tag: str, rows: list[Row]) -> None:
    for r in rows:
        print(
            f"  {tag} {r.method:<42} {acc_text(r):>16}  paper CR {r.paper_cr:6.1f}x  file CR {r.file_cr:6.1f}x",
            flush=True,
        )


def acc_text(row: Row) -> str:
    mean = 100 * statistics.mean(row.accs)
    if len(row.accs) == 1:
        return f"{mean:.2f}%"
    return f"{mean:.2f}% +- {100 * (max(row.accs) - min(row.accs)) / 2:.2f}"


# ---------------------------------------------------------------------------------------------------------
# coremltools, the peer (optional)


def coreml_bits(model: nn.Module) -> tuple[float, float]:
    """(dense bits, palettized bits) of a coremltools-palettized model under the paper accounting: per
    palettized weight, its LUT (K vectors of cluster_dim values, 32 bits each) + N * H of the vectors' LUT
    indexes; every other parameter dense, normalization layers left out as for ours."""
    dense = float(account(model).bits_before)
    after = dense
    for name, module in model.named_modules():
        lut = dict(module.named_buffers(recurse=False)).get("_COREML_/weight/lut")
        if lut is None:
            continue
        weight = module.weight.detach()
        k, cd = lut.shape[-2], lut.shape[-1]
        if lut.numel() != k * cd:
            raise ValueError(f"{name}: per-group LUTs are not accounted here")
        vectors = weight.movedim(0, -1).reshape(-1, cd)  # cd consecutive output channels at one input position
        codes = torch.cdist(vectors.double(), lut.reshape(k, cd).double()).argmin(dim=1)
        counts = torch.bincount(codes, minlength=k).double()
        probs = counts[counts > 0] / counts.sum()
        entropy = float(-(probs * probs.log2()).sum())
        after -= weight.numel() * 32 - (k * cd * 32 + vectors.shape[0] * entropy)
    return dense, after


def coreml_rows(pretrained: nn.Module, loop: Loop, target: float, d_row: Row) -> list[Row]:
    """Post-training palettization and DKM fine-tuning, at the (n_bits, cluster_dim) closest to ``target``."""
    try:
        import coremltools.optimize.torch.palettization as pal
    except ImportError:
        return [Row("f. coremltools palettization", target, note="coremltools not installed: skipped")]
    import logging

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    best = None
    for n_bits in (1, 2, 3, 4):
        for cd in (1, 2, 4, 8):
            config = pal.PostTrainingPalettizerConfig.from_dict(
                {"global_config": {"n_bits": n_bits, "cluster_dim": cd, "granularity": "per_tensor"}}
            )
            t = time.perf_counter()
            model = pal.PostTrainingPalettizer(copy.deepcopy(pretrained), config).compress()
            took = time.perf_counter() - t
            dense, after = coreml_bits(model)
            if best is None or abs(math.log(dense / after / target)) < abs(math.log(best[0] / target)):
                best = (dense / after, n_bits, cd, model, took)
    cr, n_bits, cd, model, took = best
    _, acc = evaluate(model, loop.test, loop.device)
    note = f"{n_bits}-bit LUT of {cd}-vectors (out channels)" + ("" if abs(cr / target - 1) <= 0.03 else ", off target")
    ptq = Row(PEER_PTQ, target, [acc], cr, 0.0, 0.0, [took], note)
    dkm_row = Row(PEER_DKM, target, note=note)
    budget = statistics.mean(d_row.seconds) if d_row.seconds else 60.0
    # weight_threshold 0: every conv and linear layer palettized, as the post-training palettizer does (the
    # default, 2048, leaves small layers dense and the model far larger than the target)
    config = pal.DKMPalettizerConfig.from_dict(
        {"global_config": {"n_bits": n_bits, "cluster_dim": cd, "weight_threshold": 0}}
    )
    palettizer = pal.DKMPalettizer(copy.deepcopy(pretrained), config)
    prepared = palettizer.prepare()
    opt = torch.optim.SGD(prepared.parameters(), lr=0.005, momentum=0.9)
    t, steps = time.perf_counter(), 0
    prepared.train()
    while time.perf_counter() - t < budget:
        for x, y in loop.train:
            loss = nn.functional.cross_entropy(prepared(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            palettizer.step()
            steps += 1
            if time.perf_counter() - t >= budget:
                break
    final = palettizer.finalize()
    _, acc = evaluate(final, loop.test, loop.device)
    dense, after = coreml_bits(final)
    dkm_row.add(acc, time.perf_counter() - t)
    dkm_row.paper_cr = dense / after
    dkm_row.note += f"; {steps} steps ({steps * loop.train.batch_size / len(loop.train.x):.2f} epochs) in d's wall time"
    for r in (ptq, dkm_row):
        print(f"  {target:g}x {r.method:<42} {acc_text(r):>16}  paper CR {r.paper_cr:6.1f}x  ({r.note})", flush=True)
    return [ptq, dkm_row]


def plot_errors(rows: list[Row], dense_acc: float, path: Path, name: str, dataset: str) -> None:
    fig = new_figure(8.5, 5.0)
    ax = fig.add_subplot()
    ax.axhline(100 * (1 - dense_acc), color="gray", ls="--", lw=1, label=f"dense: {100 * (1 - dense_acc):.2f}%")
    methods = list(dict.fromkeys(r.method for r in rows if r.accs))
    for i, method in enumerate(methods):
        points = [r for r in rows if r.method == method and r.accs]
        xs = [r.paper_cr for r in points]
        ys = [100 * (1 - statistics.mean(r.accs)) for r in points]
        errs = [100 * (max(r.accs) - min(r.accs)) / 2 for r in points]
        ax.errorbar(xs, ys, yerr=errs, marker="os^vDPX*"[i % 8], capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("paper-accounting compression ratio")
    ax.set_ylabel(f"test error (%), {DATASETS[dataset]}")
    ax.set_title(f"{name} on {DATASETS[dataset]}: test error vs size (lower left is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    write_figure(fig, path, 110)


def default_out(s: argparse.Namespace) -> Path:
    if s.weights:
        return ROOT / "docs" / f"pretrained_{s.weights}.md"
    return ROOT / "docs" / ("convnet.md" if s.dataset == "mnist" else f"convnet_{s.dataset}.md")


def intro(s: argparse.Namespace, facts: Facts) -> list[str]:
    """What network, trained by whom on what, and which images each choice and figure comes from."""
    data = DATASETS[s.dataset]
    subset = (
        f"the first {s.val_images:,} of the {s.validation:,}"
        if s.val_images < s.validation
        else f"the {s.validation:,}"
    )
    tuned = (
        f"per-layer K and p chosen by `deepkmeans tune` on {subset}"
        f" held-out training images, for each target size (when a family's grid cannot reach a target, p in"
        f" {EXTRA_PS} join its grid)"
    )
    test = f"the test set ({facts.sizes[1]:,} images) is used only for the figures below."
    if s.weights:
        info = weights_info(s.weights)
        precision, recall = facts.dense_pr or (float("nan"), float("nan"))
        return [
            f"# A network trained by someone else: Deep k-Means against scalar sharing and a peer ({data})",
            "",
            f"`{facts.name}`: {MODELS[facts.name]}. **Weights: {info.source}**, loaded as shipped (`deepkmeans import"
            f" {s.weights}`; no pre-training here). Published: {info.published}. Measured here on the same test"
            f" set: accuracy {100 * facts.dense_acc:.2f}%, macro precision {precision:.4f}, macro recall {recall:.4f}.",
            "",
            f"Re-training and fine-tuning use the first {facts.sizes[0]:,} training images; {tuned}. The publisher"
            " trained on all 60,000 training images, so those validation images were part of its training: choices"
            " made on them are optimistic, which can only favour the methods that tune on them (all rows but f);"
            f" {test}",
        ]
    return [
        f"# Conv filter rows in a residual network: Deep k-Means against scalar sharing and a peer ({data})",
        "",
        f"**{data}{', not CIFAR-10' if s.dataset != 'cifar10' else ''}.** `{facts.name}`: {MODELS[facts.name]},"
        f" {'32x32 colour' if s.dataset == 'cifar10' else '28x28 single-channel'} input. Pre-trained for"
        f" {s.pretrain_epochs} epoch(s) on the first {facts.sizes[0]:,} training images"
        f" ({facts.epoch_seconds:.0f} s per epoch on this 2-core CPU); {tuned}; {test}",
    ]


def macro_precision_recall(model: nn.Module, batches: Batches, device: torch.device) -> tuple[float, float]:
    """Macro-averaged precision and recall of ``model`` on ``batches`` (the figures model cards publish)."""
    model.eval()
    preds, labels = [], []
    with torch.no_grad():
        for x, y in batches:
            preds.append(model(x.to(device)).argmax(1).cpu())
            labels.append(y.cpu())
    pred, label = torch.cat(preds), torch.cat(labels)
    classes = range(int(label.max()) + 1)
    hits = {c: int(((pred == c) & (label == c)).sum()) for c in classes}
    precision = statistics.mean(hits[c] / max(1, int((pred == c).sum())) for c in classes)
    recall = statistics.mean(hits[c] / max(1, int((label == c).sum())) for c in classes)
    return precision, recall


def wrn16_4_step_seconds() -> float:
    """Median time of a WRN-16-4 SGD step at batch 128 on CIFAR-10-sized random images, on this machine."""
    from deepkmeans.models import build_model

    torch.manual_seed(0)
    model = build_model("wrn16_4")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    times = []
    for _ in range(4):
        t = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:])


def cifar_section(step: float | None) -> list[str]:
    """How to run the paper's experiment with this tool, with the measured CPU step time of WRN-16-4."""
    if step is None:
        return ["## The paper's experiment (WRN-16-4 on CIFAR-10)", "", "(Not measured in a quick run.)"]
    epoch = step * math.ceil(50_000 / 128)
    return [
        "## The paper's experiment (WRN-16-4 on CIFAR-10) with this tool",
        "",
        "With the `cifar-10-batches-py` folder in DIR and a GPU (install the PyTorch build for your CUDA first):",
        "",
        "```bash",
        "deepkmeans run configs/wrn16_4_cifar10_cr47.yaml --data-dir DIR   # 200 epochs pre-training, 20 re-training",
        "# optional, per-layer K / p tuned for 47x instead of the preset (needs validation: 5000 in the config):",
        "deepkmeans tune runs/wrn16_4_cifar10_cr47/pretrain.ckpt --config configs/wrn16_4_cifar10_cr47.yaml \\",
        "    --data-dir DIR --target-cr 47 -o tuned47.yaml",
        "```",
        "",
        f"Measured here: one WRN-16-4 training step at batch 128 takes {step:.1f} s on this 2-core CPU, so an epoch of"
        f" CIFAR-10 ({math.ceil(50_000 / 128)} steps) takes ~{epoch / 60:.0f} min and the presets' 220 epochs"
        f" ~{220 * epoch / 3600 / 24:.0f} days: a GPU is needed. Compare the compressed accuracy with the one the"
        " paper reports for the same preset (Wu et al. 2018, WRN-16-4 at 45x / 47x / 50x) and with the dense model"
        " trained by the same config.",
    ]
