from pathlib import Path

import pytest
import torch
from torch import nn

from deepkmeans import compress, load, materialize, save
from deepkmeans.codec.container import HEADER_SIZE, MAGIC, pack, unpack
from deepkmeans.config import CompressConfig, LayerSpec
from deepkmeans.errors import FormatError
from deepkmeans.files.models import load_compressed
from deepkmeans.models.lenet import LeNet5Caffe
from deepkmeans.shared import share_

META = {"name": "lenet5_caffe", "dataset": "mnist"}
GOLDEN = Path(__file__).with_name("golden_tiny_v2.dkm")
GOLDEN_V1 = Path(__file__).with_name("golden_tiny_v1.dkm")


def _compressed(tmp_path: Path, layers: dict[str, LayerSpec]) -> tuple[nn.Module, Path, int]:
    shared = compress(LeNet5Caffe(), CompressConfig(layers=layers))
    path = tmp_path / "m.dkm"
    size = save(shared, path, META)
    return shared, path, size


def test_roundtrip_bitwise_equal(tmp_path: Path) -> None:
    layers = {"conv1": LayerSpec(4), "conv2": LayerSpec(16, 0.5), "fc*": LayerSpec(8, 0.8, d=5)}
    shared, path, size = _compressed(tmp_path, layers)
    assert path.stat().st_size == size
    dense = materialize(shared)
    loaded = load(path)
    for (k, a), (k2, b) in zip(dense.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2
        assert torch.equal(a, b), k
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(shared.eval()(x), loaded.eval()(x))
    compact = load(path, materialize=False)
    assert torch.equal(compact.eval()(x), loaded(x))


@pytest.mark.parametrize(
    "spec",
    [
        LayerSpec(1),
        LayerSpec(1, 0.5),
        LayerSpec(500),
        LayerSpec(10_000),
        LayerSpec(3, d=1),
        LayerSpec(2, 0.9, d=1),
    ],
)
def test_edge_cases_k1_k_ge_n_d1(tmp_path: Path, spec: LayerSpec) -> None:
    n_rows = 20 * 1 * 5 * 5 // (spec.d or 5)
    if spec.K >= n_rows:
        with pytest.warns(UserWarning, match=f"conv1: left dense: K={spec.K} >= its {n_rows} rows"):
            shared, path, _ = _compressed(tmp_path, {"conv1": spec})
        assert "conv1" not in load_compressed(path).layers
    else:
        shared, path, _ = _compressed(tmp_path, {"conv1": spec})
        assert load_compressed(path).layers["conv1"].k == spec.K
        assert len(torch.unique(shared.conv1.weight.reshape(-1, spec.d or 5), dim=0)) <= spec.K
    assert torch.equal(load(path).conv1.weight, shared.conv1.weight)


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    torch.manual_seed(3)
    m1 = LeNet5Caffe()
    m2 = LeNet5Caffe()
    m2.load_state_dict(m1.state_dict())
    cfg = CompressConfig(layers={"*": LayerSpec(8, 0.5)}, seed=7)
    save(compress(m1, cfg), tmp_path / "a.dkm")
    save(compress(m2, cfg), tmp_path / "b.dkm")
    assert (tmp_path / "a.dkm").read_bytes() == (tmp_path / "b.dkm").read_bytes()


def test_bad_files_give_format_errors(tmp_path: Path) -> None:
    _, path, _ = _compressed(tmp_path, {"*": LayerSpec(4)})
    data = path.read_bytes()
    cases = {
        "missing": None,
        "empty": b"",
        "truncated": data[:-10],
        "header only": data[:HEADER_SIZE],
        "bad magic": b"XXXX" + data[4:],
        "bad version": MAGIC + b"\x09\x00" + data[6:],
        "bit flip": data[:200] + bytes([data[200] ^ 1]) + data[201:],
        "garbage": b"\x00" * 100,
    }
    messages = {
        "bad magic": "magic",
        "bad version": "version",
        "bit flip": "checksum",
        "missing": "no such file",
    }
    for name, content in cases.items():
        target = tmp_path / f"{name}.dkm"
        if content is not None:
            target.write_bytes(content)
        with pytest.raises(FormatError, match=messages.get(name)):
            load(target)


class TinyV1(nn.Module):
    """A conv (shared, d = 3), a linear layer (shared, d = 2) with a bias, and a BatchNorm left raw."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean((2, 3)).repeat(1, 2))


class Tiny(TinyV1):
    """TinyV1 plus what format version 2 adds: a shared weight tied to a second layer, a dense weight tied to
    a second layer (stored once, as an alias) and a bfloat16 buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2, bias=False)
        self.head.weight = self.fc.weight
        self.proj = nn.Linear(2, 2)
        self.proj2 = nn.Linear(2, 2, bias=False)
        self.proj2.weight = self.proj.weight
        self.register_buffer("scale", torch.tensor([0.5, 3.0], dtype=torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x)).mean((2, 3)).repeat(1, 2)
        return self.proj2(self.proj(self.fc(y) + self.head(y))) * self.scale.float()


