"""Keep it small after deepkmeans: compact shared layers at run time, ONNX sizes, and Core ML palettization.

For LeNet-5-Caffe (the default config) and WRN-16-4 (the 47x preset), with seeded random weights (sizes and
speed do not depend on training):
  1. PyTorch: resident parameter + buffer bytes and forward time, dense vs compact shared layers
     (centers + uint8 indexes, the weight rebuilt in forward), at batch 1 and 64, interleaved, median of
     --repeat runs; and the largest difference between the two models' outputs.
  2. Files: float32 state dict (torch.save), .dkm, dense .onnx, compressed .onnx, and ONNX Runtime's largest
     difference from PyTorch on the compressed file.
  3. Core ML (if coremltools is installed; conversion and palettization run on Linux, prediction does not):
     LeNet-5 as an fp16 ML program, palettized by coremltools' k-means at 8 / 6 / 4 bits per weight, vector
     palettization of groups of output channels, and whether the weight-shared model fits its 'unique' mode.

    pip install onnx onnxscript onnxruntime coremltools==9.0
    python benchmarks/deploy.py [--repeat 30] [--skip-coreml]
"""

from __future__ import annotations

import argparse
import copy
import glob
import io
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepkmeans import compress, materialize, save
from deepkmeans.config import load_config
from deepkmeans.models import build_model, model_info

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"lenet5_caffe": "lenet5_mnist.yaml", "wrn16_4": "wrn16_4_cifar10_cr47.yaml"}


def resident_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each storage counted once."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def forward_ms(models: dict[str, nn.Module], x: torch.Tensor, repeat: int) -> dict[str, float]:
    """Median forward time per model, the models run alternately so noise hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for m in models.values():
        m(x)
    for _ in range(repeat):
        for name, m in models.items():
            start = time.perf_counter()
            m(x)
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def _models(name: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    dense = build_model(name).eval()
    compact = compress(dense, load_config(ROOT / "configs" / MODELS[name]).compress).eval()
    return materialize(compact), compact


def runtime_table(repeat: int) -> str:
    lines = [
        "| model | resident bytes, dense | compact | dense / compact | batch | forward dense | compact"
        " | compact / dense | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        dense, compact = _models(name)
        rb_dense, rb_compact = resident_bytes(dense), resident_bytes(compact)
        for batch in (1, 64):
            x = torch.randn(batch, *model_info(name).input_shape, generator=torch.Generator().manual_seed(1))
            ms = forward_ms({"dense": dense, "compact": compact}, x, repeat)
            with torch.no_grad():
                diff = float((dense(x) - compact(x)).abs().max())
            sizes = f"{rb_dense:,} | {rb_compact:,} | {rb_dense / rb_compact:.1f}x"
            speed = f"{ms['dense']:.2f} ms | {ms['compact']:.2f} ms | {ms['compact'] / ms['dense']:.2f}"
            lines.append(f"| {name} | {sizes} | {batch} | {speed} | {diff:g} |")
    return "\n".join(lines)


def files_table(work: Path) -> str:
    import onnxruntime as ort

    from deepkmeans.export import export_onnx

    lines = [
        "| model | float32 state dict | .dkm | dense .onnx | compressed .onnx | index bits in .onnx | ORT vs PyTorch |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in MODELS:
        _, compact = _models(name)
        buffer = io.BytesIO()
        torch.save(materialize(compact).state_dict(), buffer)
        dkm = save(compact, work / f"{name}.dkm", {"name": name})
        x = torch.randn(4, *model_info(name).input_shape, generator=torch.Generator().manual_seed(2))
        small = export_onnx(compact, x[:1], work / f"{name}.onnx")
        full = export_onnx(compact, x[:1], work / f"{name}_dense.onnx", dense=True)
        session = ort.InferenceSession(small.path)
        with torch.no_grad():
            diff = np.abs(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0] - compact(x).numpy()).max()
        widths = sorted({layer.index_bits for layer in small.layers})
        lines.append(
            f"| {name} | {buffer.tell():,} | {dkm:,} | {full.bytes:,} | {small.bytes:,}"
            f" | {', '.join(map(str, widths))} | {diff:.2g} |"
        )
    return "\n".join(lines)


def _package_bytes(path: Path) -> int:
    return sum(os.path.getsize(f) for f in glob.glob(str(path / "**" / "*"), recursive=True) if os.path.isfile(f))


def coreml_table(work: Path) -> str:
    import coremltools as ct
    import coremltools.optimize as cto

    dense, compact = _models("lenet5_caffe")
    x = torch.zeros(1, *model_info("lenet5_caffe").input_shape)

    def convert(model: nn.Module) -> object:
        traced = torch.jit.trace(copy.deepcopy(model), x)
        return ct.convert(
            traced,
            inputs=[ct.TensorType(shape=x.shape)],
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS18,
        )

    def size(mlmodel: object, tag: str) -> int:
        path = work / f"{tag}.mlpackage"
        mlmodel.save(str(path))
        return _package_bytes(path)

    base = convert(dense)
    rows = [("fp16 ML program (no palettization)", size(base, "dense"))]
    for nbits in (8, 6, 4):
        config = cto.coreml.OpPalettizerConfig(mode="kmeans", nbits=nbits, weight_threshold=0)
        pal = cto.coreml.palettize_weights(base, cto.coreml.OptimizationConfig(global_config=config))
        rows.append((f"k-means palettization, {nbits}-bit per weight, one LUT per tensor", size(pal, f"k{nbits}")))
    config = cto.coreml.OpPalettizerConfig(mode="kmeans", nbits=6, cluster_dim=5, weight_threshold=0)
    try:
        pal = cto.coreml.palettize_weights(base, cto.coreml.OptimizationConfig(global_config=config))
        rows.append(("vector palettization, 64 centers of 5 output channels (6 bits per 5 weights)", size(pal, "v6")))
    except Exception as exc:
        rows.append((f"vector palettization (cluster_dim=5): refused ({type(exc).__name__}: {str(exc)[:80]})", 0))
    shared = convert(materialize(compact))
    config = cto.coreml.OpPalettizerConfig(mode="unique", weight_threshold=0)
    try:
        pal = cto.coreml.palettize_weights(shared, cto.coreml.OptimizationConfig(global_config=config))
        rows.append(("the weight-shared model, 'unique' mode (its own values as the LUT)", size(pal, "unique")))
    except Exception as exc:
        rows.append((f"the weight-shared model, 'unique' mode: refused ({type(exc).__name__}: {str(exc)[:100]})", 0))
    dkm = save(compact, work / "lenet.dkm", {"name": "lenet5_caffe"})
    lines = ["| LeNet-5-Caffe as | bytes | vs .dkm |", "|---|---|---|"]
    lines += [f"| {label} | {b:,} | {b / dkm:.1f}x |" if b else f"| {label} | - | - |" for label, b in rows]
    lines.append(f"| deepkmeans .dkm (default config) | {dkm:,} | 1.0x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--skip-coreml", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(runtime_table(args.repeat), "\n", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(files_table(Path(tmp)), "\n", flush=True)
        if not args.skip_coreml:
            print(coreml_table(Path(tmp)))


if __name__ == "__main__":
    main()
