"""ONNX export that stays compressed: each shared weight becomes ``Gather(centers, indexes)`` in the graph.

ONNX has no palettized weight type, so the weight is rebuilt by the runtime from two initializers: the
``(K, d)`` centers (in the model's float type) and one index per row in the narrowest integer type ONNX
Runtime can cast from (4-bit when K <= 16, then uint8, int16, int32), followed by ``Cast`` to int32,
``Gather`` along axis 0 and ``Reshape`` to the weight's shape (then ``Transpose`` where the exporter folded
the transpose of a Linear's weight into a constant, as it does for inputs with more than two dimensions).
Everything else is the standard ``torch.onnx`` export of the dense model. A bfloat16 model, which ONNX
Runtime's CPU kernels do not run, is exported as float32 (exact: every bfloat16 value is a float32 value).
What is lost against a ``.dkm`` file: the entropy coding of the indexes (a fixed width per index instead
of ~H bits) and float32 biases stored raw alike. Needs the ``export`` extra (onnx, onnxscript).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepkmeans.errors import DeepKMeansError
from deepkmeans.files.atomic import check_writable, write_atomic
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

    @property
    def gathered(self) -> int:
        """How many shared layers the graph holds as ``Gather(centers, indexes)``."""
        return sum(1 for layer in self.layers if layer.index_bits)


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


def _find_initializer(graph, name: str, weight: np.ndarray) -> tuple[object, bool] | None:
    """The initializer holding ``weight``: by its state-dict name, else by value, else (for a 2-D weight) the
    transposed copy the exporter folds a Linear's ``x @ W.T`` into; and whether it is that transpose."""
    onnx = _onnx()
    for init in graph.initializer:
        if init.name == name:
            return init, False
    candidates = [(weight, False)] + ([(weight.T, True)] if weight.ndim == 2 else [])
    for value, transposed in candidates:
        for init in graph.initializer:
            if tuple(init.dims) == value.shape and np.array_equal(onnx.numpy_helper.to_array(init), value):
                return init, transposed
    return None


def _share_initializer(graph, init, layer, shape: tuple[int, ...], transposed: bool) -> int:
    """Replace a dense weight initializer by centers + indexes and the nodes that rebuild it (``Transpose`` last
    when the initializer holds the weight transposed); returns bits per index."""
    onnx = _onnx()
    prefix = init.name.replace("/", "_")
    dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)  # the graph's type for this weight
    centers = layer.centers.detach().cpu().to(torch.float32).numpy().astype(dtype)  # exact for float16 and bfloat16
    indexes, bits = _index_tensor(f"{prefix}.indexes", layer.assignments.cpu().numpy(), layer.param.K)
    graph.initializer.remove(init)
    graph.initializer.extend(
        [
            onnx.numpy_helper.from_array(centers, f"{prefix}.centers"),
            indexes,
            onnx.numpy_helper.from_array(np.asarray(shape, dtype=np.int64), f"{prefix}.shape"),
        ]
    )
    weight = f"{prefix}.weight" if transposed else init.name
    nodes = [
        onnx.helper.make_node("Cast", [f"{prefix}.indexes"], [f"{prefix}.indexes_i32"], to=onnx.TensorProto.INT32),
        onnx.helper.make_node("Gather", [f"{prefix}.centers", f"{prefix}.indexes_i32"], [f"{prefix}.rows"], axis=0),
        onnx.helper.make_node("Reshape", [f"{prefix}.rows", f"{prefix}.shape"], [weight]),
    ]
    if transposed:
        nodes.append(onnx.helper.make_node("Transpose", [weight], [init.name], perm=[1, 0]))
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    return bits


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hold back what the exporter prints and logs (progress, optional dependencies it skips); replay it on
    stderr when the export fails, so that a real error keeps its context."""
    held = io.StringIO()
    handler = logging.StreamHandler(held)
    loggers = [logging.getLogger(name) for name in ("torch", "torch.onnx")]
    saved = [(logger.handlers, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [handler], False
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(held), contextlib.redirect_stderr(held):
            warnings.simplefilter("ignore")
            yield
    except BaseException:
        sys.stderr.write(held.getvalue())
        raise
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved, strict=True):
            logger.handlers, logger.propagate = handlers, propagate


def _dense_export(model: nn.Module, example: torch.Tensor) -> bytes:
    """torch.onnx (torch.export based) of the dense model, with a dynamic batch dimension, silently."""
    _onnx()
    batch = torch.export.Dim("batch", min=1)
    with _quiet():
        program = torch.onnx.export(
            model, (example,), dynamo=True, dynamic_shapes=({0: batch},), opset_version=OPSET, verbose=False
        )
    buffer = io.BytesIO()
    program.save(buffer)
    return buffer.getvalue()


def _check_types(model: nn.Module, example: torch.Tensor) -> None:
    """Refuse, in one line, a floating example whose type is not the model's (the exporter's error is long)."""
    types = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()}
    if example.is_floating_point() and len(types) == 1 and example.dtype not in types:
        names = [str(t).removeprefix("torch.") for t in (example.dtype, *types)]
        raise DeepKMeansError(
            f"the example input is {names[0]} but the model is {names[1]}: give an example of that type"
        )


def _as_float32(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """A bfloat16 model (and example) as float32, said in one warning line; other models as they are."""
    if not any(t.dtype == torch.bfloat16 for t in (*model.parameters(), *model.buffers())):
        return model, example
    warnings.warn(
        "the model is bfloat16, which ONNX Runtime's CPU kernels do not run: exported as float32 "
        "(exact, every bfloat16 value is a float32 value); feed it float32 inputs",
        stacklevel=3,
    )
    return model.to(torch.float32), example.to(torch.float32) if example.is_floating_point() else example


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, dense: bool = False) -> OnnxExport:
    """Write ``model`` (with shared layers) to ONNX; shared weights stay compressed unless ``dense``.

    ``example`` is one input batch (its batch dimension is exported as dynamic). The model is not changed.
    float32 and float16 models keep their type; a bfloat16 model is exported as float32, with a warning.
    """
    onnx = _onnx()
    check_writable(path)
    _check_types(model, example)
    dense_model, example = _as_float32(materialize(model).eval(), example)
    proto = onnx.load_from_string(_dense_export(dense_model, example))
    exported = []
    if not dense:
        state = dense_model.state_dict()
        for name, layer in shared_layers(model).items():
            weight = state[f"{name}.weight"].cpu().numpy()
            found = _find_initializer(proto.graph, f"{name}.weight", weight)
            if found is None:
                note = "the exporter folded this weight into another tensor: left dense"
                exported.append(ExportedLayer(name, layer.param.K, 0, note))
                continue
            bits = _share_initializer(proto.graph, found[0], layer, tuple(weight.shape), found[1])
            exported.append(ExportedLayer(name, layer.param.K, bits))
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    write_atomic(path, data)
    return OnnxExport(str(path), len(data), exported, dense)
