"""Seeded fuzzing of the compressed-file reader: any input is a one-line FormatError or a runnable model.

Seed files come from ``compress`` + ``save`` (format version 4). Each case mutates one seed: raw byte
edits that the CRC-32 catches, and structured edits of the payload (its two lengths, the deflated metadata,
the tensor table, tensor bytes, metadata JSON) after which the header's CRC-32 and length are recomputed,
so only validation stops them. ``DEEPKMEANS_FUZZ_CASES`` sets the number of cases; case ``i`` is reproducible on
its own.
"""

from __future__ import annotations

import copy
import faulthandler
import json
import math
import os
import random
import resource
import struct
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deepkmeans import compress, load, save
from deepkmeans.cli import main
from deepkmeans.codec.container import FORMAT_VERSION, HEADER_SIZE, MAGIC, TABLE_KEY
from deepkmeans.codec.model_file import MIN_WEIGHT_LIMIT
from deepkmeans.config import CompressConfig, LayerSpec
from deepkmeans.errors import FormatError
from deepkmeans.files.models import load_compressed
from deepkmeans.models import MODELS

N_CASES = int(os.environ.get("DEEPKMEANS_FUZZ_CASES", "200"))
BASE_SEED = 20180710
CASE_CPU_SECONDS = 2.0  # generous bound: a case normally takes a few milliseconds
WATCHDOG_SECONDS = 120  # a case that blocks this long dumps all stacks and ends the run
MAX_RSS_GROWTH = 1 << 30  # peak memory may not grow by more than this over all cases

SEED_CONFIGS = [
    CompressConfig(
        layers={
            "conv1": LayerSpec(1),
            "conv2": LayerSpec(8, 0.5, d=1),
            "fc1": LayerSpec(4, 0.9, d=5),
            "fc2": LayerSpec(4),
        },
        seed=1,
    ),
    CompressConfig(
        layers={
            "conv1": LayerSpec(3, 0.5, d=1),
            "conv2": LayerSpec(100_000),  # K >= N: stays dense
            "fc1": LayerSpec(2, 0.9, d=5),
            "fc2": LayerSpec(1, d=5),
        },
        seed=2,
    ),
]

# a model with BatchNorm, stored in inference form (norm/<module> tensors)
BATCHNORM_SEED = (
    "resnet20_mnist",
    CompressConfig(layers={"*conv*": LayerSpec(4, 0.5), "linear": LayerSpec(4)}, seed=3),
)

DTYPE_NAMES = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.uint64): "U64",
    np.dtype(np.int32): "I32",
    np.dtype(np.uint32): "U32",
    np.dtype(np.int16): "I16",
    np.dtype(np.uint16): "U16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}
EXTRA_DTYPE_NAMES = ["BF16", "F8_E4M3", "F8_E5M2", "C64", "f32", "", "F128", "I4"]
HUGE = [2**31, 2**32 + 1, 2**40, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64, 2**64 + 7, 10**30, 10**400]


def evil_values(rng: random.Random) -> list[Any]:
    """JSON values that a careless reader might trust: wrong types, extremes, NaN, deep nesting."""
    deep: Any = []
    for _ in range(rng.choice([3, 50, 200])):
        deep = [deep]
    return [
        None,
        True,
        False,
        0,
        1,
        -1,
        -(2**63),
        rng.choice(HUGE),
        -rng.choice(HUGE),
        0.5,
        2.5,
        1e308,
        math.nan,
        math.inf,
        -math.inf,
        "",
        "5",
        "x" * rng.randint(1, 64),
        "line\nbreak",
        [],
        {},
        [1, 2],
        [[1], [2]],
        [-1],
        [math.nan],
        [rng.choice(HUGE)],
        [rng.randint(-3, 3) for _ in range(rng.randint(1, 8))],
        {"a": 1},
        deep,
    ]


@dataclass
class Seed:
    """A valid compressed file taken apart: named arrays (in file order) and the metadata document."""

    data: bytes
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    def shared_layers(self) -> list[str]:
        return sorted(self.meta["layers"])


