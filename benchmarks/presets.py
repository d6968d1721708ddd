"""Paper-accounting and file CR of the three WRN-16-4 presets (45x / 47x / 50x).

Without --checkpoint the weights are a freshly initialised WRN-16-4 (He init, seeded), which says
how the presets' K/p lists translate into bits, not what accuracy they keep.

    python benchmarks/presets.py [--checkpoint CKPT]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from deepkmeans import account, compress, save
from deepkmeans.config import load_config
from deepkmeans.files.models import load_model_file
from deepkmeans.models.wrn import wrn16_4

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"cr45": "wrn16_4_cifar10.yaml", "cr47": "wrn16_4_cifar10_cr47.yaml", "cr50": "wrn16_4_cifar10_cr50.yaml"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="trained WRN-16-4 checkpoint (default: random init, seed 0)")
    args = parser.parse_args()
    if args.checkpoint:
        model = load_model_file(args.checkpoint).model
        source = f"checkpoint {args.checkpoint}"
    else:
        torch.manual_seed(0)
        model = wrn16_4()
        source = "random He-initialised weights (seed 0)"
    print(f"WRN-16-4 presets on {source}")
    print("| preset | paper-accounting CR | file CR | file bytes | dense float32 bytes |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for preset, name in PRESETS.items():
            cfg = load_config(ROOT / "configs" / name)
            shared = compress(model, cfg.compress)
            size = save(shared, Path(tmp) / f"{preset}.dkm", {"name": "wrn16_4", "dataset": "cifar10"})
            acc = account(shared, size)
            print(f"| {preset} | {acc.paper_cr:.1f}x | {acc.file_cr:.1f}x | {size} | {acc.dense_bytes} |")


if __name__ == "__main__":
    main()
