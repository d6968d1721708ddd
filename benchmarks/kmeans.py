"""Our k-means vs scikit-learn on the 16 conv layers of WRN-16-4 with the cr45 preset K values.

Rows are the layers' filter rows (length 3 for 3x3 convs, 1 for the 1x1 shortcuts, via
``deepkmeans.cluster.rows``); each layer is clustered whole with its preset K (the sparsity p of the
preset is ignored: p only moves rows into an extra cluster before the same k-means runs). Weights are
the model's Kaiming-normal initialisation, optionally given a Student-t tail (``--tail-df``) as trained
weights have, all from a fixed seed. Both libraries get the same thread count, warm-up and repetitions;
each (layer, seed) time is the fastest of the repetitions.

Both are randomized (k-means++ seeding), so one seed says little: a layer's inertia moves by up to ~1.5%
and its time by up to ~3x from seed to seed. Each layer is therefore run with k-means seeds
0..``--seeds``-1 in both libraries, and the table gives the total over seeds (time ratio of the sums,
inertia ratio of the sums) and the worst seed (smallest time ratio, largest inertia ratio).

    python benchmarks/kmeans.py [--threads 1] [--repeat 2] [--seeds 5] [--tail-df 6]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import sklearn
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from deepkmeans.cluster.kmeans import kmeans
from deepkmeans.cluster.rows import default_row_length, to_rows
from deepkmeans.config import load_config
from deepkmeans.models.wrn import conv_layer_names, wrn16_4

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "wrn16_4_cifar10.yaml"


def layer_rows(seed: int, tail_df: float) -> list[tuple[str, torch.Tensor]]:
    """(name, rows) of every conv layer of a freshly initialised WRN-16-4, in preset order."""
    torch.manual_seed(seed)
    model = wrn16_4()
    modules = dict(model.named_modules())
    rng = np.random.default_rng(seed)
    out = []
    for name in conv_layer_names(model):
        weight = modules[name].weight.detach().double()
        if tail_df > 0:
            # Student-t with the same variance: normal / sqrt(chi2 / df), rescaled by sqrt((df - 2) / df).
            chi2 = torch.from_numpy(rng.chisquare(tail_df, size=tuple(weight.shape)))
            weight = weight * torch.sqrt((tail_df - 2.0) / chi2)
        out.append((name, to_rows(weight.float(), default_row_length(tuple(weight.shape)))))
    return out


def best_time(run, repeat: int) -> tuple[float, object]:
    """Fastest wall time of ``repeat`` calls, and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="threads for both torch and scikit-learn")
    parser.add_argument("--repeat", type=int, default=2, help="runs per layer, seed and library; the fastest counts")
    parser.add_argument("--seeds", type=int, default=5, help="k-means seeds 0..N-1 per layer, in both libraries")
    parser.add_argument("--weights-seed", type=int, default=0, help="seed of the synthetic weights")
    parser.add_argument("--tail-df", type=float, default=6.0, help="Student-t degrees of freedom (0: normal)")
    parser.add_argument("--config", type=Path, default=CONFIG, help="run config with the per-layer K")
    args = parser.parse_args()
    if 0 < args.tail_df <= 2:
        parser.error("--tail-df must be > 2 (finite variance) or 0")
    if args.seeds < 1 or args.repeat < 1:
        parser.error("--seeds and --repeat must be >= 1")

    torch.set_num_threads(args.threads)
    specs = load_config(args.config).compress.layers
    layers = layer_rows(args.weights_seed, args.tail_df)
    weights = f"Student-t df={args.tail_df:g}" if args.tail_df > 0 else "normal"
    print(f"k-means on WRN-16-4 conv rows, K from {args.config.name}")
    print(f"weights: Kaiming {weights}, seed {args.weights_seed}")
    print(
        f"threads: torch {torch.get_num_threads()}, scikit-learn {args.threads} (threadpoolctl); "
        f"k-means seeds 0..{args.seeds - 1}, best of {args.repeat} per seed; "
        f"torch {torch.__version__}, scikit-learn {sklearn.__version__}"
    )
    header = (
        f"{'layer':<20} {'N':>7} {'d':>2} {'K':>4} {'ours ms':>9} {'sklearn ms':>10} {'speedup':>8} {'worst':>7} "
        f"{'inertia':>8} {'worst':>7} {'wins':>5}"
    )
    print(header)
    print("-" * len(header))
    totals = np.zeros(4)  # our time, their time, our inertia, their inertia (sums over layers and seeds)
    with threadpool_limits(limits=args.threads):
        warm = torch.randn(2000, 3, generator=torch.Generator().manual_seed(0))
        kmeans(warm, 8)
        KMeans(n_clusters=8, n_init=1, random_state=0).fit(warm.numpy())
        for name, rows in layers:
            k = specs[name].K
            runs = np.array([compare(rows, k, seed, args.repeat) for seed in range(args.seeds)])
            sums = runs.sum(axis=0)
            totals += sums
            time_ratio = runs[:, 1] / runs[:, 0]
            inertia_ratio = np.array([ratio(ours, theirs) for ours, theirs in runs[:, 2:]])
            wins = int((runs[:, 2] <= runs[:, 3]).sum())
            print(
                f"{name:<20} {rows.shape[0]:>7} {rows.shape[1]:>2} {k:>4} {sums[0] * 1e3:>9.1f} {sums[1] * 1e3:>10.1f} "
                f"{sums[1] / sums[0]:>7.2f}x {time_ratio.min():>6.2f}x {ratio(sums[2], sums[3]):>8.4f} "
                f"{inertia_ratio.max():>7.4f} {wins:>3}/{args.seeds}"
            )
    print("-" * len(header))
    print(
        f"{'total':<20} {'':>7} {'':>2} {'':>4} {totals[0] * 1e3:>9.1f} {totals[1] * 1e3:>10.1f} "
        f"{totals[1] / totals[0]:>7.2f}x {'':>7} {ratio(totals[2], totals[3]):>8.4f}"
    )
    print(
        "times and speedup (sklearn time / ours) are sums over the seeds; worst = the seed with the smallest "
        "speedup / largest inertia ratio;\ninertia = our inertia / sklearn's (lower is better, sums over seeds); "
        "wins = seeds where ours is <= sklearn's"
    )


def compare(rows: torch.Tensor, k: int, seed: int, repeat: int) -> tuple[float, float, float, float]:
    """(our time, sklearn time, our inertia, sklearn inertia) for one layer and k-means seed."""
    ours_s, ours = best_time(lambda: kmeans(rows, k, seed=seed), repeat)
    theirs_s, theirs = best_time(lambda: KMeans(n_clusters=k, n_init=1, random_state=seed).fit(rows.numpy()), repeat)
    return ours_s, theirs_s, ours.inertia, float(theirs.inertia_)


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs, with 0 / 0 = 1 (both exact)."""
    return ours / theirs if theirs > 0 else float(ours == 0)


if __name__ == "__main__":
    main()
