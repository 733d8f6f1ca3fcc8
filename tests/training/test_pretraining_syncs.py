"""Host syncs of one whole pre-training step (issue 17), counted on CPU with the torch twins: the exact syncing ops of
``train_micro_step`` for an object model and the two scene backbones, each remaining one listed with its reason; the
value checks that were folded into one read still raise their ``ValueError`` naming the field; and the rewritten
index computations give exactly what the code before them gave."""

from __future__ import annotations

import collections

import pytest
import torch
from accelerate import Accelerator

from tests.models import test_pcm
from tests.models.object_backbone_common import make_points
from tests.models.test_pretraining import OBJECT_BACKBONES, SCENE_BACKBONES, object_batch, scene_batch, tiny_model
from tests.training.test_host_syncs import CountSyncs
from unipre3d_hf.data.geometry import unproject_depth_to_world
from unipre3d_hf.modeling.layers import check_point_batch
from unipre3d_hf.modeling.pretraining import check_input_values, lift_reference_pixels
from unipre3d_hf.ops.attention import build_patches, serialized_patch_attention
from unipre3d_hf.ops.serialization import AXIS_ORDERS, ORDERS, check_grid_range, serialize, serialize_pcm_legacy
from unipre3d_hf.ops.sparse_conv import (
    SparseVoxels,
    VoxelHash,
    _kernel_offsets,
    build_strided_map,
    build_submanifold_map,
    pack_voxel_keys,
)
from unipre3d_hf.ops.voxelize import check_packed_points, offsets_to_batch_index, scene_minimum, voxelize
from unipre3d_hf.rendering import Cameras, Gaussians
from unipre3d_hf.rendering.cameras import look_at
from unipre3d_hf.training.loop import build_optimizer_and_scheduler, train_micro_step
from unipre3d_hf.training.pretrain import PretrainArguments, PretrainingTask


@pytest.fixture(autouse=True)
def _one_thread():
    # these steps are many small ops: on a shared 2-core machine one thread runs them 10x faster than two
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ one whole step
# Syncs every step has, by level. The renderer is the torch twin on CPU (gsplat on CUDA has its own):
RASTERIZER = {
    "nonzero in _intersect_tiles": 1,  # the visible Gaussians (their number sizes the tile lists)
    "_local_scalar_dense in _intersect_tiles": 1,  # the number of (tile, Gaussian) pairs, read once for both lists
    "nonzero in rasterize_torch": 1,  # the tiles that hold a Gaussian
    "tolist in rasterize_torch": 1,  # their list lengths, which size the chunks
}
INPUT_CHECKS = {
    "tolist in run_value_checks": 1,  # forward's value checks of images, background, poses and intrinsics: one read
}
OBJECT = {
    **INPUT_CHECKS,
    **RASTERIZER,
    # and the backbone's (check_point_batch, modeling/layers.py), one read more: finite points and features, and
    # for PCM its serialization grid's extent (which bounds every order of every stage: one check, not one per order)
    "tolist in run_value_checks": 2,
}
# PCM with UniPre3D's serialization (legacy_axis_orders, for its checkpoints): the codes' depth is the batch-wide
# bit length of each stage's grid (data-dependent by design, see ops/serialization.py), one read per curve order
# with the range check; the axis orders' parities stay on the device
PCM_LEGACY = {**OBJECT, "tolist in serialize_pcm_legacy": 2}  # the tiny config's "hilbert" and "z-trans"
# every object backbone's step has exactly these: FPS, kNN, the groupers, Mamba3D's and PCM's scans add none on CPU
OBJECT_STEPS = {name: OBJECT for name in ("pointmlp", "point_transformer", "mamba3d", "pcm")}
SCENE = {
    **INPUT_CHECKS,
    **RASTERIZER,
    "tolist in check_packed_points": 1,  # finite points, increasing offsets, the grid's extent (kept): one read
    "_unique2 in voxelize": 1,  # the number of voxels
    "nonzero in lift_reference_pixels": 1,  # the reference pixels that land inside their scene
    "_unique2 in lift_reference_pixels": 1,  # the voxels they fall in
    "tolist in append": 1,  # the ranges of the appended voxels' cells and scenes, one read
    "tolist in from_packed": 1,  # the most Gaussians of a scene (the padded size), with the scene indices' range
}
SPARSE_UNET = {
    **SCENE,
    # the torch twin's kernel maps (spconv builds its own on CUDA), one read of the pair counts per map: the stem (k5)
    # and fusion convs, the submanifold convs of the tiny U-Net's 5 levels (one map per level) and its 4 strided convs
    "tolist in _pairs_by_offset": 11,
    "_unique2 in build_strided_map": 4,  # the number of outputs of each strided conv
}
PTV3 = {
    **SCENE,
    "tolist in _pairs_by_offset": 5,  # the stem and fusion convs, the CPE (submanifold) convs of the 3 levels
    "_unique2 in forward": 2,  # each pooling's number of coarse voxels
    "tolist in build_patches": 3,  # the voxels per scene of each level (every size of its patch layout)
}


