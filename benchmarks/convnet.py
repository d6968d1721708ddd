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
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from torch import nn

from deepkmeans import DeepKMeans, compress, estimate_energy, measure
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
from deepkmeans.files.atomic import write_atomic
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
from deepkmeans.train import evaluate
from deepkmeans.tuning import Candidate, Grid, sensitivities, tune
from deepkmeans.weights import WEIGHTS, load_pretrained, weights_info

sys.path.insert(0, str(Path(__file__).resolve().parent))  # convnet_page.py beside it, however this file is loaded
from convnet_page import (
    DATASETS,
    EXTRA_PS,
    MODELS,
    PEER_DKM,
    PEER_PTQ,
    ROOT,
    Facts,
    Row,
    acc_text,
    cifar_section,
    coreml_rows,
    default_out,
    intro,
    load_target,
    macro_precision_recall,
    plot_errors,
    print_rows,
    save_rows,
    save_target,
    write_json,
    wrn16_4_step_seconds,
)

STACK_DISTILL = DistillConfig(weight=0.5, temperature=4.0)
STACK_IMPORTANCE = 64  # training batches whose squared gradients weight the k-means of the frontier stack
QUICK = {"pretrain_epochs": 1, "retrain_epochs": 1, "finetune_epochs": 1, "seeds": 1, "skip_coreml": True}


def _effective(args: argparse.Namespace) -> argparse.Namespace:
    """The settings a run uses, as a new namespace: ``--weights`` sets the model and data set, ``--quick`` the
    epochs, seeds and the peer."""
    if args.weights:
        info = weights_info(args.weights)
        args = argparse.Namespace(**{**vars(args), "model": info.model, "dataset": info.dataset})
    return argparse.Namespace(**{**vars(args), **QUICK}) if args.quick else args


@dataclass(frozen=True)
class Family:
    """Methods that compress with one per-layer choice: the grid ``tune`` chooses from, and their run config."""

    name: str
    grid: Callable[[argparse.Namespace], Grid]
    config: Callable[[RunConfig, CompressConfig], RunConfig]


def _plain(cfg: RunConfig, layers: CompressConfig) -> RunConfig:
    return replace(cfg, compress=layers)


def _stacked(cfg: RunConfig, layers: CompressConfig) -> RunConfig:
    """The frontier stack: re-trained with the exact k-means penalty distilled from the dense model, compressed
    with squared-gradient importance, center fine-tuned with distillation."""
    retrain = replace(cfg.retrain, method="kmeans", distill=STACK_DISTILL)
    finetune = replace(cfg.finetune, distill=STACK_DISTILL)
    return replace(cfg, compress=layers, importance=STACK_IMPORTANCE, retrain=retrain, finetune=finetune)


SCALAR = Family("scalar", lambda s: Grid(s.ks, s.ps, 1), _plain)
ROWS = Family("rows", lambda s: Grid(s.ks, s.ps), _plain)
STACK = Family("stack", lambda s: Grid(s.ks, s.ps, widths=(8,), betas=(0.01,)), _stacked)


@dataclass
class Bench:
    """One pre-trained model and what every method at one target size starts from."""

    settings: argparse.Namespace
    cfg: RunConfig
    session: Session
    pretrained: nn.Module
    teacher: nn.Module
    work: Path
    layers: dict[Family, CompressConfig] = field(default_factory=dict)  # tuned for the current target

    def config(self, family: Family) -> RunConfig:
        return family.config(self.cfg, self.layers[family])


@dataclass
class Made:
    """A method's model, the wall time it took, and its measurement where making it measured it."""

    model: nn.Module
    seconds: float
    measured: Measurement | None = None


@dataclass(frozen=True)
class Method:
    """One row of the table: its label, the work-folder files it writes (``file``), the part of a target's rows
    it is cached with, its family, and how its model is made: from the pre-trained one or, for a method that
    ``follows``, from the model of the method before it (adding that one's wall time when ``base_time``)."""

    label: str
    file: str
    part: str
    family: Family
    make: Callable[[Bench, Family, Made | None, int, str], Made]
    seeded: bool = True
    follows: bool = False
    base_time: bool = True


