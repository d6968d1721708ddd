"""Format version 4: the packed container (deflated metadata, tensors back to back) and BatchNorm in inference form."""

import json
import os
import struct
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

from deepkmeans import load, materialize, save
from deepkmeans.codec.container import HEADER_SIZE, MAX_METADATA_BYTES
from deepkmeans.errors import FormatError
from deepkmeans.files.models import load_compressed, to_compressed
from deepkmeans.shared import share_
from tests.codec.test_model_file import Tiny, _fill, _golden_narrow_model

GOLDEN_V4 = Path(__file__).with_name("golden_tiny_v4.dkm")


def _golden_model() -> nn.Module:
    """Tiny with hand-set codes and a BatchNorm (eps 0) whose inference form is exact: scale = weight /
    sqrt(var) = [2 / 2, 3 / 0.5] = [1, 6]; shift = bias - mean * scale = [0.5 - 1, 1 + 2 * 6] = [-0.5, 13]."""
    model = _fill(Tiny())
    share_(model.conv, torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.25, 3.0]]), torch.tensor([0, 1, 1, 0, 0, 1]), 0.5)
    fc_centers = torch.tensor([[0.5, -0.5], [2.0, 1.0], [-1.0, 0.0]])
    share_(model.fc, fc_centers, torch.tensor([2, 0, 1, 1]), tied=[model.head])
    model.bn.eps = 0.0
    with torch.no_grad():
        for key, value in {"weight": [2.0, 3.0], "bias": [0.5, 1.0], "running_mean": [1.0, -2.0]}.items():
            getattr(model.bn, key).copy_(torch.tensor(value))
        model.bn.running_var.copy_(torch.tensor([4.0, 0.25]))
    return model


def _parts(data: bytes) -> tuple[bytes, dict, bytes]:
    """The 24-byte header, the inflated metadata and the data section of a version-4 file."""
    deflated_len, meta_len = struct.unpack_from("<II", data, HEADER_SIZE)
    start = HEADER_SIZE + 8
    text = zlib.decompress(data[start : start + deflated_len])
    assert len(text) == meta_len
    return data[:HEADER_SIZE], json.loads(text), data[start + deflated_len :]


def test_golden_bytes_format_4(tmp_path: Path) -> None:
    """Format version 4 pinned: header fields, metadata and data bytes (the deflate stream itself may differ
    between zlib builds, so it is compared inflated). A deliberate change rewrites the golden file
    (DEEPKMEANS_WRITE_GOLDEN=1 pytest tests/codec/test_format4.py) in the same commit as the version bump."""
    path = tmp_path / "tiny4.dkm"
    save(_golden_model(), path, {"name": "tiny", "dataset": "none"})
    if os.environ.get("DEEPKMEANS_WRITE_GOLDEN") == "1":
        GOLDEN_V4.write_bytes(path.read_bytes())
    header, meta, body = _parts(path.read_bytes())
    golden_header, golden_meta, golden_body = _parts(GOLDEN_V4.read_bytes())
    assert header[:8] == golden_header[:8] == b"DKMC\x04\x00\x00\x00"
    assert (meta, body) == (golden_meta, golden_body)
    # one entry per stored tensor, in data order; BatchNorm as one (2, C) tensor, no running statistics
    assert meta["tensors"] == [
        ["shared/conv/centers", "F32", [2, 3]],
        ["shared/conv/indexes", "U32", [1]],
        ["shared/fc/centers", "F32", [3, 2]],
        ["shared/fc/indexes", "U32", [1]],
        ["dense/scale", "BF16", [2]],
        ["dense/fc.bias", "F32", [2]],
        ["dense/proj.weight", "F32", [2, 2]],
        ["dense/proj.bias", "F32", [2]],
        ["norm/bn", "F32", [2, 2]],
    ]
    assert len(body) == 4 * (6 + 1 + 6 + 1) + 2 * 2 + 4 * (2 + 4 + 2 + 4)
    assert body[-16:] == struct.pack("<4f", 1.0, 6.0, -0.5, 13.0)
    assert meta["layers"]["conv"] == {"counts": [3, 3], "d": 3, "p": 0.5, "shape": [2, 1, 3, 3]}
    cm = load_compressed(GOLDEN_V4)
    assert cm.norms["bn"].tolist() == [[1.0, 6.0], [-0.5, 13.0]] and "bn.running_mean" not in cm.dense
    loaded = load(GOLDEN_V4, model=Tiny())
    assert loaded.bn.running_mean.tolist() == [0.0, 0.0] and loaded.bn.num_batches_tracked.item() == 0
    assert float(loaded.bn.running_var[0] + torch.tensor(loaded.bn.eps)) == 1.0  # float32 sum: divide by 1
    x = torch.randn(3, 1, 5, 5)
    expected = materialize(_golden_model()).eval()
    for materialized in (True, False):
        assert torch.equal(load(GOLDEN_V4, model=Tiny(), materialize=materialized).eval()(x), expected(x))


def _random_batchnorm(model: nn.Module) -> nn.Module:
    torch.manual_seed(5)
    with torch.no_grad():
        model.bn.running_mean.normal_(0, 1)
        model.bn.running_var.uniform_(0.01, 5)
        model.bn.weight.normal_(1, 0.5)
        model.bn.bias.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("batchnorm", ["inference", "half", "full"])
