"""Point and camera transforms for pre-training samples; every transform that moves points moves the cameras too.

Conventions: points ``[N, 3]``; camera-to-world ``c2w`` ``[V, 4, 4]`` in OpenCV axes. A rigid world transform ``T``
(4x4) applied to the points, ``p' = T p``, is applied to the cameras as ``c2w' = T c2w`` (equivalently
``w2c' = w2c T^-1``, the paper's "right-multiply W2C by R^-1", method reference section 8.1), so every point projects to
the same pixel before and after.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "rotation_matrix",
    "random_object_rotation",
    "apply_rigid_transform",
    "center_points_and_cameras",
    "shapenet_axis_remap",
    "SHAPENET_AXIS_REMAP",
    "farthest_point_sample",
    "farthest_point_order",
    "normalize_color",
    "SceneAugmentation",
]

#: the paper's ShapeNet point remap (x, y, z) -> (-z, x, -y), as a matrix acting on column vectors (method ref. 8.1)
SHAPENET_AXIS_REMAP = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=np.float32)


def shapenet_axis_remap(points: np.ndarray) -> np.ndarray:
    """Map ShapeNet ``pts/*.npy`` coordinates into the frame of the renders' cameras: (x, y, z) -> (-z, x, -y)."""
    return points @ SHAPENET_AXIS_REMAP.T


def rotation_matrix(axis: str, angle: float) -> np.ndarray:
    """3x3 rotation by ``angle`` radians about the world ``axis`` ("x", "y" or "z"), right-handed."""
    c, s = math.cos(angle), math.sin(angle)
    if axis == "x":
        m = [[1, 0, 0], [0, c, -s], [0, s, c]]
    elif axis == "y":
        m = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    elif axis == "z":
        m = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    else:
        raise ValueError(f"`axis` must be 'x', 'y' or 'z', got {axis!r}")
    return np.asarray(m, dtype=np.float64)


def random_object_rotation(
    rng: np.random.Generator, max_angles: tuple[float, float, float] = (0.01 * math.pi, 0.01 * math.pi, 2 * math.pi)
) -> np.ndarray:
    """The paper's object augmentation (method reference 8.1): rotations about x, y and z with angles uniform in
    ``+-max_angles`` (default +-0.01 pi, +-0.01 pi, +-2 pi), multiplied in a random order. Returns a 3x3 matrix."""
    mats = [rotation_matrix(axis, rng.uniform(-a, a)) for axis, a in zip("xyz", max_angles)]
    out = np.eye(3)
    for i in rng.permutation(3):
        out = mats[i] @ out
    return out


def apply_rigid_transform(
    points: np.ndarray, camera_to_world: np.ndarray, rotation: np.ndarray, translation: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``p' = R p + t`` to points ``[N, 3]`` and ``c2w' = [R t; 0 1] c2w`` to cameras ``[V, 4, 4]``."""
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"`points` must have shape [N, 3], got {points.shape}")
    if camera_to_world.ndim != 3 or camera_to_world.shape[1:] != (4, 4):
        raise ValueError(f"`camera_to_world` must have shape [V, 4, 4], got {camera_to_world.shape}")
    t = np.zeros(3) if translation is None else np.asarray(translation, dtype=np.float64)
    transform = np.eye(4)
    transform[:3, :3] = rotation
    transform[:3, 3] = t
    new_points = (points.astype(np.float64) @ rotation.T + t).astype(np.float32)
    new_c2w = (transform @ camera_to_world.astype(np.float64)).astype(np.float32)
    return new_points, new_c2w


def center_points_and_cameras(points: np.ndarray, camera_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Subtract the mean of ``points`` from the points and from the camera positions (the paper centres both levels
    this way, method reference 1.2-1.3); returns the centred copies."""
    center = points.astype(np.float64).mean(axis=0)
    return apply_rigid_transform(points, camera_to_world, np.eye(3), -center)


def farthest_point_order(points: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """Greedy farthest point sampling in NumPy: indices ``[min(k, N)]`` of ``points`` ``[N, 3]``, starting at
    ``start``. The order is greedy, so the first ``j`` indices are the FPS-``j`` subset for every ``j``."""
    n = points.shape[0]
    k = min(k, n)
    x, y, z = (np.ascontiguousarray(points[:, i], dtype=np.float64) for i in range(3))
    idx = np.empty(k, dtype=np.int64)
    dist = np.full(n, np.inf)
    current = start
    for i in range(k):
        idx[i] = current
        d = (x - x[current]) ** 2 + (y - y[current]) ** 2 + (z - z[current]) ** 2
        np.minimum(dist, d, out=dist)
        current = int(dist.argmax())
    return idx


def farthest_point_sample(points: torch.Tensor, k: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Batched farthest point sampling starting at index 0 of every sample (as the paper's object FPS).

    Args:
        points: ``[B, N, 3]`` (samples shorter than ``N`` are padded; see ``lengths``).
        k: points to keep.
        lengths: ``[B]`` valid counts; padded rows are never chosen before every valid point has been (their distance
            is forced to zero), so a sample with fewer than ``k`` points repeats point 0.
    Returns:
        indices ``[B, k]`` (int64) into dim 1 of ``points``.
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"`points` must have shape [B, N, 3], got {tuple(points.shape)}")
    b, n, _ = points.shape
    valid = torch.ones(b, n, dtype=torch.bool, device=points.device)
    if lengths is not None:
        valid = torch.arange(n, device=points.device)[None, :] < lengths[:, None]
    inf = torch.full((b, n), float("inf"), dtype=points.dtype, device=points.device)
    dist = torch.where(valid, inf, torch.zeros_like(inf))
    idx = torch.zeros(b, k, dtype=torch.long, device=points.device)
    current = torch.zeros(b, dtype=torch.long, device=points.device)
    rows = torch.arange(b, device=points.device)
    for i in range(k):
        idx[:, i] = current
        d = ((points - points[rows, current][:, None, :]) ** 2).sum(-1)
        dist = torch.minimum(dist, d)
        current = dist.argmax(dim=1)
    return idx


def normalize_color(colors: np.ndarray) -> np.ndarray:
    """Colours 0..255 -> [-1, 1] as the paper (``c / 127.5 - 1``, method reference 1.3)."""
    return colors.astype(np.float32) / 127.5 - 1.0


class SceneAugmentation:
    """The paper's scene augmentation list (method reference 8.2, the ``aug: true`` branch, unused in its configs):

    - random rotation about z by U(-pi, pi) with probability ``p_rotate_z`` and about x and y by U(-pi/64, pi/64)
      with probability ``p_rotate_xy``; cameras rotate with the points;
    - jitter: Gaussian noise of std ``jitter_sigma`` clipped at ``jitter_clip`` metres (points only: sub-voxel noise
      that a camera can't follow);
    - chromatic auto-contrast (p 0.2), translation (p 0.95, ratio 0.05) and jitter (p 0.95, std 0.05) on the point
      colours (Pointcept's definitions; the images are targets and are left untouched).

    ``__call__(sample, rng)`` takes and returns a dict with ``coords [P, 3]``, ``colors [P, 3]`` (0..255 float),
    ``normals [P, 3]`` and ``camera_to_world [V, 4, 4]`` (any extra keys pass through).
    """

    def __init__(
        self,
        p_rotate_z: float = 0.5,
        p_rotate_xy: float = 0.5,
        jitter_sigma: float = 0.005,
        jitter_clip: float = 0.02,
        p_auto_contrast: float = 0.2,
        p_color_translation: float = 0.95,
        color_translation_ratio: float = 0.05,
        p_color_jitter: float = 0.95,
        color_jitter_std: float = 0.05,
    ):
        self.p_rotate_z = p_rotate_z
        self.p_rotate_xy = p_rotate_xy
        self.jitter_sigma = jitter_sigma
        self.jitter_clip = jitter_clip
        self.p_auto_contrast = p_auto_contrast
        self.p_color_translation = p_color_translation
        self.color_translation_ratio = color_translation_ratio
        self.p_color_jitter = p_color_jitter
        self.color_jitter_std = color_jitter_std

    def __call__(self, sample: dict, rng: np.random.Generator) -> dict:
        out = dict(sample)
        rot = np.eye(3)
        if rng.random() < self.p_rotate_z:
            rot = rotation_matrix("z", rng.uniform(-math.pi, math.pi)) @ rot
        if rng.random() < self.p_rotate_xy:
            rot = rotation_matrix("x", rng.uniform(-math.pi / 64, math.pi / 64)) @ rot
            rot = rotation_matrix("y", rng.uniform(-math.pi / 64, math.pi / 64)) @ rot
        # rotate about the cloud's centre so the scene stays where the cameras look
        center = sample["coords"].astype(np.float64).mean(axis=0)
        coords, c2w = apply_rigid_transform(sample["coords"], sample["camera_to_world"], rot, center - rot @ center)
        out["camera_to_world"] = c2w
        out["normals"] = (sample["normals"].astype(np.float64) @ rot.T).astype(np.float32)
        if self.jitter_sigma > 0:
            noise = np.clip(rng.normal(0, self.jitter_sigma, coords.shape), -self.jitter_clip, self.jitter_clip)
            coords = coords + noise.astype(np.float32)
        out["coords"] = coords
        colors = sample["colors"].astype(np.float32)
        if rng.random() < self.p_auto_contrast:
            # Pointcept ChromaticAutoContrast: stretch each channel to 0..255, blend with a random factor
            lo, hi = colors.min(0, keepdims=True), colors.max(0, keepdims=True)
            contrast = (colors - lo) * (255.0 / np.maximum(hi - lo, 1e-6))
            blend = rng.random()
            colors = (1 - blend) * colors + blend * contrast
        if rng.random() < self.p_color_translation:
            shift = (rng.random(3) - 0.5) * 255 * 2 * self.color_translation_ratio
            colors = colors + shift
        if rng.random() < self.p_color_jitter:
            colors = colors + rng.normal(0, self.color_jitter_std * 255, colors.shape)
        out["colors"] = np.clip(colors, 0, 255).astype(np.float32)
        return out
