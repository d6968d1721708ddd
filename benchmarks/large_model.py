"""The largest model compressed, saved and loaded here: time and peak memory of each step, in one process.

17 Linear 4096 x 4096 layers (285M weights, 1.1 GiB as float32), every layer shared with ``'*': {K, d}``
(default K = 16, d = 1: scalar sharing), then saved, read back materialized (dense) and compact.

    python benchmarks/large_model.py [--layers 17] [--k 16] [--d 1]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from deepkmeans import CompressConfig, LayerSpec, compress, load, save


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=17)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--d", type=int, default=1)
    args = parser.parse_args()

    def build() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(*[nn.Linear(4096, 4096) for _ in range(args.layers)])

    model = build()
    weights = sum(p.numel() for p in model.parameters())
    print(f"{args.layers} Linear 4096x4096: {weights / 1e6:.0f}M parameters, {4 * weights / 2**30:.2f} GiB float32")
    print(f"after building: peak {peak_mib():.0f} MiB")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "large.dkm"
        start = time.perf_counter()
        shared = compress(model, CompressConfig(layers={"*": LayerSpec(K=args.k, d=args.d)}), inplace=True)
        print(f"compress (K = {args.k}, d = {args.d}): {time.perf_counter() - start:.0f} s, peak {peak_mib():.0f} MiB")
        start = time.perf_counter()
        size = save(shared, path)
        print(f"save: {size / 2**20:.1f} MiB file in {time.perf_counter() - start:.0f} s, peak {peak_mib():.0f} MiB")
        del shared, model
        for materialize in (False, True):
            start = time.perf_counter()
            loaded = load(path, model=build(), materialize=materialize)
            kind = "dense" if materialize else "compact"
            resident = sum(t.numel() * t.element_size() for t in [*loaded.parameters(), *loaded.buffers()])
            print(
                f"load ({kind}): {time.perf_counter() - start:.0f} s, resident {resident / 2**20:.0f} MiB,"
                f" peak so far {peak_mib():.0f} MiB"
            )
            del loaded


if __name__ == "__main__":
    main()
