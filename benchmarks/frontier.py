"""Frontier ablation: each technique past the paper on and off, at equal size and equal training budget.

Every variant is a full ``deepkmeans run`` of the base config (LeNet-5-Caffe at ~165x, 14 re-training epochs,
the last 5,000 training images held out for validation) with one change; all variants of a seed start from the
same pre-trained checkpoint. Choices are read off the validation column; the test column is reported.

    python benchmarks/frontier.py [--seeds 0 1] [--only base distill ...] [--work-dir runs/frontier] [--write]

Resumable: a variant whose run folder holds metrics.json is read, not run again (delete the folder to rerun).
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from deepkmeans.config import RunConfig, from_dict
from deepkmeans.files.atomic import write_atomic
from deepkmeans.job.run import run
from deepkmeans.results import RunFiles, RunMetrics

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "frontier" / "lenet5_165x_base.yaml"
DISTILL = {"weight": 0.5, "temperature": 4.0}


def _layers(cfg: dict[str, Any], **values: Any) -> None:
    for spec in cfg["compress"]["layers"].values():
        spec.update(values)


def _set(**values: Any) -> Callable[[dict[str, Any]], None]:
    def change(cfg: dict[str, Any]) -> None:
        for key, value in values.items():
            *path, last = key.split("__")
            node = cfg
            for part in path:
                node = node.setdefault(part, {})
            node[last] = value

    return change


def _wide(cfg: dict[str, Any]) -> None:
    """32-bit centers and biases at the same size: the layers of configs/lenet5_mnist_166x.yaml."""
    cfg["compress"]["layers"] = {
        "conv1": {"K": 16, "p": 0.0},
        "conv2": {"K": 32, "p": 0.5},
        "fc1": {"K": 48, "p": 0.96, "d": 10},
        "fc2": {"K": 16, "p": 0.5, "d": 5},
    }


def _all(cfg: dict[str, Any]) -> None:
    _set(retrain__distill=DISTILL, retrain__ramp=0.5, importance=64)(cfg)
    _set(finetune={"epochs": 2, "batch_size": 64, "distill": DISTILL})(cfg)
    _layers(cfg, beta=0.01)


# name -> (what changes, how); "base" is the config as it is
VARIANTS: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "base": ("8-bit centers and biases, exact k-means penalty", lambda cfg: None),
    "wide32": ("32-bit centers and biases (other K / p / d for the same size)", _wide),
    "distill": ("+ distillation from the dense model (weight 0.5, T 4)", _set(retrain__distill=DISTILL)),
    "ramp": ("+ lam and p ramped over the first half of re-training", _set(retrain__ramp=0.5)),
    "beta": ("+ rate-aware assignment, beta 0.01 in every layer", lambda cfg: _layers(cfg, beta=0.01)),
    "importance": ("+ squared-gradient importance in the k-means of compression", _set(importance=64)),
    "finetune": ("+ 2 epochs of center fine-tuning", _set(finetune={"epochs": 2, "batch_size": 64})),
    "all": ("all of the above together (fine-tuning distilled too)", _all),
}


def variant_config(name: str, seed: int, work: Path, base: Path = BASE) -> RunConfig:
    cfg = copy.deepcopy(yaml.safe_load(base.read_text()))
    VARIANTS[name][1](cfg)
    cfg["seed"] = seed
    cfg["compress"]["seed"] = seed
    cfg["out_dir"] = str(work / f"seed{seed}" / name)
    return from_dict(RunConfig, cfg)


def run_variant(name: str, seed: int, work: Path) -> RunMetrics:
    """Run one variant (or read its finished run); the first variant of a seed pre-trains for the others."""
    cfg = variant_config(name, seed, work)
    files = RunFiles(Path(cfg.out_dir))
    if (files / RunFiles.METRICS).is_file():
        return RunMetrics.read(files)
    shared = work / f"seed{seed}" / RunFiles.PRETRAIN
    if shared.is_file() and not (files / RunFiles.PRETRAIN).is_file():
        files.root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared, files / RunFiles.PRETRAIN)
    started = time.perf_counter()
    metrics = run(cfg, progress=False)
    print(f"frontier: {name} seed {seed} done in {time.perf_counter() - started:.0f}s")
    if not shared.is_file():
        shutil.copyfile(files / RunFiles.PRETRAIN, shared)
    return metrics


def _spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    half = (max(values) - min(values)) / 2
    return f"{100 * mean:.2f}%" + (f" +- {100 * half:.2f}" if len(values) > 1 else "")


def table(results: dict[str, list[RunMetrics]]) -> str:
    lines = [
        "| variant | what changes | seeds | paper CR | file CR | no re-training: val / test | final: val / test"
        " | final test error | run time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        first = [m.stages[0] for m in runs]
        final = [m.final for m in runs]
        crs = sorted({f"{s.paper_cr:.1f}x" for s in final})
        files = sorted({f"{s.file_cr:.1f}x" for s in final})
        errors = ", ".join(f"{100 * (1 - s.test_acc):.2f}%" for s in final)
        lines.append(
            f"| {name} | {VARIANTS[name][0]} | {len(runs)} | {' / '.join(crs)} | {' / '.join(files)}"
            f" | {_spread([s.val_acc for s in first])} / {_spread([s.test_acc for s in first])}"
            f" | {_spread([s.val_acc for s in final])} / {_spread([s.test_acc for s in final])}"
            f" | {errors} | {statistics.mean(m.seconds for m in runs):.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), help="variants to run (default: all)")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "frontier"))
    parser.add_argument("--write", help="also write the table to this markdown file")
    args = parser.parse_args()
    work = Path(args.work_dir)
    names = args.only or list(VARIANTS)
    results = {name: [run_variant(name, seed, work) for seed in args.seeds] for name in names}
    text = table(results)
    print(text)
    if args.write:
        write_atomic(args.write, (text + "\n").encode())


if __name__ == "__main__":
    main()
