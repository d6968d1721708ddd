"""The paper's claim where it lives: sharing 3x3 filter rows in a residual conv net, against scalar sharing and a
peer.

A conv net trained here -- a Wide ResNet-16-k with WRN-16-4's 16 conv layers, or ResNet-20 -- on MNIST,
Fashion-MNIST or CIFAR-10 (given its files: these machines do not have it). One pre-trained model, then at each
target paper-accounting CR, with per-layer K / p chosen by ``tune`` on validation images (the last 5,000 of the
training set, held out of training):
  a. scalar sharing (d = 1, Deep Compression-style k-means), without and with center fine-tuning
  b. row sharing (d = kernel width) without re-training
  c. Deep k-Means re-training with the spectral penalty (identically zero for K >= d), then row sharing
  d. Deep k-Means re-training with the exact k-means penalty, then row sharing
  e. d + center fine-tuning
  f. coremltools optimize.torch palettization (optional): post-training k-means and DKMPalettizer fine-tuned
     for the wall time of d, vector palettization matched to the target size under the same accounting
  g. the frontier stack (docs/frontier.md): 8-bit centers and biases with rate-aware assignment (beta 0.01),
     per-layer K / p tuned at that width, Deep k-Means re-training distilled from the dense model,
     squared-gradient importance in the k-means, center fine-tuning distilled too
Writes the page (docs/convnet.md for MNIST) with the table, an accuracy-vs-CR plot and a reading of the numbers.
With ``--weights NAME`` the network is one trained by a third party (deepkmeans.weights), compressed as it ships:
no pre-training here, and its published figures beside ours (docs/pretrained_NAME.md).

    python benchmarks/convnet.py [--model wrn16_1_mnist] [--dataset mnist] [--seeds 2] [--targets 47,100]
    python benchmarks/convnet.py --model resnet20_mnist --dataset fashion_mnist --targets 20,50 --seeds 1
    python benchmarks/convnet.py --weights ccexam_mnist --targets 50,100
    python benchmarks/convnet.py --quick --data-dir DIR --out /tmp/convnet.md      # smoke run, seconds
    python benchmarks/convnet.py --render      # the page again from runs/convnet/rows.json, nothing re-run
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from deepkmeans import DeepKMeans, account, compress, estimate_energy, measure
from deepkmeans.config import (
    CompressConfig,
    DistillConfig,
    FinetuneConfig,
    LayerSpec,
    RetrainConfig,
    RunConfig,
    TrainConfig,
)
from deepkmeans.data import Batches
from deepkmeans.errors import DeepKMeansError
from deepkmeans.files.atomic import write_atomic, write_figure
from deepkmeans.job.stages import (
    Session,
    compress_and_measure,
    finetune,
    frozen_copy,
    lifecycle,
    model_meta,
    pretrain,
    retrain,
    start_session,
)
from deepkmeans.measure import Measurement
from deepkmeans.models import model_info
from deepkmeans.report.plots import new_figure
from deepkmeans.train import Loop, evaluate
from deepkmeans.tuning import Candidate, Grid, sensitivities, tune
from deepkmeans.weights import WEIGHTS, load_pretrained, weights_info

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
STACK_DISTILL = DistillConfig(weight=0.5, temperature=4.0)
STACK_IMPORTANCE = 64  # training batches whose squared gradients weight the k-means of the frontier stack


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


def _subset(batches: Batches, n: int) -> Batches:
    return Batches(batches.x[:n], batches.y[:n], batches.batch_size, False)


def _measured(row: Row, model: nn.Module, loop: Loop, path: Path, seconds: float, cfg: RunConfig) -> Row:
    """Accuracy of ``model`` read back from its file, both ratios and the energy ratio, added to ``row``."""
    return _record(row, model, measure(model, loop.test, loop.device, save_to=path, meta=model_meta(cfg)), seconds, cfg)


def _record(row: Row, model: nn.Module, m: Measurement, seconds: float, cfg: RunConfig) -> Row:
    row.add(m.test_acc, seconds)
    row.paper_cr, row.file_cr = m.paper_cr, m.file_cr or 0.0
    row.energy = estimate_energy(model, model_info(cfg.model).input_shape).ratio
    return row


def _write_json(path: Path, data: object, indent: int | None = 1) -> None:
    """Caches and rows a later run resumes or renders from: written atomically, never left half written."""
    write_atomic(path, json.dumps(data, indent=indent).encode())


def _retrain(cfg: RunConfig, model: nn.Module, session: Session, seed: int, checkpoint: Path) -> DeepKMeans:
    """Deep k-Means re-training of ``model`` in place by the library's stage (resumable from ``checkpoint``), its
    k-means and batch order seeded by ``seed``; returns the lifecycle whose clusterings compression reuses."""
    torch.manual_seed(seed)
    cfg = replace(cfg, seed=seed, compress=replace(cfg.compress, seed=seed))
    train = copy.copy(session.loop.train)
    train.seed = seed
    seeded = Session(session.rank, replace(session.loop, train=train), session.val)
    dkm = lifecycle(cfg, model, seeded)
    retrain(cfg, model, seeded, checkpoint, model_meta(cfg), dkm=dkm)
    return dkm


def _save_candidates(path: Path, candidates: dict[str, list[Candidate]]) -> None:
    data = {name: [asdict(c) for c in cands] for name, cands in candidates.items()}
    _write_json(path, data, indent=None)


def _load_candidates(path: Path) -> dict[str, list[Candidate]] | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return {
        name: [Candidate(**{**c, "spec": LayerSpec(**c["spec"]) if c["spec"] else None}) for c in cands]
        for name, cands in data.items()
    }


def _sensitivity(model: nn.Module, val: Batches, loop: Loop, grid: Grid, cache: Path) -> dict:
    cands = _load_candidates(cache)
    if cands is None:
        cands = sensitivities(model, val, loop.device, progress=False, grid=grid)
        _save_candidates(cache, cands)
    return cands


# sparsities added for a family whose grid cannot reach a target (scalar sharing of a small network at 100x)
EXTRA_PS = (0.98, 0.99)


def _tuned(pretrained, val, loop, target, family, sens, grids, work) -> CompressConfig:
    """The family's per-layer choice for ``target``; when its grid cannot reach the target, the grid gains the
    sparsities ``EXTRA_PS`` (measured once, cached) and the choice is made again."""
    try:
        return tune(pretrained, val, loop.device, target_cr=target, candidates=sens[family]).config
    except DeepKMeansError as exc:
        print(f"  {family}: {exc}; adding p in {EXTRA_PS}", flush=True)
    grid = replace(grids[family], ps=EXTRA_PS)
    extra = _sensitivity(pretrained, val, loop, grid, work / f"sens_{family}_extra.json")
    merged = {name: sens[family][name] + [c for c in extra[name] if c.spec is not None] for name in sens[family]}
    return tune(pretrained, val, loop.device, target_cr=target, candidates=merged).config


def _load_target(path: Path) -> dict[str, list[Row]]:
    """Rows of one target size finished by an earlier run with the same work folder (a run resumes there)."""
    if not path.is_file():
        return {}
    return {part: [Row(**r) for r in rows] for part, rows in json.loads(path.read_text()).items()}


def _save_target(path: Path, done: dict[str, list[Row]]) -> None:
    _write_json(path, {part: [asdict(r) for r in rows] for part, rows in done.items()})


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.render:
        return _render(args)
    args = _effective(args)
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    name = args.model
    cfg = RunConfig(
        model=name,
        dataset=args.dataset,
        data_dir=args.data_dir,
        out_dir=str(work),
        validation=args.validation,
        train=TrainConfig(epochs=args.pretrain_epochs, batch_size=128, lr=0.05),
        retrain=RetrainConfig(epochs=args.retrain_epochs, batch_size=128, lr=0.01, lam=args.lam, refresh_every=100),
        finetune=FinetuneConfig(epochs=args.finetune_epochs, batch_size=128, lr=args.finetune_lr),
    )
    session = start_session(cfg, cfg.train.batch_size, args.limit, progress=False)
    loop, val = session.loop, _subset(session.val, args.val_images)
    args.sizes = [len(loop.train.x), len(loop.test.x)]
    t0 = time.perf_counter()
    if args.weights:
        pretrained, epoch_seconds = load_pretrained(args.weights).to(loop.device), float("nan")
        args.dense_pr = macro_precision_recall(pretrained, loop.test, loop.device)
    else:
        pretrained, log = pretrain(cfg, session, work / "pretrain.ckpt")
        epoch_seconds = statistics.median(e.seconds for e in log) if log else float("nan")
    _, dense_acc = evaluate(pretrained, loop.test, loop.device)
    print(f"{name}: dense test accuracy {100 * dense_acc:.2f}% ({time.perf_counter() - t0:.0f} s)", flush=True)
    grids = {"rows": Grid(args.ks, args.ps), "scalar": Grid(args.ks, args.ps, 1)}
    if not args.skip_stack:
        grids["stack"] = Grid(args.ks, args.ps, widths=(8,), betas=(0.01,))
    sens = {
        family: _sensitivity(pretrained, val, loop, grid, work / f"sens_{family}.json")
        for family, grid in grids.items()
    }
    rows: list[Row] = []
    for target in args.targets:
        cache = work / f"rows_{target:g}x.json"
        done = _load_target(cache)
        if done:
            args.resumed = [*getattr(args, "resumed", []), f"{target:g}x"]
        if "methods" not in done:
            configs = {family: _tuned(pretrained, val, loop, target, family, sens, grids, work) for family in sens}
            done["methods"] = _methods(args, cfg, pretrained, session, configs, target, work)
            _save_target(cache, done)
        rows += done["methods"]
        if not args.skip_stack:
            if "stack" not in done:
                configs = {"stack": _tuned(pretrained, val, loop, target, "stack", sens, grids, work)}
                done["stack"] = _stack(args, cfg, pretrained, session, configs["stack"], target, work)
                _save_target(cache, done)
            rows += done["stack"]
        if not args.skip_coreml:
            if "coreml" not in done:
                done["coreml"] = _coreml_rows(args, pretrained, loop, target, done["methods"][-1])
                _save_target(cache, done)
            rows += done["coreml"]
    seconds = time.perf_counter() - started
    args.step = None if args.quick or args.weights else wrn16_4_step_seconds()
    _save_rows(work / "rows.json", args, argv, name, dense_acc, epoch_seconds, rows, seconds)
    return _write(args, argv, name, dense_acc, epoch_seconds, rows, seconds)


def _save_rows(path: Path, args, argv, name, dense_acc, epoch_seconds, rows, seconds) -> None:
    """Everything the page is made of, so that ``--render`` rebuilds it without re-running anything."""
    data = {
        "resumed": getattr(args, "resumed", []),
        "wrn16_4_step_seconds": args.step,
        "dense_pr": getattr(args, "dense_pr", None),
        "argv": argv,
        "sizes": args.sizes,
        "name": name,
        "dense_acc": dense_acc,
        "epoch_seconds": epoch_seconds,
        "seconds": seconds,
        "rows": [asdict(r) for r in rows],
    }
    _write_json(path, data)


def _render(args: argparse.Namespace) -> Path:
    saved = Path(args.work) / "rows.json"
    if not saved.is_file():
        raise SystemExit(f"convnet.py: {saved}: no rows of an earlier run to render (run the benchmark first)")
    data = json.loads(saved.read_text())
    run_args = _effective(_parser().parse_args(data["argv"]))
    run_args.out = args.out
    run_args.resumed = data.get("resumed", [])
    if "wrn16_4_step_seconds" not in data:  # rows of a run made before the step time was kept
        data["wrn16_4_step_seconds"] = None if run_args.quick else wrn16_4_step_seconds()
        _write_json(saved, data)
    run_args.step = data["wrn16_4_step_seconds"]
    run_args.sizes = data["sizes"]
    run_args.dense_pr = data.get("dense_pr")
    rows = [Row(**r) for r in data["rows"]]
    return _write(run_args, data["argv"], data["name"], data["dense_acc"], data["epoch_seconds"], rows, data["seconds"])


def _effective(args: argparse.Namespace) -> argparse.Namespace:
    """The settings a run uses: ``--weights`` sets the model and data set, ``--quick`` overrides the epochs, seeds
    and the peer."""
    if args.weights:
        info = weights_info(args.weights)
        args = argparse.Namespace(**{**vars(args), "model": info.model, "dataset": info.dataset})
    if not args.quick:
        return args
    quick = {"pretrain_epochs": 1, "retrain_epochs": 1, "finetune_epochs": 1, "seeds": 1, "skip_coreml": True}
    return argparse.Namespace(**{**vars(args), **quick})


def _methods(args, cfg, pretrained, session, configs, target, work) -> list[Row]:
    """Rows a to e at one target size."""
    tag, loop = f"{target:g}x", session.loop

    def measured(row: Row, model: nn.Module, file: str, seconds: float) -> Row:
        return _measured(row, model, loop, work / file, seconds, cfg)

    rows = []
    t = time.perf_counter()
    scalar = compress(pretrained, replace(configs["scalar"], seed=0))
    rows.append(measured(Row("a. scalar sharing (d = 1)", target), scalar, f"a_{tag}.dkm", time.perf_counter() - t))
    t = time.perf_counter()
    finetune(replace(cfg, compress=configs["scalar"]), scalar, loop, work / f"a_ft_{tag}.ckpt", {})
    row = Row("a. scalar sharing + center fine-tuning", target)
    rows.append(measured(row, scalar, f"a_ft_{tag}.dkm", time.perf_counter() - t))
    t = time.perf_counter()
    rowshared = compress(pretrained, replace(configs["rows"], seed=0))
    row = Row("b. row sharing (d = kernel width)", target)
    rows.append(measured(row, rowshared, f"b_{tag}.dkm", time.perf_counter() - t))
    for method, label in (
        ("spectral", "c. Deep k-Means, spectral penalty"),
        ("kmeans", "d. Deep k-Means, k-means penalty"),
    ):
        row, tuned = Row(label, target), Row("e. d + center fine-tuning", target)
        for seed in range(args.seeds):
            model = copy.deepcopy(pretrained)
            t = time.perf_counter()
            rcfg = replace(cfg, compress=configs["rows"], retrain=replace(cfg.retrain, method=method))
            dkm = _retrain(rcfg, model, session, seed, work / f"{method}_{tag}_{seed}.ckpt")
            shared = dkm.finalize()
            took = time.perf_counter() - t
            measured(row, shared, f"{method}_{tag}_{seed}.dkm", took)
            if method == "kmeans":
                t = time.perf_counter()
                finetune(cfg, shared, loop, work / f"e_{tag}_{seed}.ckpt", {})
                measured(tuned, shared, f"e_{tag}_{seed}.dkm", took + time.perf_counter() - t)
        rows.append(row)
        if method == "kmeans":
            rows.append(tuned)
    _print(tag, rows)
    return rows


def _print(tag: str, rows: list[Row]) -> None:
    for r in rows:
        print(
            f"  {tag} {r.method:<42} {_acc(r):>16}  paper CR {r.paper_cr:6.1f}x  file CR {r.file_cr:6.1f}x", flush=True
        )


def _stack(args, cfg, pretrained, session, layers: CompressConfig, target, work) -> list[Row]:
    """Row g at one target size: the frontier stack, per-layer K / p tuned at 8 bits with beta 0.01, re-trained
    with the exact k-means penalty distilled from the dense model, compressed with squared-gradient importance,
    then center fine-tuned with distillation; each step by the library's own stages."""
    tag, loop = f"{target:g}x", session.loop
    cfg = replace(
        cfg,
        compress=layers,
        importance=STACK_IMPORTANCE,
        retrain=replace(cfg.retrain, method="kmeans", distill=STACK_DISTILL),
        finetune=replace(cfg.finetune, distill=STACK_DISTILL),
    )
    retrained = Row("g. frontier stack, re-trained", target)
    tuned = Row("g. frontier stack + center fine-tuning", target)
    teacher = frozen_copy(pretrained)
    for seed in range(args.seeds):
        model = copy.deepcopy(pretrained)
        t = time.perf_counter()
        dkm = _retrain(cfg, model, session, seed, work / f"g_{tag}_{seed}.ckpt")
        seeded = replace(cfg, compress=replace(cfg.compress, seed=seed))
        shared, m = compress_and_measure(model, seeded, loop, work / f"g_{tag}_{seed}.dkm", model_meta(cfg), dkm=dkm)
        took = time.perf_counter() - t
        _record(retrained, shared, m, took, cfg)
        t = time.perf_counter()
        finetune(cfg, shared, loop, work / f"g_ft_{tag}_{seed}.ckpt", {}, teacher=teacher.to(loop.device))
        _measured(tuned, shared, loop, work / f"g_ft_{tag}_{seed}.dkm", took + time.perf_counter() - t, cfg)
    _print(tag, [retrained, tuned])
    return [retrained, tuned]


