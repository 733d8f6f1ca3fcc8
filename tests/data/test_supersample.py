"""Anti-aliased object views: render at ``s`` x the size, box-filter down (``mini._object_views_and_points``)."""

import numpy as np
import pytest

pytest.importorskip("pybullet")

from unipre3d_hf.data import (  # noqa: E402
    build_objects_mini,
    decode_image,
    load_pretraining_dataset,
    mini,  # noqa: E402
)


def _overlap(lo: float, hi: float, n: int) -> np.ndarray:
    """Length of [lo, hi] inside each pixel [k, k + 1), k < n."""
    k = np.arange(n)
    return np.clip(np.minimum(hi, k + 1) - np.maximum(lo, k), 0.0, 1.0)


@pytest.mark.parametrize("s", [2, 4])
def test_edge_pixels_get_their_covered_fraction(s):
    """A box seen face-on (its silhouette is its front face, a rectangle with edges at known sub-pixel positions):
    each view pixel's alpha is the area of the pixel inside the rectangle, up to the sampling of s x s sub-pixel
    centres (a straight edge crossing a pixel is seen by s sub-pixel columns: error <= 1 / (2 s) per axis) and the
    uint8 rounding; the colour of partly covered pixels stays that of the face (straight, not premultiplied)."""
    p, cid, _ = mini._connect()
    try:
        half = np.array([0.37, 0.2, 0.29])
        shape = p.createVisualShape(p.GEOM_BOX, halfExtents=half.tolist(), rgbaColor=[0.8, 0.4, 0.2, 1.0],
                                    physicsClientId=cid)  # fmt: skip
        body = p.createMultiBody(0, -1, shape, [0, 0, 0], [0, 0, 0, 1], physicsClientId=cid)
        size, intr = 32, np.array([40.0, 40.0, 16.0, 16.0])
        eye = np.array([0.0, -2.0, 0.0])  # camera x = world x, camera y = world -z, front face at depth 2 - hy
        images, c2ws, pts, _ = mini._object_views_and_points(
            p, cid, {body}, [eye], intr, size, 0.002, 64, np.random.default_rng(0), supersample=s
        )
    finally:
        p.disconnect(physicsClientId=cid)
    np.testing.assert_allclose(c2ws[0], mini._look_at(eye, np.zeros(3)), atol=1e-6)
    rgba = np.asarray(decode_image(images[0]))
    alpha = rgba[..., 3] / 255.0
    depth = 2.0 - half[1]
    u0, u1 = intr[2] - intr[0] * half[0] / depth, intr[2] + intr[0] * half[0] / depth
    v0, v1 = intr[3] - intr[1] * half[2] / depth, intr[3] + intr[1] * half[2] / depth
    covered = _overlap(v0, v1, size)[:, None] * _overlap(u0, u1, size)[None, :]
    partial = (covered > 0) & (covered < 1)
    assert partial.sum() == 2 * (16 + 12) + 4 and (covered == 1).sum() == 16 * 12  # edges at .22 / .44 of a pixel
    np.testing.assert_allclose(alpha, covered, atol=1 / (2 * s) + 0.5 / 255)
    seen = partial & (covered >= 1 / (2 * s))  # a pixel corner under 1 / (2 s) can fall between sub-pixel centres
    assert seen.sum() == (32 if s == 2 else 56)  # the .44 rows; and the .22 columns at s = 4
    assert ((alpha > 0) & (alpha < 1))[seen].all()
    assert np.abs(alpha - covered)[partial].mean() < 1 / (2 * s)
    face = np.median(rgba[covered == 1][:, :3], axis=0)
    edge = partial & (alpha > 0)
    np.testing.assert_allclose(rgba[edge][:, :3], np.broadcast_to(face, (edge.sum(), 3)), atol=3)
    assert (rgba[covered == 0] == 0).all()  # outside: RGB black, alpha 0
    # the points come from the s x resolution depth: on the box's surface, up to the 2 mm grid's averaging
    assert (np.abs(pts) <= half + 1e-3).all() and (np.abs(np.abs(pts) - half) < 2e-3).any(axis=1).all()


def test_box_filter_composites_like_the_sub_pixels():
    """Compositing the filtered view over a background (the collators' ``rgb * a + bg * (1 - a)``) equals averaging
    the s x s sub-pixels composited over it, up to uint8 rounding; s = 1 returns the input."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)
    mask = rng.random((12, 18)) < 0.6
    colour, alpha = mini._box_filter(rgb, mask, 3)
    assert colour.shape == (4, 6, 3) and alpha.shape == (4, 6)
    bg = np.array([255.0, 128.0, 0.0])
    sub = np.where(mask[..., None], rgb, bg).reshape(4, 3, 6, 3, 3).mean(axis=(1, 3))
    a = alpha[..., None] / 255.0
    np.testing.assert_allclose(colour * a + bg * (1 - a), sub, atol=1.0)
    np.testing.assert_array_equal(alpha, np.rint(255 * mask.reshape(4, 3, 6, 3).mean(axis=(1, 3))))
    colour1, alpha1 = mini._box_filter(rgb, mask, 1)
    np.testing.assert_array_equal(alpha1, np.where(mask, 255, 0))
    np.testing.assert_array_equal(colour1, np.where(mask[..., None], rgb, 0))


def test_supersample_one_is_the_plain_pixel_centre_render(tmp_path):
    """``supersample=1`` stores exactly the binary views of a plain render (alpha = mask, RGB black outside), with
    the stored cameras; a bad value is refused naming the argument."""
    build_objects_mini(str(tmp_path), num_objects=1, poses=1, views=2, image_size=24, num_points=32, seed=5,
                       show_progress=False, supersample=1)  # fmt: skip
    (row,) = list(load_pretraining_dataset(str(tmp_path), split="train"))
    # rebuild the same body from the builder's draw order and render each stored camera at the output size
    rng = np.random.default_rng(5)
    size = rng.uniform(0.6, 1.0)
    p, cid, data_dir = mini._connect()
    try:
        name, file, kind, color = mini.OBJECT_MESHES[0]
        body, _, _ = mini._load_normalized(p, cid, data_dir, file, kind, color, mini._random_quaternion(rng), size)
        for image, c2w, intr in zip(row["images"], row["camera_to_world"], row["intrinsics"]):
            rgb, _, seg = mini._render(p, cid, np.asarray(c2w, np.float64), intr, 24, 24, 0.1, 10.0)
            mask = seg == body
            plain = np.concatenate([np.where(mask[..., None], rgb, 0), np.where(mask, 255, 0)[..., None]], axis=-1)
            assert 10 < mask.sum() < mask.size
            np.testing.assert_array_equal(np.asarray(decode_image(image)), plain.astype(np.uint8))
        with pytest.raises(ValueError, match="supersample"):
            mini._object_views_and_points(p, cid, {body}, [np.ones(3)], intr, 24, 0.01, 8, rng, supersample=0)
    finally:
        p.disconnect(physicsClientId=cid)
