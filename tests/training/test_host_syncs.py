"""Host syncs on the pre-training step's hot path (issue 17), counted on CPU: every op that makes the host wait for a
GPU (``.item()`` / ``.tolist()`` / ``bool()`` of a tensor, ``nonzero``, boolean-mask indexing, ``unique``, the ops that
size their output on the host) is recorded by a dispatch mode; on CUDA, ``torch.cuda.set_sync_debug_mode("error")``
checks the same step for real. The syncs of whole pre-training steps: ``test_pretraining_syncs.py``."""

from __future__ import annotations

import collections
import os
import sys

import pytest
import torch
from accelerate import Accelerator
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from unipre3d_hf.ops.voxelize import check_packed_points, voxel_representatives
from unipre3d_hf.rendering import Gaussians
from unipre3d_hf.testing_utils import require_cuda
from unipre3d_hf.training import TrainingArguments, TrainingTask
from unipre3d_hf.training.loop import build_optimizer_and_scheduler, train_micro_step
from unipre3d_hf.training.pretrain import gaussian_statistics

SYNCING = {"_local_scalar_dense", "nonzero", "_unique2", "unique_dim", "unique_consecutive", "masked_select"}
# ops whose CUDA kernels read a size on the host (ATen: bincount reads the input's maximum for its number of bins,
# repeat_interleave without output_size reads the sum of the repeats): syncs on CUDA, invisible on CPU
SIZING = {"bincount", "repeat_interleave"}
# tensor methods that copy device values to the host without dispatching an op on a CPU tensor
HOST_READS = (torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy)


def _call_site() -> str:
    """``function`` of the innermost frame in the package (where the syncing call was written)."""
    frame = sys._getframe(2)
    while frame is not None and f"{os.sep}unipre3d_hf{os.sep}" not in frame.f_code.co_filename:
        frame = frame.f_back
    return frame.f_code.co_name if frame is not None else "?"


class _CountHostReads(TorchFunctionMode):
    def __init__(self, counter: CountSyncs):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            self.counter.record(func.__name__)
        return func(*args, **(kwargs or {}))


