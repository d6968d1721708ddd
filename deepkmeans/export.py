"""ONNX export that stays compressed: each shared weight becomes ``Gather(centers, indexes)`` in the graph.

ONNX has no palettized weight type, so the weight is rebuilt by the runtime from two initializers: the
``(K, d)`` float centers and one index per row in the narrowest integer type ONNX Runtime can cast from
(4-bit when K <= 16, then uint8, int16, int32), followed by ``Cast`` to int32, ``Gather`` along axis 0 and
``Reshape`` to the weight's shape. Everything else is the standard ``torch.onnx`` export of the dense model.
What is lost against a ``.dkm`` file: the entropy coding of the indexes (a fixed width per index instead
of ~H bits) and float32 biases stored raw alike. Needs the ``export`` extra (onnx, onnxscript).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepkmeans.errors import DeepKMeansError
from deepkmeans.files.atomic import write_atomic
from deepkmeans.shared import materialize, shared_layers

OPSET = 21  # the first opset whose Cast takes 4-bit integers


def _onnx():
    try:
        import onnx
    except ImportError:
        raise DeepKMeansError("ONNX export needs the export extra: pip install 'deepkmeans[export]'") from None
    return onnx


@dataclass(frozen=True)
class ExportedLayer:
    """How one shared weight went into the ONNX graph."""

    name: str
    K: int
    index_bits: int  # bits per stored index (0: left dense, see ``note``)
    note: str = ""


@dataclass(frozen=True)
class OnnxExport:
    """The written file and what happened to each shared layer."""

    path: str
    bytes: int
    layers: list[ExportedLayer]
    dense: bool


def _index_tensor(name: str, assignments: np.ndarray, k: int):
    """Indexes as an initializer of the narrowest type: UINT4 (two per byte, low nibble first) for K <= 16."""
    onnx = _onnx()
    if k <= 16:
        padded = np.zeros(assignments.size + assignments.size % 2, dtype=np.uint8)
        padded[: assignments.size] = assignments
        packed = (padded[0::2] | (padded[1::2] << 4)).astype(np.uint8)
        tensor = onnx.helper.make_tensor(name, onnx.TensorProto.UINT4, [assignments.size], packed.tobytes(), raw=True)
        return tensor, 4
    dtype = np.uint8 if k <= 256 else np.int16 if k <= 2**15 else np.int32
    return onnx.numpy_helper.from_array(assignments.astype(dtype), name), 8 * np.dtype(dtype).itemsize


def _find_initializer(graph, name: str, weight: np.ndarray):
    """The initializer holding ``weight``: by its state-dict name, else by value."""
    onnx = _onnx()
    for init in graph.initializer:
        if init.name == name:
            return init
    for init in graph.initializer:
        if tuple(init.dims) == weight.shape and np.array_equal(onnx.numpy_helper.to_array(init), weight):
            return init
    return None


def _share_initializer(graph, init, layer, shape: tuple[int, ...]) -> int:
    """Replace a dense weight initializer by centers + indexes and the nodes that rebuild it; returns bits/index."""
    onnx = _onnx()
    prefix = init.name.replace("/", "_")
    centers = layer.centers.detach().cpu().to(torch.float32).numpy()
    indexes, bits = _index_tensor(f"{prefix}.indexes", layer.assignments.cpu().numpy(), layer.param.K)
    graph.initializer.remove(init)
    graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(centers, f"{prefix}.centers"),
            indexes,
            onnx.numpy_helper.from_array(np.asarray(shape, dtype=np.int64), f"{prefix}.shape"),
        ]
    )
    nodes = [
        onnx.helper.make_node("Cast", [f"{prefix}.indexes"], [f"{prefix}.indexes_i32"], to=onnx.TensorProto.INT32),
        onnx.helper.make_node("Gather", [f"{prefix}.centers", f"{prefix}.indexes_i32"], [f"{prefix}.rows"], axis=0),
        onnx.helper.make_node("Reshape", [f"{prefix}.rows", f"{prefix}.shape"], [init.name]),
    ]
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    return bits


def _dense_export(model: nn.Module, example: torch.Tensor) -> bytes:
    """torch.onnx (torch.export based) of the dense model, with a dynamic batch dimension."""
    _onnx()
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (example,), dynamo=True, dynamic_shapes=({0: batch},), opset_version=OPSET, verbose=False
        )
    buffer = io.BytesIO()
    program.save(buffer)
    return buffer.getvalue()


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, dense: bool = False) -> OnnxExport:
    """Write ``model`` (with shared layers) to ONNX; shared weights stay compressed unless ``dense``.

    ``example`` is one input batch (its batch dimension is exported as dynamic). The model is not changed.
    """
    onnx = _onnx()
    dense_model = materialize(model).eval()
    proto = onnx.load_from_string(_dense_export(dense_model, example))
    exported = []
    if not dense:
        state = dense_model.state_dict()
        for name, layer in shared_layers(model).items():
            weight = state[f"{name}.weight"].cpu().numpy()
            init = _find_initializer(proto.graph, f"{name}.weight", weight)
            if init is None:
                note = "the exporter folded this weight into another tensor: left dense"
                exported.append(ExportedLayer(name, layer.param.K, 0, note))
                continue
            bits = _share_initializer(proto.graph, init, layer, tuple(weight.shape))
            exported.append(ExportedLayer(name, layer.param.K, bits))
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    write_atomic(path, data)
    return OnnxExport(str(path), len(data), exported, dense)
