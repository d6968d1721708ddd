"""Peak memory of Deep k-Means re-training vs plain training on a ~100M-parameter model, side by side.

Each variant runs in a fresh process (peak RSS is per process): build the model (6 Linear 4096 x 4096 layers
with ReLU, 100.7M parameters), an SGD optimizer with momentum, and for the penalty variants a DeepKMeans over
every layer (K = 16, p = 0.5, rows of d = 4); then a few training steps on random data. Prints each variant's
peak resident memory and its ratio to plain training. Differentiable k-means (coremltools DKM) keeps soft
assignments for every weight and is known to run out of memory on large layers; the exact penalty keeps
one index per row.

    python benchmarks/memory.py [--steps 3] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch import nn

VARIANTS = ("plain", "loss", "gradient")


def _model() -> nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(6):
        layers += [nn.Linear(4096, 4096), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _child(variant: str, steps: int, batch: int) -> None:
    from deepkmeans import CompressConfig, DeepKMeans, LayerSpec, RegularizerConfig
    from deepkmeans.train import step

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    dkm = None
    started = time.perf_counter()
    if variant != "plain":
        config = CompressConfig(layers={"*": LayerSpec(K=16, p=0.5, d=4)})
        dkm = DeepKMeans(model, config, RegularizerConfig("kmeans", lam=1.0, refresh_every=100, apply=variant))
    setup = time.perf_counter() - started
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 4096, generator=gen), torch.randn(batch, 4096, generator=gen)
    started = time.perf_counter()
    for _ in range(steps):
        step(nn.functional.mse_loss(model(x), y), opt, dkm)
    step = (time.perf_counter() - started) / steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"variant": variant, "peak": peak, "params": params, "setup": setup, "step": step}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.steps, args.batch)
        return
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps), "--batch", str(args.batch)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    plain = results["plain"]["peak"]
    params = results["plain"]["params"]
    print(
        f"{params / 1e6:.1f}M parameters ({4 * params / 2**20:.0f} MiB float32), batch {args.batch}, SGD with momentum"
    )
    print("| training | peak resident memory | vs plain | k-means setup | time per step |")
    print("|---|---|---|---|---|")
    for variant, r in results.items():
        name = "plain" if variant == "plain" else f"exact k-means penalty, apply '{variant}'"
        peak = f"{r['peak'] / 2**20:.0f} MiB | {r['peak'] / plain:.2f}x"
        print(f"| {name} | {peak} | {r['setup']:.1f} s | {r['step']:.2f} s |")


if __name__ == "__main__":
    main()