def test_batchnorm_forms(tmp_path: Path, batchnorm: str) -> None:
    """inference: eval outputs bit for bit, statistics dropped; half: float16 scale and shift; full: every tensor."""
    model = _random_batchnorm(_golden_model())
    model.bn.eps = 1e-5
    path = tmp_path / "m.dkm"
    save(model, path, batchnorm=batchnorm)
    loaded = load(path, model=Tiny()).eval()
    x = torch.randn(4, 1, 5, 5)
    with torch.no_grad():
        out, expected = loaded(x), model.eval()(x)
    cm = load_compressed(path)
    if batchnorm == "full":
        assert not cm.norms and torch.equal(loaded.bn.running_var, model.bn.running_var)
        assert torch.equal(out, expected)
    elif batchnorm == "inference":
        assert cm.norms["bn"].dtype == torch.float32 and torch.equal(out, expected)
        assert not torch.equal(loaded.bn.running_var, model.bn.running_var)
    else:
        assert cm.norms["bn"].dtype == torch.float16 and torch.allclose(out, expected, rtol=1e-2, atol=1e-2)


def test_tied_batchnorm_stays_full() -> None:
    """A BatchNorm tensor that another key shares is stored tensor by tensor (its alias needs the key)."""
    model = _golden_model()
    model.register_buffer("shared_var", model.bn.running_var)
    cm = to_compressed(model, batchnorm="inference")
    assert not cm.norms and cm.aliases["bn.running_var"] == "shared_var"


def _repack(meta: dict, body: bytes, meta_len: int | None = None, deflated: bytes | None = None) -> bytes:
    text = json.dumps(meta).encode()
    deflated = zlib.compress(text) if deflated is None else deflated
    payload = struct.pack("<II", len(deflated), len(text) if meta_len is None else meta_len) + deflated + body
    return struct.pack("<4sHHIQI", b"DKMC", 4, 0, zlib.crc32(payload), len(payload), 0) + payload


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("table longer than data", "do not|does not account"),
        ("table shorter than data", "does not account"),
        ("duplicate name", "appears twice"),
        ("unknown dtype", "unknown dtype"),
        ("negative size", "sizes must be"),
        ("nine dimensions", "at most 8"),
        ("entry not a triple", r"\[name, dtype, shape\]"),
        ("no table", "tensor table"),
        ("metadata over the cap", "over the"),
        ("metadata length wrong", "inflate to exactly"),
        ("deflated length past the payload", "runs past"),
        ("boolean byte 2", "0 or 1"),
        ("norm of wrong shape", r"\(2, channels\)"),
        ("norm and dense for one module", "both in inference form"),
        ("norm of a module that is no BatchNorm", "no BatchNorm"),
        ("norm of another width", "no BatchNorm"),
    ],
)
def test_format_4_reader_checks(tmp_path: Path, case: str, message: str) -> None:
    _, meta, body = _parts(GOLDEN_V4.read_bytes())
    table = meta["tensors"]
    if case == "table longer than data":
        data = _repack({**meta, "tensors": [*table, ["dense/x", "F32", [1]]]}, body)
    elif case == "table shorter than data":
        data = _repack({**meta, "tensors": table[:-1]}, body)
    elif case == "duplicate name":
        data = _repack({**meta, "tensors": [*table, table[-1]]}, body + body[-16:])
    elif case == "unknown dtype":
        data = _repack({**meta, "tensors": [*table[:-1], ["norm/bn", "F128", [2, 2]]]}, body)
    elif case == "negative size":
        data = _repack({**meta, "tensors": [*table[:-1], ["norm/bn", "F32", [-2, -2]]]}, body)
    elif case == "nine dimensions":
        data = _repack({**meta, "tensors": [*table[:-1], ["norm/bn", "F32", [1] * 7 + [2, 2]]]}, body)
    elif case == "entry not a triple":
        data = _repack({**meta, "tensors": [*table[:-1], ["norm/bn", "F32"]]}, body)
    elif case == "no table":
        data = _repack({k: v for k, v in meta.items() if k != "tensors"}, body)
    elif case == "metadata over the cap":
        data = _repack(meta, body, meta_len=MAX_METADATA_BYTES + 1)
    elif case == "metadata length wrong":
        data = _repack(meta, body, meta_len=len(json.dumps(meta)) - 1)
    elif case == "deflated length past the payload":
        data = _repack(meta, b"", deflated=zlib.compress(json.dumps(meta).encode()) + body)[: -len(body) // 2]
        payload = data[HEADER_SIZE:]
        data = struct.pack("<4sHHIQI", b"DKMC", 4, 0, zlib.crc32(payload), len(payload), 0) + payload
    elif case == "boolean byte 2":
        data = _repack({**meta, "tensors": [*table, ["dense/flag", "BOOL", [1]]]}, body + b"\x02")
    elif case == "norm of wrong shape":
        data = _repack({**meta, "tensors": [*table[:-1], ["norm/bn", "F32", [4]]]}, body)
    elif case == "norm and dense for one module":
        data = _repack({**meta, "tensors": [*table, ["dense/bn.weight", "F32", [2]]]}, body + body[-8:])
    elif case == "norm of a module that is no BatchNorm":
        data = _repack({**meta, "tensors": [*table[:-1], ["norm/ghost", "F32", [2, 2]]]}, body)
    else:
        data = _repack({**meta, "tensors": [*table[:-1], ["norm/bn", "F32", [2, 1]]]}, body[:-8])
    path = tmp_path / "bad.dkm"
    path.write_bytes(data)
    with pytest.raises(FormatError, match=message):
        load(path, model=Tiny())


def test_narrow_layers_store_batchnorm_at_16_bits(tmp_path: Path) -> None:
    """With every shared layer at 16 or 8 bits, save's default stores BatchNorm in float16; else in float32."""
    save(_golden_narrow_model(), tmp_path / "narrow.dkm")
    save(_golden_model(), tmp_path / "wide.dkm")
    assert load_compressed(tmp_path / "narrow.dkm").norms["bn"].dtype == torch.float16
    assert load_compressed(tmp_path / "wide.dkm").norms["bn"].dtype == torch.float32
