"""Checkpoint conversion: the original UniPre3D ``.pth`` files (``original``) and Pointcept state dicts
(``pointcept``) to and from this package's models."""

from .original import (
    BACKBONES,
    CheckpointConversionError,
    convert_original_state_dict,
    load_original_checkpoint,
)

__all__ = ["BACKBONES", "CheckpointConversionError", "convert_original_state_dict", "load_original_checkpoint"]
