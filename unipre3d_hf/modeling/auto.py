"""``AutoModelForPointCloudClassification`` and ``AutoModelForPointCloudSegmentation``: transformers Auto classes that
pick the task model of a backbone config, as ``AutoModelForImageClassification`` does for image backbones.

    >>> import unipre3d_hf
    >>> from unipre3d_hf import AutoModelForPointCloudSegmentation, PTv3Config
    >>> model = AutoModelForPointCloudSegmentation.from_config(PTv3Config(num_labels=20))  # PTv3ForPointCloud...
    >>> model = AutoModelForPointCloudSegmentation.from_pretrained("my-ptv3-backbone", num_labels=20)

They are built on transformers' ``_BaseAutoModelClass`` (``from_config``, ``from_pretrained`` with every Hub
argument, ``register``) with a mapping that starts empty; importing ``unipre3d_hf`` registers the task models of the
six backbones.
"""

from __future__ import annotations

from collections import OrderedDict

from transformers.models.auto.auto_factory import _BaseAutoModelClass, _LazyAutoMapping


class AutoModelForPointCloudClassification(_BaseAutoModelClass):
    """The ``<Backbone>ForPointCloudClassification`` of a backbone config (object backbones)."""

    _model_mapping = _LazyAutoMapping(OrderedDict(), OrderedDict())


class AutoModelForPointCloudSegmentation(_BaseAutoModelClass):
    """The ``<Backbone>ForPointCloudSegmentation`` of a backbone config (all six backbones)."""

    _model_mapping = _LazyAutoMapping(OrderedDict(), OrderedDict())


__all__ = ["AutoModelForPointCloudClassification", "AutoModelForPointCloudSegmentation"]


class AutoModelForPointCloudInstanceSegmentation(_BaseAutoModelClass):
    """The ``<Backbone>ForPointCloudInstanceSegmentation`` of a backbone config (PointGroup on the scene backbones)."""

    _model_mapping = _LazyAutoMapping(OrderedDict(), OrderedDict())


__all__ += ["AutoModelForPointCloudInstanceSegmentation"]
