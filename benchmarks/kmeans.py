"""Our k-means vs scikit-learn on the 16 conv layers of WRN-16-4 with the cr45 preset K values.

Rows are the layers' filter rows (length 3 for 3x3 convs, 1 for the 1x1 shortcuts, via
``deepkmeans.cluster.rows``); each layer is clustered whole with its preset K (the sparsity p of the
preset is ignored: p only moves rows into an extra cluster before the same k-means runs). Weights are
the model's Kaiming-normal initialisation, optionally given a Student-t tail (``--tail-df``) as trained
weights have, all from a fixed seed. Both libraries get the same thread count, warm-up and repetitions;
the table reports the fastest of the repetitions for each.

    python benchmarks/kmeans.py [--threads 1] [--repeat 3] [--seed 0] [--tail-df 6]
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
    parser.add_argument("--repeat", type=int, default=3, help="runs per layer and library; the fastest counts")
    parser.add_argument("--seed", type=int, default=0, help="weights seed and k-means seed of both")
    parser.add_argument("--tail-df", type=float, default=6.0, help="Student-t degrees of freedom (0: normal)")
    parser.add_argument("--config", type=Path, default=CONFIG, help="run config with the per-layer K")
    args = parser.parse_args()
    if 0 < args.tail_df <= 2:
        parser.error("--tail-df must be > 2 (finite variance) or 0")

    torch.set_num_threads(args.threads)
    specs = load_config(args.config).compress.layers
    layers = layer_rows(args.seed, args.tail_df)
    weights = f"Student-t df={args.tail_df:g}" if args.tail_df > 0 else "normal"
    print(f"k-means on WRN-16-4 conv rows, K from {args.config.name}; weights: Kaiming {weights}, seed {args.seed}")
    print(
        f"threads: torch {torch.get_num_threads()}, scikit-learn {args.threads} (threadpoolctl); "
        f"best of {args.repeat}; torch {torch.__version__}, scikit-learn {sklearn.__version__}"
    )
    header = f"{'layer':<20} {'N':>7} {'d':>2} {'K':>4} {'ours ms':>9} {'sklearn ms':>10} {'speedup':>8} {'inertia':>8}"
    print(header)
    print("-" * len(header))
    total_ours = total_theirs = inertia_ours = inertia_theirs = 0.0
    with threadpool_limits(limits=args.threads):
        warm = torch.randn(2000, 3, generator=torch.Generator().manual_seed(0))
        kmeans(warm, 8)
        KMeans(n_clusters=8, n_init=1, random_state=0).fit(warm.numpy())
        for name, rows in layers:
            k = specs[name].K
            ours_s, ours = best_time(lambda rows=rows, k=k: kmeans(rows, k, seed=args.seed), args.repeat)
            theirs_s, theirs = best_time(
                lambda rows=rows, k=k: KMeans(n_clusters=k, n_init=1, random_state=args.seed).fit(rows.numpy()),
                args.repeat,
            )
            total_ours += ours_s
            total_theirs += theirs_s
            inertia_ours += ours.inertia
            inertia_theirs += theirs.inertia_
            ratio = ours.inertia / theirs.inertia_ if theirs.inertia_ > 0 else float(ours.inertia == 0)
            print(
                f"{name:<20} {rows.shape[0]:>7} {rows.shape[1]:>2} {k:>4} {ours_s * 1e3:>9.1f} "
                f"{theirs_s * 1e3:>10.1f} {theirs_s / ours_s:>7.2f}x {ratio:>8.4f}"
            )
    print("-" * len(header))
    print(
        f"{'total':<20} {'':>7} {'':>2} {'':>4} {total_ours * 1e3:>9.1f} {total_theirs * 1e3:>10.1f} "
        f"{total_theirs / total_ours:>7.2f}x {inertia_ours / inertia_theirs:>8.4f}"
    )
    print("speedup = sklearn time / our time; inertia = our inertia / sklearn inertia (lower is better)")


if __name__ == "__main__":
    main()
