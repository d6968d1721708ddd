"""Atomic file writes: a reader sees the old content or the complete new one, never a torn file."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write bytes so that ``path`` holds either the old or the complete new content, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; outputs get the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_figure(fig: Any, path: str | Path, dpi: int) -> Path:
    """Render a matplotlib figure in memory (format from the suffix, PNG by default), then write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    write_atomic(path, buf.getvalue())
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | Path) -> None:
    """Fail now, in one line, if a file cannot be written at ``path`` (before any long work is done).

    Creates the missing parent folders (the output would need them anyway) and a temporary file beside
    ``path``, which it removes again.
    """
    from deepkmeans.errors import DeepKMeansError

    if str(path).strip() == "":
        raise DeepKMeansError("the output path is empty")
    path = Path(path)
    if path.is_dir():
        raise DeepKMeansError(f"{path}: is a directory; give a file path for the output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".check")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise DeepKMeansError(f"{path}: cannot write here ({exc.strerror or exc})") from None
