"""The compressed-file container: a 24-byte header, then a safetensors payload.

Layout (little endian)::

    magic   4 bytes  b"DKMC"
    version u16      FORMAT_VERSION (this build reads versions 1 to 3); 3 only when a layer is stored narrow
    flags   u16      0 (reserved)
    crc32   u32      CRC-32 of the payload
    length  u64      payload length in bytes
    reserved u32     0
    payload          safetensors bytes; its ``__metadata__`` holds one JSON document under "deepkmeans"

safetensors gives a loader that never executes code; the header lets us reject foreign, truncated or
corrupted files with a precise message before parsing anything.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import safetensors.torch
import torch

from deepkmeans.errors import FormatError

MAGIC = b"DKMC"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
_HEADER = struct.Struct("<4sHHIQI")
HEADER_SIZE = _HEADER.size
META_KEY = "deepkmeans"


def pack(meta: dict[str, Any], tensors: dict[str, torch.Tensor], version: int = FORMAT_VERSION) -> bytes:
    """Serialize metadata + named tensors into container bytes (deterministic for equal inputs); ``version``: the
    oldest format that holds what ``meta`` describes, so older readers still open the files they can read."""
    doc = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    payload = safetensors.torch.save({k: v.contiguous() for k, v in tensors.items()}, {META_KEY: doc})
    return _HEADER.pack(MAGIC, version, 0, zlib.crc32(payload), len(payload), 0) + payload


def unpack(data: bytes, source: str = "<bytes>") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Parse container bytes; every defect becomes a :class:`FormatError` naming ``source``."""
    if len(data) < HEADER_SIZE:
        raise FormatError(f"{source}: file is truncated ({len(data)} bytes; not a deepkmeans file?)")
    magic, version, _flags, crc, length, _reserved = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FormatError(f"{source}: not a deepkmeans compressed file (bad magic {magic!r})")
    if version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise FormatError(f"{source}: format version {version} is not supported (this build reads versions {readable})")
    payload = data[HEADER_SIZE:]
    if len(payload) != length:
        raise FormatError(f"{source}: file is truncated or padded ({len(payload)} of {length} payload bytes)")
    if zlib.crc32(payload) != crc:
        raise FormatError(f"{source}: checksum mismatch, the file is corrupt")
    try:
        tensors = safetensors.torch.load(payload)
        header_len = struct.unpack_from("<Q", payload)[0]
        header = json.loads(payload[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"][META_KEY])
    except Exception as exc:
        raise FormatError(f"{source}: malformed payload ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict):
        raise FormatError(f"{source}: malformed metadata")
    return meta, tensors