def _step_syncs(model, batch, level: str) -> collections.Counter:
    preset = "pointmlp_shapenet" if level == "object" else "sparse_unet_scannet"
    args = PretrainArguments(output_dir="unused", preset=preset, fused_optimizer=True, max_steps=10, use_ema=False)
    accelerator = Accelerator(cpu=True)
    task = PretrainingTask(args)
    task.accelerator = accelerator
    optimizer, scheduler = build_optimizer_and_scheduler(args, task, model, accelerator.device)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    train_micro_step(args, task, accelerator, model, optimizer, scheduler, batch, 0)  # optimizer state created
    with CountSyncs() as counter:
        loss, _, skipped = train_micro_step(args, task, accelerator, model, optimizer, scheduler, batch, 1)
    assert torch.isfinite(loss) and skipped.item() == 0.0
    return counter.sites


@pytest.mark.parametrize("name", sorted(OBJECT_STEPS))
def test_object_pretraining_step_syncs(name):
    assert sorted(OBJECT_STEPS) == sorted(OBJECT_BACKBONES)
    model = tiny_model(OBJECT_BACKBONES[name]())
    assert _step_syncs(model, object_batch(batch=2, num_points=64, size=16), "object") == OBJECT_STEPS[name]


@pytest.mark.parametrize("name, expected", [("sparse_unet", SPARSE_UNET), ("ptv3", PTV3)])
def test_scene_pretraining_step_syncs(name, expected):
    model = tiny_model(SCENE_BACKBONES[name]())
    assert _step_syncs(model, scene_batch(n1=80, n2=120, height=6, width=8), "scene") == expected


# ------------------------------------------------------------------------------- the folded value checks
def test_forward_value_checks_read_once_and_name_the_field():
    batch = object_batch(batch=1, num_points=32, size=16, targets=2)
    fields = {k: batch[k] for k in ("reference_images", "target_images", "background")}
    fields.update({k: batch[k] for k in ("reference_c2w", "target_c2w", "reference_intrinsics", "target_intrinsics")})
    with CountSyncs() as counter:
        check_input_values(**fields)
    assert counter.sites == INPUT_CHECKS
    nan_intrinsics = batch["target_intrinsics"].clone()
    nan_intrinsics[0, 1, 2] = float("nan")
    flat = batch["reference_intrinsics"].clone()
    flat[0, 0, 1] = 0.0
    skewed = batch["target_c2w"].clone()
    skewed[0, 1, :3, :3] *= 0.5
    cases = [
        ("target_intrinsics", nan_intrinsics, r"`target_intrinsics` contains NaN or Inf values \(first at \[0, 1, 2\]"),
        ("reference_intrinsics", flat, r"`reference_intrinsics` focal lengths \(fx, fy\) must be positive"),
        ("target_c2w", skewed, r"`target_c2w`\[0, 1\] is not a rigid transform"),
        ("background", torch.full((1, 3), 2.0), r"`background` must be finite and in \[0, 1\], got values in \[2.0"),
    ]
    model = tiny_model(OBJECT_BACKBONES["pointmlp"]())
    for key, value, message in cases:
        with pytest.raises(ValueError, match=message):
            check_input_values(**{**fields, key: value})
        with pytest.raises(ValueError, match=message):  # the user's call
            model(**{**batch, key: value})


