"""The compressed-file container: a 24-byte header, then the payload.

Layout (little endian)::

    magic   4 bytes  b"DKMC"
    version u16      FORMAT_VERSION (this build reads versions 1 to 4)
    flags   u16      0 (reserved)
    crc32   u32      CRC-32 of the payload
    length  u64      payload length in bytes
    reserved u32     0
    payload          version 4: packed (below); versions 1 to 3: a safetensors file whose ``__metadata__``
                     holds one JSON document under "deepkmeans"

The version-4 payload is one deflated JSON document, then every tensor's bytes back to back::

    u32    deflated metadata length in bytes
    u32    metadata length in bytes once inflated (at most MAX_METADATA_BYTES)
    ...    the metadata, UTF-8 JSON, deflated (zlib format)
    ...    data: the tensors of the metadata's "tensors" table, in table order, each little endian, no padding

The table lists ``[name, dtype, shape]`` for each tensor: offsets follow from the order, so tensors can neither
overlap nor leave gaps, and the reader checks that their sizes add up to the data section before it inflates
anything larger than the metadata or allocates any tensor. The loader never executes code; the header lets us
reject foreign, truncated or corrupted files with a precise message before parsing anything.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import Any

import safetensors.torch
import torch

from deepkmeans.errors import FormatError

MAGIC = b"DKMC"
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
_HEADER = struct.Struct("<4sHHIQI")
HEADER_SIZE = _HEADER.size
META_KEY = "deepkmeans"
TABLE_KEY = "tensors"
_SIZES = struct.Struct("<II")
MAX_METADATA_BYTES = 1 << 24  # 16 MiB of JSON: far above what a model of thousands of layers needs
MAX_NDIM = 8
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def pack(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    """Serialize metadata + named tensors into version-4 container bytes (deterministic for equal inputs)."""
    table, chunks = [], []
    for name, tensor in tensors.items():
        if tensor.dtype not in DTYPE_NAMES:
            raise FormatError(f"tensor {name!r}: dtype {tensor.dtype} cannot be stored")
        table.append([name, DTYPE_NAMES[tensor.dtype], list(tensor.shape)])
        chunks.append(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    doc = json.dumps({**meta, TABLE_KEY: table}, sort_keys=True, separators=(",", ":")).encode()
    deflated = zlib.compress(doc, 9)
    payload = _SIZES.pack(len(deflated), len(doc)) + deflated + b"".join(chunks)
    return _HEADER.pack(MAGIC, FORMAT_VERSION, 0, zlib.crc32(payload), len(payload), 0) + payload


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
        meta, tensors = _unpack_packed(payload) if version >= 4 else _unpack_safetensors(payload)
    except Exception as exc:
        raise FormatError(f"{source}: malformed payload ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict):
        raise FormatError(f"{source}: malformed metadata")
    return meta, tensors


def _unpack_safetensors(payload: bytes) -> tuple[Any, dict[str, torch.Tensor]]:
    """Versions 1 to 3: a safetensors file with the metadata in its header."""
    tensors = safetensors.torch.load(payload)
    header_len = struct.unpack_from("<Q", payload)[0]
    header = json.loads(payload[8 : 8 + header_len])
    return json.loads(header["__metadata__"][META_KEY]), tensors


def _unpack_packed(payload: bytes) -> tuple[Any, dict[str, torch.Tensor]]:
    """Version 4: inflate the metadata (bounded), check the tensor table against the data, then copy tensors."""
    if len(payload) < _SIZES.size:
        raise ValueError("no metadata lengths")
    deflated_len, meta_len = _SIZES.unpack_from(payload)
    start = _SIZES.size + deflated_len
    if start > len(payload):
        raise ValueError(f"metadata of {deflated_len} bytes runs past the payload")
    if meta_len > MAX_METADATA_BYTES:
        raise ValueError(f"metadata of {meta_len} bytes is over the {MAX_METADATA_BYTES} this reader accepts")
    inflater = zlib.decompressobj()
    text = inflater.decompress(payload[_SIZES.size : start], meta_len + 1)
    if len(text) != meta_len or not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
        raise ValueError(f"metadata does not inflate to exactly its stated {meta_len} bytes")
    meta = json.loads(text)
    if not isinstance(meta, dict) or TABLE_KEY not in meta:
        raise ValueError("metadata is not an object with a tensor table")
    return meta, _tensors(meta.pop(TABLE_KEY), memoryview(payload)[start:])


def _table_entry(entry: Any) -> tuple[str, torch.dtype, tuple[int, ...], int]:
    """One validated ``[name, dtype, shape]`` entry and its size in bytes."""
    if not isinstance(entry, list) or len(entry) != 3:
        raise ValueError("a tensor table entry must be [name, dtype, shape]")
    name, dtype, shape = entry
    if not isinstance(name, str) or not name:
        raise ValueError("a tensor name must be a non-empty string")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ValueError(f"tensor {name!r}: unknown dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise ValueError(f"tensor {name!r}: shape must be a list of at most {MAX_NDIM} sizes")
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**40 for s in shape):
        raise ValueError(f"tensor {name!r}: sizes must be integers in [0, 2**40)")
    return name, DTYPES[dtype], tuple(shape), math.prod(shape) * DTYPES[dtype].itemsize


def _tensors(table: Any, data: memoryview) -> dict[str, torch.Tensor]:
    """The tensors of ``table`` read from ``data``: every entry and the total size checked before any copy."""
    if not isinstance(table, list):
        raise ValueError("the tensor table must be a list")
    entries = [_table_entry(entry) for entry in table]
    if len({name for name, *_ in entries}) != len(entries):
        raise ValueError("a tensor name appears twice in the table")
    if sum(nbytes for *_, nbytes in entries) != len(data):
        raise ValueError(f"the tensor table does not account for the {len(data)} data bytes exactly")
    tensors, offset = {}, 0
    for name, dtype, shape, nbytes in entries:
        chunk = bytearray(data[offset : offset + nbytes])
        offset += nbytes
        if dtype == torch.bool and chunk.translate(None, b"\x00\x01"):
            raise ValueError(f"tensor {name!r}: boolean bytes must be 0 or 1")
        flat = torch.frombuffer(chunk, dtype=dtype) if nbytes else torch.zeros(0, dtype=dtype)
        tensors[name] = flat.reshape(shape)
    return tensors