class CountSyncs(TorchDispatchMode):
    """Counts the syncing ops (by name) run inside the ``with`` block: boolean-mask indexing counts as ``index``,
    ``.tolist()`` / ``.cpu()`` / ``.numpy()`` by their names, and the ops of ``SIZING`` when they would read a size.
    ``sites`` counts ``"<op> in <function>"``, the package function that made the call."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()
        self.sites = collections.Counter()
        self._reads = _CountHostReads(self)

    def record(self, name: str) -> None:
        self.counts[name] += 1
        self.sites[f"{name} in {_call_site()}"] += 1

    def __enter__(self):
        self._reads.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._reads.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._overloadpacket.__name__
        if name in SYNCING:
            self.record(name)
        elif name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or []):
            self.record("index")
        elif name == "bincount" or (
            name == "repeat_interleave" and len(args) == 1 and (kwargs or {}).get("output_size") is None
        ):
            self.record(name)
        return func(*args, **(kwargs or {}))


class _Task(TrainingTask):
    def training_step(self, model, batch, step):
        loss = (model(batch["x"]) - batch["y"]).square().mean()
        return loss, {"mse": loss.detach()}


def _step_counts(fused: bool, device: str = "cpu") -> collections.Counter:
    args = TrainingArguments(output_dir="unused", fused_optimizer=fused, max_steps=10)
    accelerator = Accelerator(cpu=device == "cpu")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1))
    task = _Task()
    optimizer, scheduler = build_optimizer_and_scheduler(args, task, model, accelerator.device)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    batch = {"x": torch.randn(8, 3, device=accelerator.device), "y": torch.randn(8, 1, device=accelerator.device)}
    train_micro_step(args, task, accelerator, model, optimizer, scheduler, batch, 0)  # optimizer state created
    with CountSyncs() as counter:
        _, _, skipped = train_micro_step(args, task, accelerator, model, optimizer, scheduler, batch, 1)
    assert skipped.item() == 0.0
    return counter.counts


def test_the_loop_step_with_a_fused_optimizer_never_waits_for_the_device():
    # fused AdamW: the non-finite check, clipping and the step stay on the device (found_inf)
    assert sum(_step_counts(fused=True).values()) == 0
    # foreach AdamW: the host reads the non-finite flag (the old path, kept for fused_optimizer=False)
    assert _step_counts(fused=False)["_local_scalar_dense"] >= 1


def test_gaussian_statistics_use_masked_means_without_syncs():
    g = torch.Generator().manual_seed(0)
    scales, opacities = torch.rand(2, 5, 3, generator=g) + 0.1, torch.rand(2, 5, generator=g)
    mask = torch.tensor([[True, True, False, True, False], [True, False, True, True, True]])
    gaussians = Gaussians(torch.zeros(2, 5, 3), torch.randn(2, 5, 4), scales, opacities, torch.zeros(2, 5, 4, 3), mask)
    with CountSyncs() as counter:
        scale, opacity = gaussian_statistics(gaussians)
    assert sum(counter.counts.values()) == 0
    torch.testing.assert_close(scale, scales.amax(-1).log()[mask].mean().exp())
    torch.testing.assert_close(opacity, opacities[mask].mean())


def test_random_voxel_representatives_without_mask_indexing():
    point_to_voxel = torch.tensor([0, 1, 0, 2, 1, 1, 3, 0])
    with CountSyncs() as counter:
        chosen = voxel_representatives(point_to_voxel, 4, random=True, generator=torch.Generator().manual_seed(3))
    assert sum(counter.counts.values()) == 0
    assert torch.equal(point_to_voxel[chosen], torch.arange(4))  # one point of each voxel
    # the winner is the point of least random priority in its voxel (the same draw as inside)
    prio = torch.rand(8, generator=torch.Generator().manual_seed(3))
    expected = [int(torch.nonzero(point_to_voxel == v).flatten()[prio[point_to_voxel == v].argmin()]) for v in range(4)]
    assert chosen.tolist() == expected
    first = voxel_representatives(point_to_voxel, 4)
    assert first.tolist() == [0, 1, 3, 6]


def test_packed_point_checks_read_one_flag_and_still_name_the_problem():
    coords, offsets = torch.rand(10, 3), torch.tensor([4, 10])
    features = torch.rand(10, 2)
    with CountSyncs() as counter:
        check_packed_points(coords, features, offsets)
    assert counter.counts == {"_local_scalar_dense": 1}
    bad_coords = coords.clone()
    bad_coords[3, 1] = float("nan")
    bad_features = features.clone()
    bad_features[9, 0] = float("inf")
    cases = [
        (bad_coords, features, offsets, "`coords` contains NaN"),
        (coords, features, torch.tensor([4, 4, 10]), "strictly increasing"),
        (coords, features, torch.tensor([4, 9]), r"`offsets\[-1\]` must equal"),
        (coords, bad_features, offsets, "`features` contains NaN"),
    ]
    for c, f, o, message in cases:
        with pytest.raises(ValueError, match=message):
            check_packed_points(c, f, o)


@require_cuda
def test_cuda_loop_step_passes_sync_debug_mode():
    # the CUDA check of the first test: any synchronising call inside the step raises
    from accelerate.state import AcceleratorState

    args = TrainingArguments(output_dir="unused", max_steps=10)  # fused_optimizer None: fused on CUDA
    AcceleratorState._reset_state(reset_partial_state=True)  # an earlier test's CPU Accelerator is process-wide
    accelerator = Accelerator()
    assert accelerator.device.type == "cuda"
    model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 1)).to(accelerator.device)
    task = _Task()
    optimizer, scheduler = build_optimizer_and_scheduler(args, task, model, accelerator.device)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    batch = {"x": torch.randn(8, 3, device="cuda"), "y": torch.randn(8, 1, device="cuda")}
    train_micro_step(args, task, accelerator, model, optimizer, scheduler, batch, 0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _, _, skipped = train_micro_step(args, task, accelerator, model, optimizer, scheduler, batch, 1)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert skipped.item() == 0.0
