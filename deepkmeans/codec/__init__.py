"""Compressed-file format: container, entropy coding of indexes, and the model's data form, to and from bytes."""

from deepkmeans.codec.model_file import CompressedModel, LayerCode, from_bytes, to_bytes

__all__ = ["CompressedModel", "LayerCode", "from_bytes", "to_bytes"]