def _compressed(bench: Bench, family: Family, base: Made | None, seed: int, stem: str) -> Made:
    t = time.perf_counter()
    return Made(compress(bench.pretrained, replace(bench.layers[family], seed=0)), time.perf_counter() - t)


def _retrained(penalty: str, bench: Bench, family: Family, base: Made | None, seed: int, stem: str) -> Made:
    t = time.perf_counter()
    cfg = bench.config(family)
    cfg = replace(cfg, retrain=replace(cfg.retrain, method=penalty))
    dkm = _retrain(cfg, copy.deepcopy(bench.pretrained), bench.session, seed, bench.work / f"{stem}.ckpt")
    return Made(dkm.finalize(), time.perf_counter() - t)


def _stack_retrained(bench: Bench, family: Family, base: Made | None, seed: int, stem: str) -> Made:
    t = time.perf_counter()
    cfg, model = bench.config(family), copy.deepcopy(bench.pretrained)
    dkm = _retrain(cfg, model, bench.session, seed, bench.work / f"{stem}.ckpt")
    seeded = replace(cfg, compress=replace(cfg.compress, seed=seed))
    path = bench.work / f"{stem}.dkm"
    shared, m = compress_and_measure(model, seeded, bench.session.loop, path, model_meta(cfg), dkm=dkm)
    return Made(shared, time.perf_counter() - t, m)


def _finetuned(bench: Bench, family: Family, base: Made | None, seed: int, stem: str) -> Made:
    """Center fine-tuning of the model before, in place (distilled from the dense model where the family says)."""
    t, loop = time.perf_counter(), bench.session.loop
    finetune(
        bench.config(family), base.model, loop, bench.work / f"{stem}.ckpt", {}, teacher=bench.teacher.to(loop.device)
    )
    return Made(base.model, time.perf_counter() - t)


MAIN, STACK_PART = "methods", "stack"  # the parts of a target's rows, each cached once made
METHODS: tuple[Method, ...] = (
    Method("a. scalar sharing (d = 1)", "a", MAIN, SCALAR, _compressed, seeded=False),
    Method(
        "a. scalar sharing + center fine-tuning",
        "a_ft",
        MAIN,
        SCALAR,
        _finetuned,
        seeded=False,
        follows=True,
        base_time=False,
    ),
    Method("b. row sharing (d = kernel width)", "b", MAIN, ROWS, _compressed, seeded=False),
    Method("c. Deep k-Means, spectral penalty", "spectral", MAIN, ROWS, partial(_retrained, "spectral")),
    Method("d. Deep k-Means, k-means penalty", "kmeans", MAIN, ROWS, partial(_retrained, "kmeans")),
    Method("e. d + center fine-tuning", "e", MAIN, ROWS, _finetuned, follows=True),
    Method("g. frontier stack, re-trained", "g", STACK_PART, STACK, _stack_retrained),
    Method("g. frontier stack + center fine-tuning", "g_ft", STACK_PART, STACK, _finetuned, follows=True),
)
A, A_FT, B, C, D, E, G, G_FT = METHODS


def _subset(batches: Batches, n: int) -> Batches:
    return Batches(batches.x[:n], batches.y[:n], batches.batch_size, False)


def _record(row: Row, made: Made, bench: Bench, path: Path) -> None:
    """Accuracy of the model read back from its file, both ratios and the energy ratio, added to ``row``."""
    cfg, loop = bench.cfg, bench.session.loop
    m = made.measured or measure(made.model, loop.test, loop.device, save_to=path, meta=model_meta(cfg))
    row.add(m.test_acc, made.seconds)
    row.paper_cr, row.file_cr = m.paper_cr, m.file_cr or 0.0
    row.energy = estimate_energy(made.model, model_info(cfg.model).input_shape).ratio


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


