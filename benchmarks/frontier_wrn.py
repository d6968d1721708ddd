"""Post-training compression of a Wide ResNet (WRN-16-1 on MNIST) at ~47x: what BatchNorm re-estimation,
data-aware (squared-gradient) k-means, narrow centers and rate-aware assignment each add, with no re-training.

One pre-trained model per seed (4 epochs on the first 55,000 training images; the last 5,000 held out for
validation), then each variant compresses that same model. Every conv layer shares its 3-wide rows with one K
and one sparsity p; p is found by bisection on the pre-trained model so that each variant lands on the target
paper-accounting CR (narrow variants spend the bits they save on a larger K). Choices are read off the
validation column; the test column is reported.

    python benchmarks/frontier_wrn.py [--seeds 0 1] [--target 47] [--work-dir runs/frontier_wrn] [--write F]

Resumable: each seed's pre-trained checkpoint is kept in the work folder and reused.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from deepkmeans import account, compress
from deepkmeans.config import CompressConfig, LayerSpec, RunConfig, TrainConfig
from deepkmeans.errors import PlanWarning
from deepkmeans.files.atomic import write_atomic
from deepkmeans.importance import squared_gradients
from deepkmeans.job.stages import compress_and_measure, model_meta, pretrain, start_session
from deepkmeans.measure import Measurement
from deepkmeans.plan import build_plan
from deepkmeans.train import evaluate

ROOT = Path(__file__).resolve().parents[1]
IMPORTANCE = 32  # training batches of 128 images: 4,096 images' squared gradients
BN_BATCHES = 50  # training batches of 128 images the BatchNorm statistics are re-estimated on


@dataclass(frozen=True)
class Variant:
    what: str
    K: int
    bits: int = 32
    beta: float = 0.0
    importance: bool = False
    bn: bool = False


VARIANTS = {
    "plain": Variant("k-means of rows (K 8, 32-bit centers)", 8),
    "bn": Variant("+ BatchNorm re-estimation", 8, bn=True),
    "importance": Variant("+ squared-gradient importance", 8, importance=True),
    "bn+importance": Variant("+ both", 8, importance=True, bn=True),
    "8bit+bn+importance": Variant("8-bit centers and biases, K 16 at the same size, + both", 16, 8, 0.0, True, True),
    "8bit+bn+importance+beta": Variant("... + rate-aware assignment (beta 0.01)", 16, 8, 0.01, True, True),
}


def _layers(variant: Variant, p: float) -> CompressConfig:
    return CompressConfig(layers={"type:Conv2d": LayerSpec(K=variant.K, p=p, bits=variant.bits, beta=variant.beta)})


def sparsity_for(model, variant: Variant, target: float, seed: int, loop) -> float:
    """The p at which the variant's paper-accounting CR is closest above ``target`` (bisection, 10 steps), with
    the variant's importance (it changes the assignments, so their entropy)."""
    importance = None
    if variant.importance:
        names = list(build_plan(model, _layers(variant, 0.0)).shared)
        importance = squared_gradients(model, loop.train, loop.device, names, IMPORTANCE)
    lo, hi = 0.0, 0.99
    for _ in range(10):
        mid = (lo + hi) / 2
        cfg = replace(_layers(variant, mid), seed=seed)
        if account(compress(model, cfg, importance=importance)).paper_cr >= target:
            hi = mid
        else:
            lo = mid
    return hi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--target", type=float, default=47.0)
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS))
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "frontier_wrn"))
    parser.add_argument("--write", help="also write the table to this markdown file")
    args = parser.parse_args()
    work = Path(args.work_dir)
    warnings.simplefilter("ignore", PlanWarning)  # the classifier stays dense by design
    results: dict[str, list[tuple[Measurement, float, float]]] = {name: [] for name in args.only or VARIANTS}
    dense: list[tuple[float, float]] = []
    for seed in args.seeds:
        train = TrainConfig(epochs=args.pretrain_epochs, batch_size=128, lr=0.05)
        base = RunConfig(model="wrn16_1_mnist", dataset="mnist", validation=5000, seed=seed, train=train)
        session = start_session(base, 128, progress=False)
        (work / f"seed{seed}").mkdir(parents=True, exist_ok=True)
        model, _ = pretrain(base, session, work / f"seed{seed}" / "pretrain.ckpt")
        model.cpu().eval()
        loop, val = session.loop, session.val
        dense.append((evaluate(model, val, loop.device)[1], evaluate(model, loop.test, loop.device)[1]))
        print(f"seed {seed}: dense val {100 * dense[-1][0]:.2f}% test {100 * dense[-1][1]:.2f}%")
        for name in results:
            variant = VARIANTS[name]
            started = time.perf_counter()
            p = sparsity_for(model, variant, args.target, seed, loop)
            cfg = replace(
                base,
                importance=IMPORTANCE if variant.importance else 0,
                bn_reestimate=BN_BATCHES if variant.bn else 0,
                compress=replace(_layers(variant, p), seed=seed),
            )
            path = work / f"seed{seed}" / f"{name}.dkm"
            _, m = compress_and_measure(model, cfg, loop, path, model_meta(base), val)
            seconds = time.perf_counter() - started
            results[name].append((m, p, seconds))
            print(
                f"  {name}: p {p:.3f} paper CR {m.paper_cr:.1f}x file CR {m.file_cr:.1f}x"
                f" val {100 * m.val_acc:.2f}% test {100 * m.test_acc:.2f}% ({seconds:.0f}s)"
            )
    text = table(results, dense, args.target)
    print(text)
    if args.write:
        write_atomic(args.write, (text + "\n").encode())


def _spread(values: list[float]) -> str:
    half = (max(values) - min(values)) / 2
    return f"{100 * statistics.mean(values):.2f}%" + (f" +- {100 * half:.2f}" if len(values) > 1 else "")


def table(results: dict[str, list[tuple[Measurement, float, float]]], dense, target: float) -> str:
    lines = [
        f"| WRN-16-1, post-training at ~{target:g}x | K | bits | p (per seed) | paper CR | file CR"
        " | val acc | test acc | time (p search + compress) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| dense | - | 32 | - | 1x | 1x | {_spread([d[0] for d in dense])} | {_spread([d[1] for d in dense])} | - |",
    ]
    for name, rows in results.items():
        v = VARIANTS[name]
        ms = [r[0] for r in rows]
        lines.append(
            f"| {name}: {v.what} | {v.K} | {v.bits} | {', '.join(f'{r[1]:.3f}' for r in rows)}"
            f" | {' / '.join(sorted({f'{m.paper_cr:.1f}x' for m in ms}))}"
            f" | {' / '.join(sorted({f'{m.file_cr:.1f}x' for m in ms}))}"
            f" | {_spread([m.val_acc for m in ms])} | {_spread([m.test_acc for m in ms])}"
            f" | {statistics.mean(r[2] for r in rows):.0f} s |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
