"""How much the accuracy without re-training depends on the k-means seed, and whether the best of several seeds
by inertia (a choice that looks at the weights only, never at data) picks better centers.

One pre-trained checkpoint is compressed with ``compress.seed`` 0..N-1 of a config (default: the embedded
LeNet-5 default); for each seed the test accuracy of the shared model and every layer's clustering error
``||W - W_shared||^2`` are printed. Then, per group of G consecutive seeds, each layer takes the centers of
the seed with its smallest error and the combination is evaluated.

    deepkmeans train -o dense.ckpt && python benchmarks/kmeans_seeds.py dense.ckpt [--seeds 8] [--config C]
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import replace

import torch
from torch import nn

from deepkmeans.config import load_config
from deepkmeans.data import load_data
from deepkmeans.files.models import load_model_file
from deepkmeans.lifecycle import compress
from deepkmeans.plan import build_plan
from deepkmeans.train import evaluate


def _with_weights(dense: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    model = copy.deepcopy(dense)
    with torch.no_grad():
        for name, w in weights.items():
            model.get_submodule(name).weight.copy_(w)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--config", help="run config whose compress section is used (default: built-in)")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    cfg = load_config(args.config)
    loaded = load_model_file(args.checkpoint)
    dense = loaded.model.eval()
    _, test = load_data(loaded.dataset or cfg.dataset, args.data_dir, 512)
    device = torch.device("cpu")
    names = [layer.name for layer in build_plan(dense, cfg.compress).shared.values()]
    errors: list[dict[str, float]] = []
    weights: list[dict[str, torch.Tensor]] = []
    accs = []
    for seed in range(args.seeds):
        shared = compress(copy.deepcopy(dense), replace(cfg.compress, seed=seed))
        w = {n: shared.get_submodule(n).weight.detach().clone() for n in names}
        err = {n: float((dense.get_submodule(n).weight.detach() - w[n]).pow(2).sum()) for n in names}
        accs.append(evaluate(shared, test, device)[1])
        errors.append(err)
        weights.append(w)
        shown = ", ".join(f"{n} {e:.4f}" for n, e in err.items())
        print(f"seed {seed}: test accuracy {100 * accs[-1]:.2f}%  ||W - W_shared||^2: {shown}", flush=True)
    mean = sum(accs) / len(accs)
    print(f"over {len(accs)} seeds: {100 * min(accs):.2f}-{100 * max(accs):.2f}%, mean {100 * mean:.2f}%")
    group = 2
    while group <= args.seeds:
        picked = []
        for start in range(0, args.seeds - group + 1, group):
            seeds = range(start, start + group)
            best = {n: min(seeds, key=lambda s, n=n: errors[s][n]) for n in names}
            combined = _with_weights(dense, {n: weights[s][n] for n, s in best.items()})
            picked.append(100 * evaluate(combined, test, device)[1])
        print(f"best of {group} seeds by each layer's error: " + ", ".join(f"{a:.2f}%" for a in picked), flush=True)
        group *= 2


if __name__ == "__main__":
    main()
