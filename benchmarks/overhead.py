"""Per-step cost of Deep k-Means re-training vs plain fine-tuning, measured side by side.

Alternates blocks of T training steps without and with the regularizer (one F refresh per block, as in
re-training with refresh_every = T) on the same model and batches, so machine noise hits both
equally; prints the median of the per-round ratios.

    python benchmarks/overhead.py [--config configs/lenet5_mnist.yaml] [--rounds 7]
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
from deepkmeans.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def _block(model: nn.Module, opt: torch.optim.Optimizer, batches: list, reg: DeepKMeans | None) -> float:
    start = time.perf_counter()
    for x, y in batches:
        loss = nn.functional.cross_entropy(model(x), y)
        if reg is not None:
            loss = loss + reg.penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if reg is not None:
            reg.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "lenet5_mnist.yaml"))
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    cfg = load_config(args.config)
    rcfg = cfg.retrain
    train, _ = load_data(cfg.dataset, cfg.data_dir, rcfg.batch_size, cfg.seed)
    batches = [b for _, b in zip(range(rcfg.refresh_every), train, strict=False)]
    torch.manual_seed(cfg.seed)
    plain = build_model(cfg.model)
    shared = copy.deepcopy(plain)
    opts = [torch.optim.SGD(m.parameters(), lr=rcfg.lr, momentum=rcfg.momentum) for m in (plain, shared)]
    reg = DeepKMeans(shared, cfg.compress, replace(rcfg, method="kmeans").regularizer)
    _block(plain, opts[0], batches, None)  # warm-up
    _block(shared, opts[1], batches, reg)
    ratios = []
    for i in range(args.rounds):
        t_plain = _block(plain, opts[0], batches, None)
        t_reg = _block(shared, opts[1], batches, reg)
        ratios.append(t_reg / t_plain)
        print(
            f"round {i + 1}: plain {1000 * t_plain / len(batches):.2f} ms/step, "
            f"with regularizer {1000 * t_reg / len(batches):.2f} ms/step, ratio {t_reg / t_plain:.3f}"
        )
    print(
        f"{cfg.model}, {len(batches)} steps per block (one F refresh each), {torch.get_num_threads()} threads: "
        f"median overhead {100 * (statistics.median(ratios) - 1):+.1f}%"
    )


if __name__ == "__main__":
    main()