def _fill(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for i, t in enumerate(model.state_dict().values()):
            if t.is_floating_point():
                t.copy_(torch.arange(t.numel(), dtype=torch.float32).reshape(t.shape) * 0.25 - i)
    return model


def _golden_model() -> nn.Module:
    """Tiny with fixed values and hand-made codes: the bytes depend on the file format alone."""
    model = _fill(Tiny())
    share_(model.conv, torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.25, 3.0]]), torch.tensor([0, 1, 1, 0, 0, 1]), 0.5)
    fc_centers = torch.tensor([[0.5, -0.5], [2.0, 1.0], [-1.0, 0.0]])
    share_(model.fc, fc_centers, torch.tensor([2, 0, 1, 1]), tied=[model.head])
    return model


def test_version_2_files_still_load() -> None:
    """A file written by format version 2 (ties, aliases, bfloat16; BatchNorm tensor by tensor) reads back."""
    assert GOLDEN.read_bytes()[4:6] == b"\x02\x00"
    cm = load_compressed(GOLDEN)
    assert cm.model == {"name": "tiny", "dataset": "none"}
    assert cm.layers["conv"].assignments.tolist() == [0, 1, 1, 0, 0, 1]
    assert cm.layers["fc"].centers.tolist() == [[0.5, -0.5], [2.0, 1.0], [-1.0, 0.0]]
    assert cm.layers["fc"].tied == ("head",) and cm.aliases == {"proj2.weight": "proj.weight"}
    assert cm.dense["scale"].dtype == torch.bfloat16
    expected = materialize(_golden_model())
    for materialized in (True, False):
        loaded = load(GOLDEN, model=Tiny(), materialize=materialized)
        assert loaded.head.weight.data_ptr() == loaded.fc.weight.data_ptr() or not materialized
        x = torch.randn(2, 1, 5, 5)
        assert torch.equal(loaded(x), expected(x))


