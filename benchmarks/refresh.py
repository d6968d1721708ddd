"""Cost of one F refresh of the k-means penalty: warm start (what re-training does) vs a cold k-means, in one run.

Between two refreshes re-training moves the weights a little. For every layer this benchmark clusters the
weights cold (k-means++ and Lloyd, as compression does), moves them by ``--drift`` of their standard
deviation (Gaussian), then refreshes F both ways on the moved weights: warm (``refine_rows``, a few Lloyd
steps from the previous assignments, as ``PenaltyState`` does) and cold again. It prints the time of each
and the warm refresh's inertia over the cold one's (above 1: the warm F is a worse clustering).

Workloads: the 16 conv layers of WRN-16-4 (synthetic Kaiming weights with a Student-t tail, K from
configs/wrn16_4_cifar10.yaml) and a 4096 x 4096 Linear as rows of d = 4 with K = 256.

    python benchmarks/refresh.py [--threads 2] [--drift 0.01] [--skip-linear]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from kmeans import layer_rows

from deepkmeans.cluster.quantize import cluster_rows, refine_rows
from deepkmeans.config import load_config

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "wrn16_4_cifar10.yaml"


def _inertia(rows: torch.Tensor, centers: torch.Tensor, assignments: torch.Tensor) -> float:
    return float((rows.double() - centers.double()[assignments]).square().sum())


def _timed(run):
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def _linear_rows() -> torch.Tensor:
    rng = np.random.default_rng(0)
    w = rng.standard_t(6.0, size=(4096, 4096)) * np.sqrt(4.0 / 6.0) / np.sqrt(4096)
    return torch.from_numpy(w.astype(np.float32)).reshape(-1, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--drift", type=float, default=0.01, help="weight change between refreshes, in std units")
    parser.add_argument("--skip-linear", action="store_true", help="leave the 4096 x 4096 Linear out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    specs = load_config(CONFIG).compress.layers
    work = [(name, rows, specs[name].K, specs[name].p) for name, rows in layer_rows(0, 6.0)]
    if not args.skip_linear:
        work.append(("linear 4096x4096 (d 4)", _linear_rows(), 256, 0.0))
    gen = torch.Generator().manual_seed(1)
    print(f"{args.threads} threads, drift {args.drift:g} std between refreshes; torch {torch.__version__}")
    print("| layer | rows x d | K | p | cold refresh | warm refresh | cold / warm | warm inertia / cold |")
    print("|---|---|---|---|---|---|---|---|")
    total = np.zeros(2)
    for name, rows, k, p in work:
        if k >= rows.shape[0]:
            continue
        first = cluster_rows(rows, k, p, seed=0)
        moved = rows + args.drift * float(rows.std()) * torch.randn(rows.shape, generator=gen)
        t_cold, cold = _timed(lambda: cluster_rows(moved, k, p, seed=0))  # noqa: B023 - called at once
        t_warm, warm = _timed(lambda: refine_rows(moved, first.assignments, k, p))  # noqa: B023
        total += (t_cold, t_warm)
        ratio = _inertia(moved, warm.centers, warm.assignments) / _inertia(moved, cold.centers, cold.assignments)
        size = f"{rows.shape[0]} x {rows.shape[1]}"
        print(
            f"| {name} | {size} | {k} | {p:g} | {1e3 * t_cold:.1f} ms | {1e3 * t_warm:.1f} ms |"
            f" {t_cold / t_warm:.1f}x | {ratio:.4f} |",
            flush=True,
        )
    print(f"| **total** | | | | {total[0]:.2f} s | {total[1]:.2f} s | {total[0] / total[1]:.1f}x | |")


if __name__ == "__main__":
    main()