def _sensitivity(bench: Bench, val: Batches, grid: Grid, cache: Path) -> dict[str, list[Candidate]]:
    """The candidates of ``grid`` measured on ``val``, cached in ``cache``."""
    if cache.is_file():
        data = json.loads(cache.read_text())
        return {
            name: [Candidate(**{**c, "spec": LayerSpec(**c["spec"]) if c["spec"] else None}) for c in cands]
            for name, cands in data.items()
        }
    cands = sensitivities(bench.pretrained, val, bench.session.loop.device, progress=False, grid=grid)
    write_json(cache, {name: [asdict(c) for c in cs] for name, cs in cands.items()}, indent=None)
    return cands


def _tuned(bench: Bench, val: Batches, target: float, family: Family, sens: dict) -> CompressConfig:
    """The family's per-layer choice for ``target``; when its grid cannot reach the target, the grid gains the
    sparsities ``EXTRA_PS`` (measured once, cached) and the choice is made again."""
    device = bench.session.loop.device
    try:
        return tune(bench.pretrained, val, device, target_cr=target, candidates=sens[family]).config
    except DeepKMeansError as exc:
        print(f"  {family.name}: {exc}; adding p in {EXTRA_PS}", flush=True)
    grid = replace(family.grid(bench.settings), ps=EXTRA_PS)
    extra = _sensitivity(bench, val, grid, bench.work / f"sens_{family.name}_extra.json")
    merged = {name: sens[family][name] + [c for c in extra[name] if c.spec is not None] for name in sens[family]}
    return tune(bench.pretrained, val, device, target_cr=target, candidates=merged).config


def _chains(methods: list[Method]) -> list[list[Method]]:
    """Methods grouped with the ones that follow them, in order."""
    chains: list[list[Method]] = []
    for method in methods:
        if method.follows and chains:
            chains[-1].append(method)
        else:
            chains.append([method])
    return chains