def test_version_1_files_still_load() -> None:
    """A file written by format version 1 (before ties, aliases and bfloat16) reads into the same weights."""
    model = _fill(TinyV1())
    share_(model.conv, torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.25, 3.0]]), torch.tensor([0, 1, 1, 0, 0, 1]), 0.5)
    share_(model.fc, torch.tensor([[0.5, -0.5], [2.0, 1.0], [-1.0, 0.0]]), torch.tensor([2, 0, 1, 1]))
    assert GOLDEN_V1.read_bytes()[4:6] == b"\x01\x00"
    expected = materialize(model).state_dict()
    loaded = load(GOLDEN_V1, model=TinyV1()).state_dict()
    assert expected.keys() == loaded.keys() and all(torch.equal(expected[k], loaded[k]) for k in expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_roundtrip(tmp_path: Path, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = LeNet5Caffe().to(dtype)
    shared = compress(model, CompressConfig(layers={"conv*": LayerSpec(8), "fc1": LayerSpec(16, 0.5, d=5)}))
    assert all(p.dtype == dtype for p in shared.parameters())
    path = tmp_path / "half.dkm"
    save(shared, path, META)
    loaded = load(path, model=LeNet5Caffe().to(dtype))
    expected = materialize(shared).state_dict()
    assert all(torch.equal(expected[k], v) and v.dtype == expected[k].dtype for k, v in loaded.state_dict().items())
    assert load_compressed(path).layers["fc1"].centers.dtype == dtype


GOLDEN_V3 = Path(__file__).with_name("golden_tiny_v3.dkm")


def _golden_narrow_model() -> nn.Module:
    """TinyV1 with the conv stored at 16 bits and the linear layer (and its bias) at 8 bits on hand-set grids."""
    model = _fill(TinyV1())
    share_(model.conv, torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.25, 3.0]]), torch.tensor([0, 1, 1, 0, 0, 1]), bits=16)
    # centers grid: offset -1, scale 0.5 (codes 3, 1, 6, 4, 0, 2); bias grid: offset -3, scale 0.25 (codes 4, 13)
    grids = (torch.tensor([-1.0, 0.5]), torch.tensor([-3.0, 0.25]))
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([-2.0, 0.25]))
    share_(
        model.fc,
        torch.tensor([[0.5, -0.5], [2.0, 1.0], [-1.0, 0.0]]),
        torch.tensor([2, 0, 1, 1]),
        0.5,
        bits=8,
        grids=grids,
    )
    return model


def test_version_3_files_still_load() -> None:
    """A file written by format version 3 (centers and bias at 16 or 8 bits) reads into what it was written from."""
    assert GOLDEN_V3.read_bytes()[4:6] == b"\x03\x00"
    meta, tensors = unpack(GOLDEN_V3.read_bytes())
    assert tensors["shared/fc/centers"].tolist() == [[3, 1], [6, 4], [0, 2]]
    assert tensors["shared/fc/bias"].tolist() == [4, 13]
    assert tensors["shared/conv/centers"].dtype == torch.float16 and meta["layers"]["conv"]["bits"] == 16
    cm = load_compressed(GOLDEN_V3)
    assert cm.layers["fc"].centers.tolist() == [[0.5, -0.5], [2.0, 1.0], [-1.0, 0.0]]
    assert cm.layers["fc"].bias.tolist() == [-2.0, 0.25]
    expected = materialize(_golden_narrow_model())
    x = torch.randn(2, 1, 5, 5)
    for materialized in (True, False):
        assert torch.equal(load(GOLDEN_V3, model=TinyV1(), materialize=materialized)(x), expected(x))


def test_narrow_fields_are_validated(tmp_path: Path) -> None:
    meta, tensors = unpack(GOLDEN_V3.read_bytes())
    cases = {
        "bits 4": ({"bits": 4}, {}, "bits must be one of"),
        "float centers at 8 bits": ({}, {"shared/fc/centers": torch.zeros(3, 2)}, "uint8"),
        "no grid": ({}, {"shared/fc/grid": None}, "grid"),
        "zero scale": ({}, {"shared/fc/grid": torch.tensor([0.0, 0.0])}, "positive"),
        "float bias": ({}, {"shared/fc/bias": torch.zeros(2)}, "bias"),
    }
    for name, (entry, changed, message) in cases.items():
        layers = {**meta["layers"], "fc": {**meta["layers"]["fc"], **entry}}
        edited = {k: v for k, v in {**tensors, **changed}.items() if v is not None}
        target = tmp_path / f"{name}.dkm"
        target.write_bytes(pack({**meta, "layers": layers}, edited))
        with pytest.raises(FormatError, match=message):
            load(target, model=TinyV1())
