"""Compressed-file format: container, entropy coding of indexes, and the model's data form."""

from deepkmeans.codec.model_file import CompressedModel, LayerCode, load, save

__all__ = ["CompressedModel", "LayerCode", "load", "save"]