def parse_seed(data: bytes) -> Seed:
    """Split a file written by ``save`` into arrays + metadata (trusted input, no validation)."""
    deflated_len, _ = struct.unpack_from("<II", data, HEADER_SIZE)
    start = HEADER_SIZE + 8
    meta = json.loads(zlib.decompress(data[start : start + deflated_len]))
    body = data[start + deflated_len :]
    names = {v: k for k, v in DTYPE_NAMES.items()}
    arrays, offset = {}, 0
    for name, dtype, shape in meta.pop(TABLE_KEY):
        count = math.prod(shape)
        arrays[name] = np.frombuffer(body, dtype=names[dtype], count=count, offset=offset).reshape(shape).copy()
        offset += count * arrays[name].itemsize
    return Seed(data, arrays, meta)


def layout(arrays: dict[str, np.ndarray]) -> tuple[list[Any], bytes]:
    """Tensor table + data bytes for ``arrays``, consistent by construction."""
    table = [[name, DTYPE_NAMES[arr.dtype], list(arr.shape)] for name, arr in arrays.items()]
    return table, b"".join(np.ascontiguousarray(arr).tobytes() for arr in arrays.values())


def meta_doc(meta: Any) -> str:
    """The metadata JSON as the writer would produce it (NaN/Infinity allowed, to test the reader)."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=True)


def payload_bytes(text: bytes, body: bytes, meta_len: int | None = None, deflated: bytes | None = None) -> bytes:
    """A version-4 payload: the lengths, ``text`` deflated (or ``deflated`` verbatim), then ``body``."""
    deflated = zlib.compress(text) if deflated is None else deflated
    meta_len = len(text) if meta_len is None else meta_len
    return struct.pack("<II", len(deflated) % 2**32, meta_len % 2**32) + deflated + body


def with_table(meta: Any, table: Any) -> bytes:
    """The metadata document text with ``table`` as its tensor table."""
    return meta_doc({**meta, TABLE_KEY: table}).encode()


def container(
    payload: bytes,
    *,
    magic: bytes = MAGIC,
    version: int = FORMAT_VERSION,
    flags: int = 0,
    crc: int | None = None,
    length: int | None = None,
    reserved: int = 0,
) -> bytes:
    """The 24-byte header (CRC-32 and length recomputed unless given) + payload."""
    crc = zlib.crc32(payload) if crc is None else crc
    length = len(payload) if length is None else length
    return struct.pack("<4sHHIQI", magic, version, flags, crc, length, reserved) + payload


def build(arrays: dict[str, np.ndarray], meta: Any) -> bytes:
    """A well-formed container around (possibly inconsistent) arrays and metadata."""
    table, body = layout(arrays)
    return container(payload_bytes(with_table(meta, table), body))


# --- mutators: (rng, seed) -> (description, file bytes) ------------------------------------------------

Mutator = Callable[[random.Random, Seed], tuple[str, bytes]]


def _positions(rng: random.Random, size: int, count: int, lo: int = 0) -> list[int]:
    return [rng.randrange(lo, size) for _ in range(count)]


def _edit_bytes(rng: random.Random, data: bytes, lo: int = 0) -> tuple[str, bytes]:
    """One random byte-level edit at or after ``lo``: flips, overwrites, insertion, deletion, truncation."""
    buf = bytearray(data)
    kind = rng.choice(["flip", "overwrite", "insert", "delete", "truncate"])
    if kind == "flip":
        spots = _positions(rng, len(buf), rng.randint(1, 8), lo)
        for pos in spots:
            buf[pos] ^= 1 << rng.randrange(8)
        return f"flip bits at {spots}", bytes(buf)
    if kind == "overwrite":
        spots = _positions(rng, len(buf), rng.randint(1, 16), lo)
        for pos in spots:
            buf[pos] = rng.randrange(256)
        return f"overwrite bytes at {spots}", bytes(buf)
    if kind == "insert":
        pos = rng.randrange(lo, len(buf) + 1)
        junk = rng.randbytes(rng.randint(1, 64))
        return f"insert {len(junk)} bytes at {pos}", bytes(buf[:pos] + junk + buf[pos:])
    if kind == "delete":
        pos = rng.randrange(lo, len(buf))
        n = rng.randint(1, 256)
        return f"delete {n} bytes at {pos}", bytes(buf[:pos] + buf[pos + n :])
    pos = rng.randrange(lo, len(buf))
    return f"truncate at {pos}", bytes(buf[:pos])


def raw_edit(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    """Byte edits anywhere in the file, header untouched: the checksum or length check must catch them."""
    return _edit_bytes(rng, seed.data)


def append_junk(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    junk = rng.randbytes(rng.randint(1, 4096))
    return f"append {len(junk)} bytes", seed.data + junk


def header_field(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    """Edit one field of the 24-byte container header."""
    payload = seed.data[HEADER_SIZE:]
    field = rng.choice(["magic", "version", "flags", "crc", "length", "reserved"])
    if field == "magic":
        value: Any = rng.choice([b"DKMD", b"\x00\x00\x00\x00", b"dkmc", rng.randbytes(4)])
        return f"magic={value!r}", container(payload, magic=value)
    if field == "version":
        value = rng.choice([0, 2, 255, 65535, rng.randrange(65536)])
        return f"version={value}", container(payload, version=value)
    if field == "flags":
        value = rng.randrange(65536)
        return f"flags={value}", container(payload, flags=value)
    if field == "crc":
        value = rng.choice([0, 2**32 - 1, zlib.crc32(payload) ^ (1 << rng.randrange(32))])
        return f"crc={value}", container(payload, crc=value)
    if field == "length":
        value = rng.choice([0, 1, len(payload) - 1, len(payload) + 1, 2**63, 2**64 - 1, rng.randrange(2**64)])
        return f"length={value}", container(payload, length=value)
    value = rng.randrange(2**32)
    return f"reserved={value}", container(payload, reserved=value)


def payload_edit(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    """Byte edits of the payload with CRC-32 and length recomputed: safetensors parsing or decoding must cope."""
    desc, payload = _edit_bytes(rng, seed.data[HEADER_SIZE:])
    return f"payload {desc}", container(payload)


def _parts(seed: Seed) -> tuple[bytes, bytes]:
    """The seed's inflated metadata text and its data bytes."""
    deflated_len, _ = struct.unpack_from("<II", seed.data, HEADER_SIZE)
    start = HEADER_SIZE + 8
    return zlib.decompress(seed.data[start : start + deflated_len]), seed.data[start + deflated_len :]