def _acc(row: Row) -> str:
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


def _coreml_rows(args, pretrained, loop, target, d_row) -> list[Row]:
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
    ptq = Row("f. coremltools post-training k-means", target, [acc], cr, 0.0, 0.0, [took], note)
    dkm_row = Row("f. coremltools DKMPalettizer", target, note=note)
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
        print(f"  {target:g}x {r.method:<42} {_acc(r):>16}  paper CR {r.paper_cr:6.1f}x  ({r.note})", flush=True)
    return [ptq, dkm_row]


# ---------------------------------------------------------------------------------------------------------
# the page


def _plot(rows: list[Row], dense_acc: float, path: Path, name: str, dataset: str) -> None:
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


def _reading(rows: list[Row], targets: list[float]) -> list[str]:
    """Sentences read off the table (never written by hand, so they cannot drift from the numbers)."""
    lines = []
    for target in targets:
        at = {r.method: r for r in rows if r.target == target and r.accs}
        err = {m: 100 * (1 - statistics.mean(r.accs)) for m, r in at.items()}
        best = min(err, key=err.get)
        lines.append(f"- At ~{target:g}x the lowest test error is **{best}** ({err[best]:.2f}%).")
        scalar, rows_ = err.get("a. scalar sharing (d = 1)"), err.get("b. row sharing (d = kernel width)")
        if scalar is not None and rows_ is not None:
            verdict = "beats" if rows_ < scalar else "does not beat"
            lines.append(
                f"  Without re-training, row sharing {verdict} scalar sharing at this size"
                f" ({rows_:.2f}% vs {scalar:.2f}% error)."
            )
            if min(scalar, rows_) > 50:
                lines.append(
                    "  Both leave the network near chance: clustering alone, with no training after it, is"
                    " not enough for a network this small at this size; the rows below that train after"
                    " (center fine-tuning) or before (Deep k-Means) the clustering are the ones that count."
                )
        ea, eb = at.get("a. scalar sharing (d = 1)"), at.get("b. row sharing (d = kernel width)")
        if ea is not None and eb is not None and ea.energy and eb.energy:
            lines.append(
                f"  Modelled energy at this size: row sharing {eb.energy:.2f}x less than dense, scalar sharing"
                f" {ea.energy:.2f}x (scalar sharing shrinks the weight traffic, row sharing also lets each shared"
                " row's 1-D convolutions be computed once)."
            )
        spectral, kmeans = err.get("c. Deep k-Means, spectral penalty"), err.get("d. Deep k-Means, k-means penalty")
        if spectral is not None and kmeans is not None:
            lines.append(
                f"  Re-training with the exact k-means penalty gives {kmeans:.2f}% error, the spectral penalty"
                f" {spectral:.2f}% (it is zero for every layer with K >= d = 3, so it is plain fine-tuning there)."
            )
        tuned, scalar_ft = err.get("e. d + center fine-tuning"), err.get("a. scalar sharing + center fine-tuning")
        if tuned is not None and scalar_ft is not None:
            verdict = "beats" if tuned < scalar_ft else "does not beat"
            lines.append(
                f"  With every stage applied, row sharing after Deep k-Means and center fine-tuning {verdict} scalar"
                f" sharing with center fine-tuning ({tuned:.2f}% vs {scalar_ft:.2f}% error)."
            )
        stack = err.get("g. frontier stack + center fine-tuning")
        if stack is not None and tuned is not None:
            verdict = "beats" if stack < tuned else "does not beat"
            lines.append(
                f"  The frontier stack (8-bit, beta, distillation, importance) after center fine-tuning {verdict}"
                f" Deep k-Means + center fine-tuning at 32 bits ({stack:.2f}% vs {tuned:.2f}% error, at"
                f" {at['g. frontier stack + center fine-tuning'].paper_cr:.1f}x vs"
                f" {at['e. d + center fine-tuning'].paper_cr:.1f}x)."
            )
        for peer in ("f. coremltools post-training k-means", "f. coremltools DKMPalettizer"):
            if peer in err and kmeans is not None:
                r = at[peer]
                lines.append(
                    f"  {peer[3:]}: {err[peer]:.2f}% error at {r.paper_cr:.1f}x (Deep k-Means: {kmeans:.2f}% at"
                    f" {at['d. Deep k-Means, k-means penalty'].paper_cr:.1f}x)."
                )
    return lines


