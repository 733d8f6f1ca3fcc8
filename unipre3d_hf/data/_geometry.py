"""NumPy geometry shared by the builders: depth unprojection, normals from depth, voxel reduction."""

from __future__ import annotations

import numpy as np


def unproject_depth(depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Camera-space points ``[H, W, 3]`` of a z-depth map ``[H, W]`` (metres), pixel centres at ``(j + 0.5, i + 0.5)``:
    ``X = (u - cx) z / fx``, ``Y = (v - cy) z / fy`` (pinhole model, as :meth:`Cameras.project` inverted)."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    h, w = depth.shape
    u = np.arange(w, dtype=np.float64)[None, :] + 0.5
    v = np.arange(h, dtype=np.float64)[:, None] + 0.5
    z = depth.astype(np.float64)
    return np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=-1)


def normals_from_camera_points(points: np.ndarray, valid: np.ndarray, max_rel_jump: float = 0.05):
    """Unit normals ``[H, W, 3]`` from central differences of camera-space points ``[H, W, 3]``, oriented towards the
    camera, and the mask ``[H, W]`` of pixels where all four neighbours are valid and no depth edge is crossed."""
    dx = points[1:-1, 2:] - points[1:-1, :-2]
    dy = points[2:, 1:-1] - points[:-2, 1:-1]
    n = np.cross(dx, dy)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    n = n / np.maximum(norm, 1e-12)
    centre = points[1:-1, 1:-1]
    flip = (n * centre).sum(-1) > 0
    n[flip] *= -1
    z = points[..., 2]
    ok = valid[1:-1, 1:-1] & valid[1:-1, 2:] & valid[1:-1, :-2] & valid[2:, 1:-1] & valid[:-2, 1:-1]
    jump = np.maximum(np.abs(dx[..., 2]), np.abs(dy[..., 2])) > max_rel_jump * z[1:-1, 1:-1]
    ok &= ~jump & (norm[..., 0] > 0)
    normals = np.zeros_like(points)
    mask = np.zeros(valid.shape, dtype=bool)
    normals[1:-1, 1:-1] = n
    mask[1:-1, 1:-1] = ok
    return normals, mask


def voxel_reduce(coords: np.ndarray, voxel: float, rng: np.random.Generator, **attrs: np.ndarray):
    """One point per voxel of edge ``voxel`` (grid ``floor(p / voxel)``): the mean position, the mean of float
    attributes (normals are re-normalised by the caller) and, for integer attributes, the value of a random member.
    Returns ``(coords [M, 3], {name: [M, ...]})``."""
    perm = rng.permutation(len(coords))
    coords = coords[perm]
    keys = np.floor(coords / voxel).astype(np.int64)
    keys -= keys.min(axis=0)
    dims = keys.max(axis=0) + 1
    flat = (keys[:, 0] * dims[1] + keys[:, 1]) * dims[2] + keys[:, 2]
    _, first, inverse, counts = np.unique(flat, return_index=True, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    m = len(first)

    def mean(values):
        out = np.zeros((m, values.shape[1]), dtype=np.float64)
        np.add.at(out, inverse, values)
        return out / counts[:, None]

    out_coords = mean(coords.astype(np.float64)).astype(np.float32)
    out = {}
    for name, values in attrs.items():
        values = values[perm]
        out[name] = mean(values.astype(np.float64)) if np.issubdtype(values.dtype, np.floating) else values[first]
    return out_coords, out