def header_text_edit(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    """Scribble inside the metadata text before deflating it (CRC and lengths recomputed)."""
    text, body = _parts(seed)
    buf = bytearray(text)
    alphabet = b'{}[]",:-0123456789eE.aNInfinity \\/\x00\xff'
    spots = _positions(rng, len(buf), rng.randint(1, 6))
    for pos in spots:
        buf[pos] = rng.choice(alphabet)
    return f"metadata text bytes at {spots}", container(payload_bytes(bytes(buf), body))


def header_len_edit(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    """Wrong lengths: of the deflated metadata or of the inflated text (zero, off by a few, huge), or a
    deflate stream edited in place."""
    text, body = _parts(seed)
    deflated = zlib.compress(text)
    field = rng.choice(["deflated", "inflated", "stream"])
    if field == "stream":
        desc, edited = _edit_bytes(rng, deflated)
        return f"deflate stream {desc}", container(payload_bytes(text, body, deflated=edited))
    size = len(deflated) if field == "deflated" else len(text)
    value = rng.choice([0, 1, size - rng.randint(1, 8), size + rng.randint(1, 8), 2**24 + 1, 2**32 - 1])
    payload = bytearray(payload_bytes(text, body))
    struct.pack_into("<I", payload, 0 if field == "deflated" else 4, value % 2**32)
    return f"{field} metadata length={value}", container(bytes(payload))


def tensor_entry(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    """Inconsistent tensor table entry (name, dtype, shape), data bytes unchanged."""
    table, body = layout(seed.arrays)
    index = rng.randrange(len(table))
    entry = table[index]
    key = rng.choice(["name", "dtype", "shape", "drop", "extra"])
    if key == "drop":
        del entry[rng.randrange(3)]
    elif key == "extra":
        entry.append(rng.choice(evil_values(rng)))
    elif key == "name":
        entry[0] = rng.choice([table[(index + 1) % len(table)][0], "", "norm/conv1", rng.choice(evil_values(rng))])
    elif key == "dtype":
        entry[1] = rng.choice(list(DTYPE_NAMES.values()) + EXTRA_DTYPE_NAMES + [rng.choice(evil_values(rng))])
    else:
        entry[2] = rng.choice(
            [
                [],
                [0],
                [-1],
                [rng.choice(HUGE)],
                [2**32, 2**32],
                [rng.randint(1, 10) for _ in range(rng.randint(1, 9))],
                list(reversed(entry[2])) + [2],
                rng.choice(evil_values(rng)),
            ]
        )
    desc = f"table[{index}] {key}: {json.dumps(entry, allow_nan=True)[:80]}"
    return desc, container(payload_bytes(with_table(seed.meta, table), body))


def _retyped(rng: random.Random, arr: np.ndarray) -> np.ndarray:
    dtype = rng.choice(list(DTYPE_NAMES))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return arr.astype(dtype)


def tensor_recast(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    """A tensor stored consistently but with another dtype or shape (centers F64, indexes I64, 3-D ...)."""
    arrays = dict(seed.arrays)
    name = rng.choice(sorted(arrays))
    arr = arrays[name]
    kind = rng.choice(["dtype", "flatten", "unsqueeze", "transpose", "empty", "shrink", "grow"])
    if kind == "dtype":
        arrays[name] = _retyped(rng, arr)
    elif kind == "flatten":
        arrays[name] = arr.reshape(-1)
    elif kind == "unsqueeze":
        arrays[name] = arr[None]
    elif kind == "transpose":
        arrays[name] = np.ascontiguousarray(arr.T if arr.ndim > 1 else arr.reshape(-1, 1))
    elif kind == "empty":
        arrays[name] = arr.reshape(-1)[:0]
    elif kind == "shrink":
        arrays[name] = arr.reshape(-1)[: rng.randrange(max(arr.size, 1))]
    else:
        extra = np.frombuffer(rng.randbytes(arr.itemsize * rng.randint(1, 64)), dtype=arr.dtype)
        arrays[name] = np.concatenate([arr.reshape(-1), extra])
    new = arrays[name]
    return f"{name}: {kind} -> {new.dtype}{list(new.shape)}", build(arrays, seed.meta)


def tensor_values(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    """Valid layout, edited values: NaN/inf centers, random or zero-ended index words, extreme biases."""
    arrays = {k: v.copy() for k, v in seed.arrays.items()}
    name = rng.choice(sorted(arrays))
    flat = arrays[name].reshape(-1)
    if flat.size == 0:
        return f"{name}: empty, unchanged", build(arrays, seed.meta)
    if flat.dtype == np.uint32:
        kind = rng.choice(["random words", "zero last word", "shuffle", "reverse", "one word"])
        if kind == "random words":
            idx = _positions(rng, flat.size, rng.randint(1, 32))
            flat[idx] = np.frombuffer(rng.randbytes(4 * len(idx)), dtype=np.uint32)
        elif kind == "zero last word":
            flat[-1] = 0
        elif kind == "shuffle":
            np.random.default_rng(rng.randrange(2**32)).shuffle(flat)
        elif kind == "reverse":
            flat[:] = flat[::-1].copy()
        else:
            arrays[name] = flat[-1:].copy()
    else:
        kind = rng.choice(["nan", "inf", "huge", "random"])
        value = {"nan": np.nan, "inf": np.inf, "huge": 3e38, "random": rng.gauss(0, 100)}[kind]
        flat[_positions(rng, flat.size, rng.randint(1, 8))] = value
    return f"{name}: {kind}", build(arrays, seed.meta)


def tensor_set(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    """Tensors missing, renamed, swapped between layers, or unexpected extras."""
    arrays = dict(seed.arrays)
    names = sorted(arrays)
    kind = rng.choice(["drop", "swap", "rename", "extra"])
    a, b = rng.sample(names, 2)
    if kind == "drop":
        del arrays[a]
        desc = f"drop {a}"
    elif kind == "swap":
        arrays[a], arrays[b] = arrays[b], arrays[a]
        desc = f"swap {a} and {b}"
    elif kind == "rename":
        new = rng.choice(["dense/ghost.weight", "shared/ghost/centers", "shared/conv1/indexes", a.upper(), b])
        arrays[new] = arrays.pop(a)
        desc = f"rename {a} -> {new}"
    else:
        new = rng.choice(["dense/ghost.weight", "shared/ghost/indexes", "other", "shared/conv1/indexes"])
        arrays[new] = np.arange(rng.randint(0, 16)).astype(rng.choice(list(DTYPE_NAMES)))
        desc = f"extra {new}"
    return desc, build(arrays, seed.meta)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document (lists of numbers count as one value and their items)."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:8]):
            out += _paths(v, (*prefix, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def meta_value(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    """Replace one metadata value by a hostile one (an unknown model *name* is tested separately)."""
    meta = copy.deepcopy(seed.meta)
    path = rng.choice(_paths(meta))
    values = evil_values(rng)
    if path == ("model", "name"):
        values = [v for v in values if not isinstance(v, str)] + ["wrn16_4", "lenet300_100"]
    value = rng.choice(values)
    _set(meta, path, value)
    return f"meta{list(path)}={meta_doc(value)[:60]}", build(seed.arrays, meta)


def meta_keys(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    """Remove, add or rename metadata keys (a layer the file has no tensors for, a missing 'counts' ...)."""
    meta = copy.deepcopy(seed.meta)
    dicts = [p for p in [(), *_paths(meta)] if isinstance(_get(meta, p), dict) and _get(meta, p)]
    path = rng.choice(dicts)
    target = _get(meta, path)
    key = rng.choice(sorted(target))
    kind = rng.choice(["drop", "add", "rename"])
    if kind == "drop":
        del target[key]
    elif kind == "add":
        target[rng.choice(["ghost", "", "conv1.weight", "x" * 200])] = copy.deepcopy(target[key])
    else:
        target[rng.choice(["ghost", key.upper(), "conv2" if key != "conv2" else "fc1"])] = target.pop(key)
    return f"{kind} key {key!r} under {list(path)}", build(seed.arrays, meta)


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def layer_semantics(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    """Well-typed but inconsistent layer entries: counts vs N, K vs centers, shape vs d, huge sizes, bad p."""
    meta = copy.deepcopy(seed.meta)
    name = rng.choice(seed.shared_layers())
    info = meta["layers"][name]
    counts: list[int] = info["counts"]
    n_rows = sum(counts)
    kind = rng.choice(
        [
            "count off by one",
            "counts permuted",
            "negative count",
            "extra center",
            "missing center",
            "shape permuted",
            "huge shape",
            "huge k=1",
            "negative dims",
            "zero dim",
            "d changed",
            "bad p",
        ]
    )
    if kind == "count off by one":
        counts[rng.randrange(len(counts))] += rng.choice([-1, 1])
    elif kind == "counts permuted":
        rng.shuffle(counts)
    elif kind == "negative count":
        counts[0] += n_rows + 1
        counts.append(-(n_rows + 1))
    elif kind == "extra center":
        counts.append(0)
    elif kind == "missing center":
        if len(counts) > 1:
            counts[0] += counts.pop()
    elif kind == "shape permuted":
        info["shape"] = list(reversed(info["shape"]))
    elif kind == "huge shape":  # consistent counts, past the reader's limit: rejected before allocating
        factor = 2 ** rng.randint((MIN_WEIGHT_LIMIT // math.prod(info["shape"])).bit_length(), 70)
        info["shape"][0] *= factor
        counts[0] += n_rows * (factor - 1)
    elif kind == "huge k=1":
        info["shape"] = [rng.choice(HUGE), info["d"]]
        info["counts"] = [info["shape"][0]]
    elif kind == "negative dims":
        info["shape"] = [-s for s in info["shape"][:2]] + info["shape"][2:]
    elif kind == "zero dim":
        info["shape"][rng.randrange(len(info["shape"]))] = 0
    elif kind == "d changed":
        info["d"] = rng.choice([0, -5, 1, 2, 5, 25, 10**6, info["d"] * 2])
    else:
        info["p"] = rng.choice([math.nan, math.inf, -math.inf, -0.5, 1.0, 7.0])
    return f"{name}: {kind} -> {meta_doc(info)[:120]}", build(seed.arrays, meta)


def meta_document(rng: random.Random, seed: Seed) -> tuple[str, bytes]:
    """The metadata document itself is not what it should be: not JSON, not an object, too deep, no table."""
    table, body = layout(seed.arrays)
    kind = rng.choice(["garbage", "not object", "deep", "nan", "huge number", "no table", "table not a list"])
    if kind == "garbage":
        doc = with_table(seed.meta, table).decode()
        pos = rng.randrange(len(doc))
        text = doc[:pos] + rng.choice(["", "}", "{", "\\", '"', "\x00", "NaN", "\ud800"]) + doc[pos + 1 :]
        return f"metadata text edited at {pos}", container(payload_bytes(text.encode(errors="surrogatepass"), body))
    if kind == "not object":
        text = rng.choice(["[]", "1", '"x"', "null", "true", "NaN", "[" + with_table(seed.meta, table).decode() + "]"])
        return f"metadata {text[:20]}", container(payload_bytes(text.encode(), body))
    if kind == "deep":
        depth = rng.choice([10_000, 100_000, 1_000_000])
        text = '{"tensors":[],"layers":' + "[" * depth + "]" * depth + "}"
        return f"metadata nested {depth} deep", container(payload_bytes(text.encode(), body))
    if kind == "nan":
        return "metadata NaN", container(payload_bytes(with_table({**seed.meta, "layers": math.nan}, table), body))
    if kind == "huge number":
        text = '{"tensors":[],"layers":{},"model":{"name":"lenet5_caffe","x":1' + "0" * 10_000 + "}}"
        return "metadata 10001-digit number", container(payload_bytes(text.encode(), body))
    if kind == "no table":
        return "metadata without a table", container(payload_bytes(meta_doc(seed.meta).encode(), body))
    table_value = rng.choice([{}, "x", 1, None, {"a": table}])
    return f"table {table_value!r:.20}", container(payload_bytes(with_table(seed.meta, table_value), body))


MUTATORS: dict[str, Mutator] = {
    "raw edit": raw_edit,
    "append": append_junk,
    "container header": header_field,
    "payload edit (crc fixed)": payload_edit,
    "metadata text": header_text_edit,
    "metadata lengths": header_len_edit,
    "tensor entry": tensor_entry,
    "tensor recast": tensor_recast,
    "tensor values": tensor_values,
    "tensor set": tensor_set,
    "meta value": meta_value,
    "meta keys": meta_keys,
    "layer semantics": layer_semantics,
    "meta document": meta_document,
}


def make_case(i: int, seeds: list[Seed]) -> tuple[str, str, bytes]:
    """Case ``i``: (category, description, file bytes); categories rotate so every one is covered."""
    rng = random.Random(BASE_SEED * 1_000_003 + i)
    category = list(MUTATORS)[i % len(MUTATORS)]
    seed = seeds[rng.randrange(len(seeds))]
    desc, data = MUTATORS[category](rng, seed)
    return category, desc, data


# --- running a case ------------------------------------------------------------------------------------


def run_case(path: Path, data: bytes) -> str:
    """Load ``data`` as a file: 'format error' (one-line message) or 'loaded' (after a forward pass)."""
    path.write_bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. a complex tensor cast to float32 by load_state_dict
            model = load(path)
            name = load_compressed(path).model["name"]
            with torch.no_grad():
                out = model.eval()(torch.randn(2, *MODELS[name].input_shape))
    except FormatError as exc:
        message = str(exc)
        assert message.startswith(f"{path}: ") and "\n" not in message, f"not a one-line message: {message!r}"
        return "format error"
    assert out.shape[0] == 2
    return "loaded"


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[Seed]:
    """Valid files from LeNet-5-Caffe with K=1, d=1, sparsity p and a layer left dense, and a ResNet-20 whose
    BatchNorm layers are stored in inference form."""
    out = []
    for i, (name, config) in enumerate([*(("lenet5_caffe", c) for c in SEED_CONFIGS), BATCHNORM_SEED]):
        torch.manual_seed(i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shared = compress(MODELS[name].factory(), config)
        path = tmp_path_factory.mktemp("seeds") / f"seed{i}.dkm"
        save(shared, path, {"name": name, "dataset": "mnist"})
        out.append(parse_seed(path.read_bytes()))
    assert any(key.startswith("norm/") for key in out[-1].arrays)
    return out


def test_builder_reproduces_valid_files(seeds: list[Seed], tmp_path: Path) -> None:
    """The fuzzer's own writer yields loadable files, so its mutations start from valid input."""
    for seed in seeds:
        assert run_case(tmp_path / "m.dkm", build(seed.arrays, seed.meta)) == "loaded"
        assert run_case(tmp_path / "m.dkm", seed.data) == "loaded"


def test_fuzz_reader(seeds: list[Seed], tmp_path: Path) -> None:
    """Every mutated file ends in a clean FormatError or a runnable model, quickly and in bounded memory."""
    outcomes: dict[str, Counter[str]] = {name: Counter() for name in MUTATORS}
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    path = tmp_path / "case.dkm"
    for i in range(N_CASES):
        category, desc, data = make_case(i, seeds)
        faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
        start = time.process_time()
        try:
            outcome = run_case(path, data)
        except Exception as exc:
            pytest.fail(f"case {i} [{category}] {desc}: {type(exc).__name__}: {exc}")
        finally:
            faulthandler.cancel_dump_traceback_later()
        seconds = time.process_time() - start
        assert seconds < CASE_CPU_SECONDS, f"case {i} [{category}] {desc}: took {seconds:.1f}s of CPU"
        outcomes[category][outcome] += 1
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - peak_before
    assert growth < MAX_RSS_GROWTH, f"peak memory grew by {growth / 2**20:.0f} MiB"
    total: Counter[str] = sum(outcomes.values(), Counter())
    print(f"\nfuzzed {N_CASES} cases: {dict(total)}")
    for category, counts in outcomes.items():
        print(f"  {category:<28} {dict(counts)}")
    if N_CASES >= 100:  # the mutations reach both outcomes, so neither check is vacuous
        assert total["format error"] > 0 and total["loaded"] > 0


def _with_layer(seed: Seed, layer: str, **changes: Any) -> bytes:
    meta = copy.deepcopy(seed.meta)
    meta["layers"][layer].update(changes)
    return build(seed.arrays, meta)


REGRESSIONS: dict[str, Callable[[Seed], bytes]] = {
    # each of these once escaped as another exception type, aborted the process, or was accepted
    "2-D index stream": lambda s: build(
        {**s.arrays, "shared/conv2/indexes": s.arrays["shared/conv2/indexes"].reshape(1, -1)}, s.meta
    ),
    "infinite size": lambda s: _with_layer(s, "conv1", shape=[math.inf, 1, 5, 5]),
    "count beyond int64": lambda s: _with_layer(s, "conv1", counts=[2**64]),
    "negative sizes": lambda s: _with_layer(s, "conv1", shape=[-20, -1, 5, 5]),
    "element count overflowing int64": lambda s: _with_layer(s, "conv1", shape=[2**62 + 100, 4], counts=[80]),
    "consistent 2**40 rows": lambda s: _with_layer(s, "fc1", shape=[2**40, 5], counts=[2**40 - 3, 1, 1, 1]),
    "NaN sparsity": lambda s: _with_layer(s, "fc1", p=math.nan),
}


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_regressions(seeds: list[Seed], tmp_path: Path, name: str) -> None:
    assert run_case(tmp_path / "m.dkm", REGRESSIONS[name](seeds[0])) == "format error"


def test_unknown_model_name_is_format_error(seeds: list[Seed], tmp_path: Path) -> None:
    meta = {**seeds[0].meta, "model": {"name": "no_such_model", "dataset": "mnist"}}
    path = tmp_path / "m.dkm"
    path.write_bytes(build(seeds[0].arrays, meta))
    with pytest.raises(FormatError):
        load(path)


def test_cli_evaluate_corrupt_files(
    seeds: list[Seed], tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``deepkmeans evaluate`` on fuzzed files: exit code 2 and one line on stderr whenever the file is corrupt."""
    rejected = 0
    for i in range(max(N_CASES // 10, 2 * len(MUTATORS))):
        category, desc, data = make_case(i, seeds)
        path = tmp_path / f"case{i}.dkm"
        outcome = run_case(tmp_path / "probe.dkm", data)
        path.write_bytes(data)
        code = main(["evaluate", str(path), "--data-dir", str(mnist_dir), "--device", "cpu"])
        err = capsys.readouterr().err
        where = f"case {i} [{category}] {desc}"
        if outcome == "format error":
            rejected += 1
            assert code == 2, where
        assert code in (0, 2), where
        if code == 2:
            assert err.startswith("deepkmeans: error:") and len(err.strip().splitlines()) == 1, f"{where}: {err!r}"
    assert rejected > 0
