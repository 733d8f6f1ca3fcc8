"""Point-cloud ops (sampling, serialization, selective scan, sparse conv, patch attention), each with a torch twin.

Scene backbones use: ``voxelize`` (grid sampling of packed clouds), ``sparse_conv`` (``SparseVoxels``, ``SubMConv3d``,
``SparseConv3d``, ``SparseInverseConv3d``: spconv or a torch gather-GEMM-scatter with spconv's weight layout),
``serialization`` (z-order / Hilbert codes) and ``attention`` (serialized patch attention).
"""
