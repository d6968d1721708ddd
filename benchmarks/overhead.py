"""Per-step cost of Deep k-Means re-training vs plain fine-tuning, measured side by side.

Alternates blocks of T training steps without the regularizer, with the exact k-means penalty added to the
loss (apply 'loss') and with its gradient added at backward (apply 'gradient'), one F refresh per block as in
re-training with refresh_every = T, on copies of one model and the same batches, so machine noise hits all
three alike; prints the median of the per-round ratios.

    python benchmarks/overhead.py [--config configs/lenet5_mnist.yaml] [--rounds 7]
    python benchmarks/overhead.py --config configs/wrn16_4_cifar10_cr47.yaml --batch 16   # random images
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from deepkmeans import DeepKMeans
from deepkmeans.config import load_config
from deepkmeans.data import load_data
from deepkmeans.models import build_model, model_info
from deepkmeans.train import step

ROOT = Path(__file__).resolve().parents[1]
MODES = ("plain", "loss", "gradient")


def _block(model: nn.Module, opt: torch.optim.Optimizer, batches: list, dkm: DeepKMeans | None) -> float:
    start = time.perf_counter()
    for x, y in batches:
        step(nn.functional.cross_entropy(model(x), y), opt, dkm)
    return time.perf_counter() - start


def _batches(config: str, batch: int | None, steps: int) -> tuple[str, list]:
    cfg = load_config(config)
    if cfg.dataset == "mnist":
        train, _ = load_data(cfg.dataset, cfg.data_dir, batch or cfg.retrain.batch_size, cfg.seed)
        return "MNIST batches", [b for _, b in zip(range(steps), train, strict=False)]
    gen = torch.Generator().manual_seed(0)
    shape = model_info(cfg.model).input_shape
    size = batch or cfg.retrain.batch_size
    data = [
        (torch.randn(size, *shape, generator=gen), torch.randint(0, 10, (size,), generator=gen)) for _ in range(steps)
    ]
    return f"random {shape} images", data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "lenet5_mnist.yaml"))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, help="batch size (default: the config's re-training batch)")
    parser.add_argument("--steps", type=int, help="steps per block (default: the config's refresh_every)")
    args = parser.parse_args()
    cfg = load_config(args.config)
    rcfg = replace(cfg.retrain, method="kmeans")
    steps = args.steps or rcfg.refresh_every
    what, batches = _batches(args.config, args.batch, steps)
    torch.manual_seed(cfg.seed)
    base = build_model(cfg.model)
    models = {mode: copy.deepcopy(base) for mode in MODES}
    dkms = {
        mode: DeepKMeans(models[mode], cfg.compress, replace(rcfg, apply=mode, refresh_every=steps).regularizer)
        for mode in MODES[1:]
    }
    opts = {mode: torch.optim.SGD(m.parameters(), lr=rcfg.lr, momentum=rcfg.momentum) for mode, m in models.items()}
    for mode in MODES:  # warm-up
        _block(models[mode], opts[mode], batches[:2], dkms.get(mode))
    ratios: dict[str, list[float]] = {mode: [] for mode in MODES[1:]}
    for i in range(args.rounds):
        times = {mode: _block(models[mode], opts[mode], batches, dkms.get(mode)) for mode in MODES}
        for mode in MODES[1:]:
            ratios[mode].append(times[mode] / times["plain"])
        per_step = ", ".join(f"{mode} {1000 * t / len(batches):.2f}" for mode, t in times.items())
        print(f"round {i + 1}: ms/step {per_step}")
    print(
        f"{cfg.model}, {what}, batch {len(batches[0][1])}, {len(batches)} steps per block (one F refresh each),"
        f" {torch.get_num_threads()} threads; median overhead vs plain: "
        + ", ".join(f"apply '{mode}' {100 * (statistics.median(r) - 1):+.1f}%" for mode, r in ratios.items())
    )


if __name__ == "__main__":
    main()