def test_cameras_check_their_values_in_one_read():
    c2w = look_at(torch.tensor([[[2.0, 0.0, 0.5], [0.0, 2.0, 0.5]]]), torch.zeros(1, 2, 3))
    intrinsics = torch.tensor([20.0, 20.0, 8.0, 8.0]).expand(1, 2, 4).clone()
    for build in (
        lambda c, k: Cameras.from_camera_to_world(c, k, 16, 16),
        lambda c, k: Cameras(torch.linalg.inv(c), k, 16, 16),
    ):
        with CountSyncs() as counter:
            build(c2w, intrinsics)
        assert counter.sites == {"tolist in run_value_checks": 1}
    with CountSyncs() as counter:  # the caller has checked the values (the model's forward)
        Cameras.from_camera_to_world(c2w, intrinsics, 16, 16, check_values=False)
    assert sum(counter.counts.values()) == 0
    nan_pose, skewed, flat = c2w.clone(), c2w.clone(), intrinsics.clone()
    nan_pose[0, 1, 0, 3] = float("inf")
    skewed[0, 0, :3, :3] *= 2.0
    flat[0, 1, 0] = -1.0
    with pytest.raises(ValueError, match=r"`camera_to_world` contains NaN or Inf values \(first at \[0, 1, 0, 3\]"):
        Cameras.from_camera_to_world(nan_pose, intrinsics, 16, 16)
    with pytest.raises(ValueError, match=r"`camera_to_world`\[0, 0\] is not a rigid transform"):
        Cameras.from_camera_to_world(skewed, intrinsics, 16, 16)
    with pytest.raises(ValueError, match=r"`intrinsics` focal lengths .* at \[0, 1\]"):
        Cameras.from_camera_to_world(c2w, flat, 16, 16)
    with pytest.raises(ValueError, match=r"`world_to_camera` contains NaN or Inf values"):
        Cameras(nan_pose, intrinsics, 16, 16)
    with pytest.raises(ValueError, match=r"`world_to_camera`\[0, 0\] is not a rigid transform"):
        Cameras(skewed, intrinsics, 16, 16)


def test_from_packed_reads_its_padded_size_with_the_index_checks():
    idx = torch.tensor([1, 0, 1, 1, 0])
    fields = (torch.randn(5, 3), torch.randn(5, 4), torch.ones(5, 3), torch.rand(5), torch.zeros(5, 1, 3))
    with CountSyncs() as counter:
        g = Gaussians.from_packed(*fields, idx, batch_size=3)
    assert counter.sites == {"tolist in from_packed": 1}
    assert g.mask.tolist() == [[True, True, False], [True, True, True], [False, False, False]]
    assert torch.equal(g.means[1], fields[0][[0, 2, 3]]) and torch.equal(g.means[0, :2], fields[0][[1, 4]])
    assert Gaussians.from_packed(*fields, idx).batch_size == 2  # batch_size from the index (one read more)
    with pytest.raises(ValueError, match="`batch_index` must be non-negative"):
        Gaussians.from_packed(*fields, torch.tensor([0, -1, 1, 1, 0]), batch_size=2)
    with pytest.raises(ValueError, match=r"`batch_index` holds 2, not < batch_size=2"):
        Gaussians.from_packed(*fields, torch.tensor([0, 2, 1, 1, 0]), batch_size=2)


