"""Where the bytes of a compressed file go: paper-counted payload, BatchNorm, container (seeded, untrained weights).

    python benchmarks/file_bytes.py [--batchnorm inference|half|full]

ResNet-20 and WRN-16-1 (MNIST shape) with K = 4, p = 0.5 on every conv and K = 4 on the linear layer, and
LeNet-5-Caffe with the default run's compress layers. Untrained weights: the sizes depend on the assignment
counts, which the weights' values barely move at these K and p.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch

from deepkmeans import account, compress, save
from deepkmeans.config import CompressConfig, LayerSpec
from deepkmeans.models import build_model

CONFIGS = {
    "resnet20_mnist": {"*conv*": LayerSpec(4, 0.5), "linear": LayerSpec(4)},
    "wrn16_1_mnist": {"*conv*": LayerSpec(4, 0.5), "*shortcut*": LayerSpec(4, 0.5), "linear": LayerSpec(4)},
    "lenet5_caffe": {
        "conv1": LayerSpec(32, 0.0),
        "conv2": LayerSpec(32, 0.5),
        "fc1": LayerSpec(64, 0.92, d=5),
        "fc2": LayerSpec(32, 0.5, d=2),
    },
}


def batchnorm_bytes(model: torch.nn.Module, batchnorm: str) -> int:
    """Bytes the file spends on BatchNorm: scale + shift per channel, or every tensor (``full``)."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    per_channel = {"inference": 8, "half": 4, "full": 16}[batchnorm]
    return sum(m.num_features * per_channel + (8 if batchnorm == "full" else 0) for m in norms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batchnorm", choices=["inference", "half", "full"], default="inference")
    args = parser.parse_args()
    print("| model | file bytes | paper-counted | BatchNorm | container | paper CR | file CR | file / paper |")
    print("|---|---|---|---|---|---|---|---|")
    for name, layers in CONFIGS.items():
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shared = compress(build_model(name), CompressConfig(layers=layers, seed=0))
        size = save(shared, Path(tempfile.mkdtemp()) / "m.dkm", name=name, batchnorm=args.batchnorm)
        acc = account(shared, size)
        counted, norm = round(acc.bits_after / 8), batchnorm_bytes(shared, args.batchnorm)
        print(
            f"| {name} | {size} | {counted} | {norm} | {size - counted - norm} | {acc.paper_cr:.1f}x"
            f" | {acc.file_cr:.1f}x | {acc.file_cr / acc.paper_cr:.2f} |"
        )


if __name__ == "__main__":
    main()
