"""Training checkpoints: written atomically, read back without unpickling code."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch

from deepkmeans.errors import DeepKMeansError
from deepkmeans.files.atomic import write_atomic


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomic ``torch.save``: an interrupted write never leaves a half checkpoint behind."""
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code from the file)."""
    path = Path(path)
    if path.is_dir():
        raise DeepKMeansError(f"checkpoint {path} is a directory")
    if not path.is_file():
        raise DeepKMeansError(f"checkpoint {path} not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on unsafe pickles: the error below says it all
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DeepKMeansError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise DeepKMeansError(f"{path}: not a deepkmeans checkpoint (no model state)")
    return state