def test_append_and_voxelize_checks_read_once_and_name_the_field():
    voxels = SparseVoxels(torch.zeros(3, 2), torch.zeros(3, 3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    new = (torch.ones(2, 2), torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.zeros(2, dtype=torch.long))
    with CountSyncs() as counter:
        assert voxels.append(*new).num_voxels == 5
    assert counter.sites == {"tolist in append": 1}
    with pytest.raises(ValueError, match=r"`grid_coords` must lie in \[0, 65535\)"):
        voxels.append(new[0], torch.tensor([[1, 2, 3], [4, -5, 6]]), new[2])
    with pytest.raises(ValueError, match=r"`batch_index` must lie in \[0, 1\)"):
        voxels.append(new[0], new[1], torch.tensor([0, 1]))
    coords, offsets = torch.rand(20, 3), torch.tensor([8, 20])
    with CountSyncs() as counter:
        vox = voxelize(coords, offsets, 0.1)
    assert counter.sites == {"tolist in check_packed_points": 1, "_unique2 in voxelize": 1}
    assert vox.grid_coords.max() <= 9
    wide = coords.clone()
    wide[3, 0] = 7000.0  # 70000 cells of 0.1 m: more than the 16 bits of a key
    with pytest.raises(ValueError, match=r"a scene spans 70000 voxels of 0.1 m along an axis"):
        voxelize(wide, offsets, 0.1)
    with pytest.raises(ValueError, match=r"a scene spans 70000 voxels"):
        check_packed_points(wide, torch.zeros(20, 1), offsets, 0.1)
    with pytest.raises(ValueError, match="`grid_size` must be positive"):
        voxelize(coords, offsets, 0.0)


def test_serialization_and_patch_checks_read_once_and_name_the_field():
    g = torch.randint(0, 16, (50, 3), generator=torch.Generator().manual_seed(0))
    batch = torch.zeros(50, dtype=torch.long)
    with CountSyncs() as counter:
        codes = [serialize(g, batch, order, depth=4, check_range=False) for order in ("z", "hilbert")]
    assert sum(counter.counts.values()) == 0
    assert torch.equal(codes[1], serialize(g, batch, "hilbert", depth=4))
    with pytest.raises(ValueError, match=r"`grid_coords` must lie in \[0, 2\^depth\) = \[0, 8\) for depth 3"):
        check_grid_range(g, 3)
    with CountSyncs() as counter:
        layout = build_patches(torch.tensor([10, 4, 9]), 4)
    assert counter.sites == {"tolist in build_patches": 1}
    qkv = torch.randn(23, 3, 1, 2)
    with pytest.raises(ValueError, match=r"`counts` must sum to N = 22, got 23"):
        serialized_patch_attention(qkv[:22], torch.arange(22), torch.arange(22), torch.tensor([10, 4, 9]), 4)
    with CountSyncs() as counter:
        serialized_patch_attention(qkv, torch.arange(23), torch.arange(23), None, 4, layout=layout)
    assert sum(counter.counts.values()) == 0


# ------------------------------------------------- the rewritten index computations, against what they replaced
def _old_submanifold_pairs(batch_index, grid_coords, kernel_size):
    """The loop the vectorised map replaced: per offset, a lookup and two boolean-mask gathers."""
    rows = torch.arange(grid_coords.shape[0])
    table = VoxelHash(batch_index, grid_coords)
    offsets = _kernel_offsets(kernel_size, "cpu") - torch.tensor([k // 2 for k in kernel_size])
    ins, outs, starts, identity = [], [], [0], None
    for k, off in enumerate(offsets):
        if not off.any():
            identity, found, hit = k, rows, torch.ones_like(rows, dtype=torch.bool)
        else:
            found = table.lookup(batch_index, grid_coords + off)
            hit = found >= 0
        ins.append(found[hit])
        outs.append(rows[hit])
        starts.append(starts[-1] + int(hit.sum()))
    return torch.cat(ins), torch.cat(outs), starts, identity


@pytest.mark.parametrize("kernel_size", [(3, 3, 3), (3, 1, 5)])
def test_kernel_maps_are_the_loops_they_replaced(kernel_size):
    gen = torch.Generator().manual_seed(1)
    grid = torch.randint(0, 6, (300, 3), generator=gen)
    grid[-20:] = grid[:20]  # duplicated cells (lifted pixels on occupied voxels)
    batch = torch.randint(0, 2, (300,), generator=gen)
    kmap = build_submanifold_map(batch, grid, kernel_size)
    in_rows, out_rows, starts, identity = _old_submanifold_pairs(batch, grid, kernel_size)
    assert torch.equal(kmap.in_rows, in_rows) and torch.equal(kmap.out_rows, out_rows)
    assert kmap.starts == starts and kmap.identity_offset == identity
    # strided: the pairs in nonzero's order (by offset, then input row), the outputs unique's
    strided = build_strided_map(batch, grid, (2, 2, 2), (2, 2, 2), (0, 0, 0))
    offsets = _kernel_offsets((2, 2, 2), "cpu")
    num = grid[None] - offsets[:, None]
    ok = ((num % 2) == 0).all(-1) & (num >= 0).all(-1)
    k_idx, in_idx = ok.nonzero(as_tuple=True)
    keys = pack_voxel_keys(batch[in_idx], torch.div(num, 2, rounding_mode="floor")[k_idx, in_idx])
    uniq, out_idx = torch.unique(keys, sorted=True, return_inverse=True)
    assert torch.equal(strided.in_rows, in_idx) and torch.equal(strided.out_rows, out_idx)
    assert strided.starts == [0, *torch.bincount(k_idx, minlength=8).cumsum(0).tolist()]
    assert strided.num_out == uniq.numel()


def test_lifted_pixels_are_the_boolean_mask_gathers_they_replaced():
    batch = scene_batch(n1=200, n2=300, views=2, height=6, width=8)
    b, v, h, w = batch["reference_depths"].shape
    depths = batch["reference_depths"].clone()
    depths[0, 1, :2] = 0.0  # pixels without depth
    depths[1, 0, :, :3] = 50.0  # pixels outside the scene's box
    features = torch.randn(b, v, 5, h, w, generator=torch.Generator().manual_seed(2))
    c2w, intrinsics, coords, offsets = (
        batch[k] for k in ("reference_c2w", "reference_intrinsics", "coords", "offsets")
    )
    lifted = lift_reference_pixels(features, depths, c2w, intrinsics, coords, offsets, 0.05)
    # the code before: boolean masks, and the voxel count from the inverse's maximum
    world, valid = unproject_depth_to_world(depths, c2w, intrinsics, min_depth=0.05)
    batch3d = offsets_to_batch_index(offsets, coords.shape[0])
    lo, hi = scene_minimum(coords, batch3d, b), -scene_minimum(-coords, batch3d, b)
    inside = valid & ((world >= lo[:, None, None, None]) & (world <= hi[:, None, None, None])).all(-1)
    scene = torch.arange(b).view(b, 1, 1, 1).expand(b, v, h, w)[inside]
    points, feats = world[inside], features.permute(0, 1, 3, 4, 2)[inside]
    grid = torch.floor((points - lo[scene]) / 0.05).long()
    _, pixel_to_voxel = torch.unique(pack_voxel_keys(scene, grid), return_inverse=True)
    first = torch.full((int(pixel_to_voxel.max()) + 1,), points.shape[0]).scatter_reduce(
        0, pixel_to_voxel, torch.arange(points.shape[0]), reduce="amin"
    )
    assert 0 < first.numel() < inside.sum() < inside.numel()
    assert torch.equal(lifted.features, feats[first]) and torch.equal(lifted.coords, points[first])
    assert torch.equal(lifted.grid_coords, grid[first]) and torch.equal(lifted.batch_index, scene[first])


def test_patch_layout_sizes_from_the_host_counts():
    for counts in ([10, 4, 9], [4, 4], [3], [7, 1, 12, 5]):
        layout = build_patches(torch.tensor(counts), 4)
        assert layout.max_len == int(layout.patch_lengths.max()) and layout.num_tokens == sum(counts)
        assert layout.padded == bool((layout.patch_lengths < layout.max_len).any())
        assert int(layout.cu_seqlens[-1]) == layout.token_index.numel() == int(layout.patch_lengths.sum())
    assert build_patches(torch.tensor([3, 9]), 4).padded and not build_patches(torch.tensor([4, 9]), 4).padded


@pytest.mark.parametrize("name", sorted(OBJECT_STEPS))
def test_the_object_forward_holds_all_the_syncs_of_its_step(name):
    # backward, clipping and the fused optimizer step add none; the poses and intrinsics checked once in forward are
    # not checked again by Cameras (no finite / rigid / intrinsics site)
    model = tiny_model(OBJECT_BACKBONES[name]())
    batch = object_batch(batch=1, num_points=32, size=16, targets=1)
    with torch.no_grad(), CountSyncs() as counter:
        model(**batch)
    assert counter.sites == OBJECT_STEPS[name]


def test_legacy_pcm_step_syncs():
    model = tiny_model(test_pcm.TestPCM().tiny_config(legacy_axis_orders=True))
    assert _step_syncs(model, object_batch(batch=2, num_points=64, size=16), "object") == PCM_LEGACY


def _old_pcm_legacy_codes(grid_coords, batch_index, order):
    """The code before: the depth and each parity read on the host, the range checked again by ``serialize``."""
    if order in ORDERS:
        return serialize(grid_coords, batch_index, order, depth=max(int(grid_coords.max()).bit_length(), 1))
    g = grid_coords[:, ["xyz".index(axis) for axis in order]]
    maxima = g.amax(dim=0)
    code, base = g[:, 0], maxima[0]
    for m in (maxima[1], maxima[2]):
        sign = 1 if int(m) % 2 == 0 else -1
        code = (m if sign == 1 else m + 1) * base + sign * code
        base = base * m
    return batch_index * base + code


def test_pcm_legacy_codes_are_the_host_reads_they_replaced():
    gen = torch.Generator().manual_seed(5)
    for top in (1, 2, 7, 40, 513):  # even and odd maxima, depths 1 .. 10
        grid = torch.randint(0, top + 1, (60, 3), generator=gen)
        grid[0] = top
        batch = torch.randint(0, 3, (60,), generator=gen)
        for order in AXIS_ORDERS + ORDERS:
            with CountSyncs() as counter:
                codes = serialize_pcm_legacy(grid, batch, order)
            assert torch.equal(codes, _old_pcm_legacy_codes(grid, batch, order)), (top, order)
            assert sum(counter.counts.values()) == (order in ORDERS)
    with pytest.raises(ValueError, match=r"`grid_coords` must lie in \[0, 2\^16\), got values in \[-1, 4\]"):
        serialize_pcm_legacy(torch.tensor([[0, 4, 2], [-1, 0, 0]]), torch.zeros(2, dtype=torch.long), "hilbert")
    with pytest.raises(ValueError, match=r"`grid_coords` must lie in \[0, 2\^16\), got values in \[0, 65536\]"):
        serialize_pcm_legacy(torch.tensor([[0, 65536, 2]]), torch.zeros(1, dtype=torch.long), "z")


def test_point_checks_read_once_and_name_the_field():
    points = torch.rand(2, 20, 3, generator=torch.Generator().manual_seed(3))
    features = torch.randn(2, 20, 4)
    with CountSyncs() as counter:
        check_point_batch(points, features, feature_channels=4, grid_size=0.01, grid_dtype=torch.bfloat16)
    assert counter.sites == {"tolist in run_value_checks": 1}
    nan_points, inf_features = points.clone(), features.clone()
    nan_points[1, 7, 2] = float("nan")
    inf_features[0, 3, 1] = float("inf")
    with pytest.raises(ValueError, match=r"`points` contains NaN or infinite values"):
        check_point_batch(nan_points, features, feature_channels=4, grid_size=0.01)
    with pytest.raises(ValueError, match=r"`features` contains NaN or infinite values"):
        check_point_batch(points, inf_features, feature_channels=4)
    with pytest.raises(ValueError, match=r"`features` must have config.feature_channels=4 channels, got 3"):
        check_point_batch(points, features[..., :3], feature_channels=4)
    # the extent: cells [0, 65535] fit the 16 bits of a code, 65537 cells do not; a cloud's offset does not matter
    fits, wide = points.clone(), points.clone()
    fits[0, :, 1] = 1000.5
    fits[0, 1, 1] = 1000.0 + 65535.5
    wide[1, :2, 0] = torch.tensor([-3.0, 65533.0])
    check_point_batch(fits, None, grid_size=1.0)
    with pytest.raises(ValueError, match=r"`points`: a cloud spans 65537 cells of grid_size=1.0 along an axis"):
        check_point_batch(wide, None, grid_size=1.0)
    with pytest.raises(ValueError, match=r"`grid_size` must be positive, got 0.0"):
        check_point_batch(points, None, grid_size=0.0)
    # PCM's forward raises it in place of the per-order range checks it no longer runs
    model = tiny_model(OBJECT_BACKBONES["pcm"]())
    far = make_points(1, 64)
    far[0, 0, 2] = 1e5 * model.backbone.config.serialization_grid_size
    with pytest.raises(ValueError, match=r"`points`: a cloud spans \d+ cells of grid_size=0.05"):
        model.backbone(far)


def test_pcm_orders_stay_inside_the_extent_its_forward_checked(monkeypatch):
    # the proof that one check covers every order: each stage's xyz is a subset of its cloud, so its grid
    # floor(p / g) - min is >= 0 and tops out at most at the whole cloud's span; and the codes are those of the
    # checked path
    from unipre3d_hf.modeling import pcm

    calls = []
    original = pcm.serialize

    def serialize(grid_coords, batch_index, order, depth=None, check_range=True):
        assert not check_range
        calls.append(grid_coords.clone())
        return original(grid_coords, batch_index, order, depth, check_range=True)

    monkeypatch.setattr(pcm, "serialize", serialize)
    model = tiny_model(OBJECT_BACKBONES["pcm"]())
    points = make_points(2, 64, seed=4) * torch.tensor([3.0, 1.0, 0.5])
    with torch.no_grad():
        model.backbone(points)
    grid = torch.floor(points / model.backbone.config.serialization_grid_size)
    span = int((grid.amax(dim=1) - grid.amin(dim=1)).amax())
    orders = model.backbone.config.mamba_orders
    assert len(calls) == sum(order in ("z", "z-trans", "hilbert", "hilbert-trans") for order in orders) >= 2
    assert all(int(g.min()) == 0 and int(g.max()) <= span for g in calls)


@pytest.mark.parametrize("name", ["sparse_unet", "ptv3"])
def test_the_host_grid_extent_is_the_grid_maximum_at_every_conv(name, monkeypatch):
    # spconv's spatial shape comes from `grid_max` without a sync (CUDA): it must be the voxels' real maximum. The
    # torch twin runs the same levels; every conv checks it here.
    from unipre3d_hf.ops import sparse_conv

    seen = []
    original = sparse_conv.SubMConv3d._forward_torch

    def forward(self, voxels):
        seen.append((voxels.grid_max, voxels.grid_coords.amax(0).tolist()))
        return original(self, voxels)

    monkeypatch.setattr(sparse_conv.SubMConv3d, "_forward_torch", forward)
    model = tiny_model(SCENE_BACKBONES[name]()).train()
    with torch.no_grad():
        model(**scene_batch(n1=80, n2=120, height=6, width=8))
    known = [(host, real) for host, real in seen if host is not None]
    assert all(host == real for host, real in known)
    # known: every PTv3 level (its pooling derives it); in the U-Net the stem and fusion convs (the voxels of the
    # strided and inverse convs get their spatial shape from spconv itself)
    assert len(known) == (len(seen) if name == "ptv3" else 2), seen