def _part(bench: Bench, methods: list[Method], target: float) -> list[Row]:
    """The rows of ``methods`` at one target size; each chain runs once per seed when re-trained, else once."""
    tag = f"{target:g}x"
    rows = {m: Row(m.label, target) for m in methods}
    for chain in _chains(methods):
        for seed in range(bench.settings.seeds if chain[0].seeded else 1):
            made = None
            for m in chain:
                stem = f"{m.file}_{tag}_{seed}" if m.seeded else f"{m.file}_{tag}"
                now = m.make(bench, m.family, made, seed, stem)
                now.seconds += made.seconds if m.follows and m.base_time else 0.0
                _record(rows[m], now, bench, bench.work / f"{stem}.dkm")
                made = now
    print_rows(tag, list(rows.values()))
    return list(rows.values())


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.render:
        return _render(_effective(args))
    s = _effective(args)
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    work = Path(s.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = RunConfig(
        model=s.model,
        dataset=s.dataset,
        data_dir=s.data_dir,
        out_dir=str(work),
        validation=s.validation,
        train=TrainConfig(epochs=s.pretrain_epochs, batch_size=128, lr=0.05),
        retrain=RetrainConfig(epochs=s.retrain_epochs, batch_size=128, lr=0.01, lam=s.lam, refresh_every=100),
        finetune=FinetuneConfig(epochs=s.finetune_epochs, batch_size=128, lr=s.finetune_lr),
    )
    session = start_session(cfg, cfg.train.batch_size, s.limit, progress=False)
    loop, val = session.loop, _subset(session.val, s.val_images)
    t0, dense_pr = time.perf_counter(), None
    if s.weights:
        pretrained, epoch_seconds = load_pretrained(s.weights).to(loop.device), float("nan")
        dense_pr = list(macro_precision_recall(pretrained, loop.test, loop.device))
    else:
        pretrained, log = pretrain(cfg, session, work / "pretrain.ckpt")
        epoch_seconds = statistics.median(e.seconds for e in log) if log else float("nan")
    _, dense_acc = evaluate(pretrained, loop.test, loop.device)
    print(f"{s.model}: dense test accuracy {100 * dense_acc:.2f}% ({time.perf_counter() - t0:.0f} s)", flush=True)
    bench = Bench(s, cfg, session, pretrained, frozen_copy(pretrained), work)
    methods = [m for m in METHODS if not (s.skip_stack and m.family is STACK)]
    families = list(dict.fromkeys(m.family for m in methods))
    sens = {f: _sensitivity(bench, val, f.grid(s), work / f"sens_{f.name}.json") for f in families}
    rows, resumed = [], []
    for target in s.targets:
        cache = work / f"rows_{target:g}x.json"
        done = load_target(cache)
        resumed += [f"{target:g}x"] if done else []
        for part in dict.fromkeys(m.part for m in methods):
            if part not in done:
                in_part = [m for m in methods if m.part == part]
                bench.layers = {
                    f: _tuned(bench, val, target, f, sens) for f in dict.fromkeys(m.family for m in in_part)
                }
                done[part] = _part(bench, in_part, target)
                save_target(cache, done)
            rows += done[part]
        if not s.skip_coreml:
            if "coreml" not in done:
                done["coreml"] = coreml_rows(pretrained, loop, target, done[MAIN][-1])
                save_target(cache, done)
            rows += done["coreml"]
    step = None if s.quick or s.weights else wrn16_4_step_seconds()
    sizes = [len(loop.train.x), len(loop.test.x)]
    facts = Facts(
        argv, s.model, sizes, dense_acc, epoch_seconds, time.perf_counter() - started, dense_pr, resumed, step
    )
    save_rows(work / "rows.json", facts, rows)
    return _write(s, facts, rows)


def _render(settings: argparse.Namespace) -> Path:
    saved = Path(settings.work) / "rows.json"
    if not saved.is_file():
        raise SystemExit(f"convnet.py: {saved}: no rows of an earlier run to render (run the benchmark first)")
    data = json.loads(saved.read_text())
    run = argparse.Namespace(**{**vars(_effective(_parser().parse_args(data["argv"]))), "out": settings.out})
    if "wrn16_4_step_seconds" not in data:  # rows of a run made before the step time was kept
        data["wrn16_4_step_seconds"] = None if run.quick else wrn16_4_step_seconds()
        write_json(saved, data)
    facts = Facts(
        data["argv"],
        data["name"],
        data["sizes"],
        data["dense_acc"],
        data["epoch_seconds"],
        data["seconds"],
        data.get("dense_pr"),
        data.get("resumed", []),
        data["wrn16_4_step_seconds"],
    )
    return _write(run, facts, [Row(**r) for r in data["rows"]])


def _reading(rows: list[Row], targets: list[float]) -> list[str]:
    """Sentences read off the table (never written by hand, so they cannot drift from the numbers)."""
    lines = []
    for target in targets:
        at = {r.method: r for r in rows if r.target == target and r.accs}
        err = {m: 100 * (1 - statistics.mean(r.accs)) for m, r in at.items()}
        best = min(err, key=err.get)
        lines.append(f"- At ~{target:g}x the lowest test error is **{best}** ({err[best]:.2f}%).")
        scalar, rows_ = err.get(A.label), err.get(B.label)
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
        ea, eb = at.get(A.label), at.get(B.label)
        if ea is not None and eb is not None and ea.energy and eb.energy:
            lines.append(
                f"  Modelled energy at this size: row sharing {eb.energy:.2f}x less than dense, scalar sharing"
                f" {ea.energy:.2f}x (scalar sharing shrinks the weight traffic, row sharing also lets each shared"
                " row's 1-D convolutions be computed once)."
            )
        spectral, kmeans = err.get(C.label), err.get(D.label)
        if spectral is not None and kmeans is not None:
            lines.append(
                f"  Re-training with the exact k-means penalty gives {kmeans:.2f}% error, the spectral penalty"
                f" {spectral:.2f}% (it is zero for every layer with K >= d = 3, so it is plain fine-tuning there)."
            )
        tuned, scalar_ft = err.get(E.label), err.get(A_FT.label)
        if tuned is not None and scalar_ft is not None:
            verdict = "beats" if tuned < scalar_ft else "does not beat"
            lines.append(
                f"  With every stage applied, row sharing after Deep k-Means and center fine-tuning {verdict} scalar"
                f" sharing with center fine-tuning ({tuned:.2f}% vs {scalar_ft:.2f}% error)."
            )
        stack = err.get(G_FT.label)
        if stack is not None and tuned is not None:
            verdict = "beats" if stack < tuned else "does not beat"
            lines.append(
                f"  The frontier stack (8-bit, beta, distillation, importance) after center fine-tuning {verdict}"
                f" Deep k-Means + center fine-tuning at 32 bits ({stack:.2f}% vs {tuned:.2f}% error, at"
                f" {at[G_FT.label].paper_cr:.1f}x vs"
                f" {at[E.label].paper_cr:.1f}x)."
            )
        for peer in (PEER_PTQ, PEER_DKM):
            if peer in err and kmeans is not None:
                r = at[peer]
                lines.append(
                    f"  {peer[3:]}: {err[peer]:.2f}% error at {r.paper_cr:.1f}x (Deep k-Means: {kmeans:.2f}% at"
                    f" {at[D.label].paper_cr:.1f}x)."
                )
    return lines


def _write(s: argparse.Namespace, facts: Facts, rows: list[Row]) -> Path:
    out = Path(s.out or default_out(s))
    plot = out.with_suffix(".png")
    plot_errors(rows, facts.dense_acc, plot, facts.name, s.dataset)
    command = " ".join(["python benchmarks/convnet.py", *facts.argv])
    lines = [
        *intro(s, facts),
        "",
        f"Generated by `{command.strip()}` in {facts.seconds / 60:.0f} min"
        + (
            f" (resuming the rows at {', '.join(facts.resumed)} from an earlier run in the same work folder; their"
            " wall times are that run's)."
            if facts.resumed
            else "."
        ),
        "",
        "| target | method | test accuracy (mean +- half range over seeds) | seeds | paper CR | file CR"
        " | energy dense / shared | wall time | note |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| - | dense | {100 * facts.dense_acc:.2f}% | 1 | 1x | 1x | 1x | - | |",
    ]
    for r in rows:
        if not r.accs:
            lines.append(f"| {r.target:g}x | {r.method} | - | - | - | - | - | - | {r.note} |")
            continue
        file_cr = f"{r.file_cr:.1f}x" if r.file_cr else "-"
        energy = f"{r.energy:.2f}x" if r.energy else "-"
        lines.append(
            f"| {r.target:g}x | {r.method} | {acc_text(r)} | {len(r.accs)} | {r.paper_cr:.1f}x | {file_cr} | {energy}"
            f" | {statistics.mean(r.seconds):.0f} s | {r.note} |"
        )
    lines += [
        "",
        f"![test error vs compression ratio]({plot.name})",
        "",
        "Wall time: the method's own work (re-training, compression, fine-tuning), not the shared pre-training."
        " Retraining rows: seeds set the k-means seed and the batch order. File CR: dense state dict bytes / the"
        " .dkm file. Energy: the row-stationary model at batch 1 (`deepkmeans energy`). Training budgets differ"
        f" by design: a + center fine-tuning trains {s.finetune_epochs} epoch(s), c and d"
        f" {s.retrain_epochs}, e and g {s.retrain_epochs + s.finetune_epochs}; DKMPalettizer trains for"
        " d's wall time. The frontier stack (g) stores centers and biases in 8 bits, so its K / p are tuned at that"
        " width for the same target size.",
        "",
        "## Reading",
        "",
        *_reading(rows, s.targets),
        "",
        *([] if s.weights else cifar_section(facts.step)),
    ]
    write_atomic(out, ("\n".join(lines) + "\n").encode())
    print(f"wrote {out} and {plot}")
    return out


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