def _default_out(args: argparse.Namespace) -> Path:
    if args.weights:
        return ROOT / "docs" / f"pretrained_{args.weights}.md"
    return ROOT / "docs" / ("convnet.md" if args.dataset == "mnist" else f"convnet_{args.dataset}.md")


def _intro(args, name: str, dense_acc: float, epoch_seconds: float) -> list[str]:
    """What network, trained by whom on what, and which images each choice and figure comes from."""
    data = DATASETS[args.dataset]
    subset = (
        f"the first {args.val_images:,} of the {args.validation:,}"
        if args.val_images < args.validation
        else f"the {args.validation:,}"
    )
    tuned = (
        f"per-layer K and p chosen by `deepkmeans tune` on {subset}"
        f" held-out training images, for each target size (when a family's grid cannot reach a target, p in"
        f" {EXTRA_PS} join its grid)"
    )
    test = f"the test set ({args.sizes[1]:,} images) is used only for the figures below."
    if args.weights:
        info = weights_info(args.weights)
        precision, recall = args.dense_pr or (float("nan"), float("nan"))
        return [
            f"# A network trained by someone else: Deep k-Means against scalar sharing and a peer ({data})",
            "",
            f"`{name}`: {MODELS[name]}. **Weights: {info.source}**, loaded as shipped (`deepkmeans import"
            f" {args.weights}`; no pre-training here). Published: {info.published}. Measured here on the same test"
            f" set: accuracy {100 * dense_acc:.2f}%, macro precision {precision:.4f}, macro recall {recall:.4f}.",
            "",
            f"Re-training and fine-tuning use the first {args.sizes[0]:,} training images; {tuned}. The publisher"
            " trained on all 60,000 training images, so those validation images were part of its training: choices"
            " made on them are optimistic, which can only favour the methods that tune on them (all rows but f);"
            f" {test}",
        ]
    return [
        f"# Conv filter rows in a residual network: Deep k-Means against scalar sharing and a peer ({data})",
        "",
        f"**{data}{', not CIFAR-10' if args.dataset != 'cifar10' else ''}.** `{name}`: {MODELS[name]},"
        f" {'32x32 colour' if args.dataset == 'cifar10' else '28x28 single-channel'} input. Pre-trained for"
        f" {args.pretrain_epochs} epoch(s) on the first {args.sizes[0]:,} training images"
        f" ({epoch_seconds:.0f} s per epoch on this 2-core CPU); {tuned}; {test}",
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


def _write(args, argv, name: str, dense_acc: float, epoch_seconds: float, rows: list[Row], seconds: float) -> Path:
    out = Path(args.out or _default_out(args))
    plot = out.with_suffix(".png")
    _plot(rows, dense_acc, plot, name, args.dataset)
    command = " ".join(["python benchmarks/convnet.py", *argv])
    lines = [
        *_intro(args, name, dense_acc, epoch_seconds),
        "",
        f"Generated by `{command.strip()}` in {seconds / 60:.0f} min"
        + (
            f" (resuming the rows at {', '.join(args.resumed)} from an earlier run in the same work folder; their"
            " wall times are that run's)."
            if getattr(args, "resumed", None)
            else "."
        ),
        "",
        "| target | method | test accuracy (mean +- half range over seeds) | seeds | paper CR | file CR"
        " | energy dense / shared | wall time | note |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| - | dense | {100 * dense_acc:.2f}% | 1 | 1x | 1x | 1x | - | |",
    ]
    for r in rows:
        if not r.accs:
            lines.append(f"| {r.target:g}x | {r.method} | - | - | - | - | - | - | {r.note} |")
            continue
        file_cr = f"{r.file_cr:.1f}x" if r.file_cr else "-"
        energy = f"{r.energy:.2f}x" if r.energy else "-"
        lines.append(
            f"| {r.target:g}x | {r.method} | {_acc(r)} | {len(r.accs)} | {r.paper_cr:.1f}x | {file_cr} | {energy}"
            f" | {statistics.mean(r.seconds):.0f} s | {r.note} |"
        )
    lines += [
        "",
        f"![test error vs compression ratio]({plot.name})",
        "",
        "Wall time: the method's own work (re-training, compression, fine-tuning), not the shared pre-training."
        " Retraining rows: seeds set the k-means seed and the batch order. File CR: dense state dict bytes / the"
        " .dkm file. Energy: the row-stationary model at batch 1 (`deepkmeans energy`). Training budgets differ"
        f" by design: a + center fine-tuning trains {args.finetune_epochs} epoch(s), c and d"
        f" {args.retrain_epochs}, e and g {args.retrain_epochs + args.finetune_epochs}; DKMPalettizer trains for"
        " d's wall time. The frontier stack (g) stores centers and biases in 8 bits, so its K / p are tuned at that"
        " width for the same target size.",
        "",
        "## Reading",
        "",
        *_reading(rows, args.targets),
        "",
        *([] if args.weights else _cifar_section(args.step)),
    ]
    write_atomic(out, ("\n".join(lines) + "\n").encode())
    print(f"wrote {out} and {plot}")
    return out


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


def _cifar_section(step: float | None) -> list[str]:
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="wrn16_1_mnist", choices=list(MODELS))
    p.add_argument(
        "--weights", choices=list(WEIGHTS), help="compress a third party's trained network (sets --model, --dataset)"
    )
    p.add_argument("--dataset", default="mnist", choices=list(DATASETS))
    p.add_argument("--targets", type=lambda s: [float(v) for v in s.split(",")], default=[47.0, 100.0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--pretrain-epochs", type=int, default=4)
    p.add_argument("--retrain-epochs", type=int, default=2)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-lr", type=float, default=0.0005)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--validation", type=int, default=5000)
    p.add_argument("--val-images", type=int, default=5000, help="validation images tune checks on")
    p.add_argument("--ks", type=lambda s: tuple(int(v) for v in s.split(",")), default=(4, 8, 16, 32, 64))
    p.add_argument("--ps", type=lambda s: tuple(float(v) for v in s.split(",")), default=(0.0, 0.5, 0.8, 0.95))
    p.add_argument("--limit", type=int, help="use only the first N training and test images (smoke runs)")
    p.add_argument("--data-dir", help="the data set's standard files (default for MNIST/Fashion-MNIST: the cache)")
    p.add_argument("--work", default=str(ROOT / "runs" / "convnet"))
    p.add_argument("--out", help="the page (default: docs/convnet.md for MNIST, docs/convnet_DATASET.md otherwise)")
    p.add_argument("--skip-coreml", action="store_true")
    p.add_argument("--skip-stack", action="store_true", help="leave out g, the frontier stack")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 epoch per stage, one seed, no peer")
    p.add_argument("--render", action="store_true", help="rebuild the page from WORK/rows.json of an earlier run")
    return p


if __name__ == "__main__":
    main()
