"""View selection, as the paper's data loaders (method reference sections 8.1 and 8.2).

Both samplers return index arrays into a row's views/frames and take a ``numpy.random.Generator``, so a collator
with a seeded generator is reproducible. Training draws afresh for every batch (the paper samples i.i.d. every
iteration, section 8.3).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ObjectViewSampler", "SceneViewSampler"]


class ObjectViewSampler:
    """Reference and supervision views of one object.

    - ``mode="train"`` (the paper): a random permutation of the ``V`` views; the first ``num_supervision`` (4) are
      supervised and the reference is the first of them, so the reference view is always one of the supervised
      views (method reference 1.2). With ``reference_in_supervision=False`` the reference is drawn from the other
      views instead (needs ``V > num_supervision``).
    - ``mode="eval"``: the reference is view 0 and the supervision views are 1..``num_supervision`` (the paper's
      validation uses 0 and 1..23; pass ``num_supervision=V - 1`` for that). Deterministic.

    ``__call__(num_views, rng)`` returns ``(reference [num_reference], supervision [num_supervision])`` int64 arrays.
    """

    def __init__(
        self,
        num_reference: int = 1,
        num_supervision: int = 4,
        mode: str = "train",
        reference_in_supervision: bool = True,
    ):
        if mode not in ("train", "eval"):
            raise ValueError(f"`mode` must be 'train' or 'eval', got {mode!r}")
        if num_reference < 1 or num_supervision < 1:
            raise ValueError(
                f"need num_reference >= 1 and num_supervision >= 1, got {num_reference}, {num_supervision}"
            )
        if reference_in_supervision and num_reference > num_supervision:
            raise ValueError("with reference_in_supervision=True, num_reference must be <= num_supervision")
        self.num_reference = num_reference
        self.num_supervision = num_supervision
        self.mode = mode
        self.reference_in_supervision = reference_in_supervision

    def min_views(self) -> int:
        if self.mode == "eval":
            return self.num_reference + self.num_supervision
        if self.reference_in_supervision:
            return self.num_supervision
        return self.num_reference + self.num_supervision

    def __call__(self, num_views: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if num_views < self.min_views():
            raise ValueError(f"an object needs at least {self.min_views()} views for this sampler, got {num_views}")
        if self.mode == "eval":
            ref = np.arange(self.num_reference)
            sup = np.arange(self.num_reference, self.num_reference + self.num_supervision)
            return ref, sup
        perm = rng.permutation(num_views)
        sup = perm[: self.num_supervision]
        if self.reference_in_supervision:
            ref = sup[: self.num_reference]
        else:
            ref = perm[self.num_supervision : self.num_supervision + self.num_reference]
        return ref.astype(np.int64), sup.astype(np.int64)


class SceneViewSampler:
    """Reference and supervision frames of one scene sequence (method reference 8.2, "Frame selection").

    ``mode="train"``: the frame range is cut into ``num_reference`` (8) contiguous near-equal chunks; a supervision
    frame is drawn in each chunk, and each reference is a random frame within ``+-max_distance`` (5) of its
    supervision frame, never the frame itself. (The paper calls the chunk frames "GT" and their neighbours the
    references; the pairs are the same.) With ``self_supervise=True`` each reference is its supervision frame.
    ``mode="eval"``: chunk centres and their right-hand neighbours, deterministic.

    ``__call__(num_frames, rng)`` returns ``(reference [num_reference], supervision [num_reference])`` int64 arrays;
    ``reference[i]`` and ``supervision[i]`` are a pair.
    """

    def __init__(self, num_reference: int = 8, max_distance: int = 5, mode: str = "train", self_supervise=False):
        if mode not in ("train", "eval"):
            raise ValueError(f"`mode` must be 'train' or 'eval', got {mode!r}")
        if num_reference < 1 or max_distance < 1:
            raise ValueError(f"need num_reference >= 1 and max_distance >= 1, got {num_reference}, {max_distance}")
        self.num_reference = num_reference
        self.max_distance = max_distance
        self.mode = mode
        self.self_supervise = self_supervise

    def min_frames(self) -> int:
        return max(self.num_reference, 2)

    def __call__(self, num_frames: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if num_frames < self.min_frames():
            raise ValueError(f"a scene needs at least {self.min_frames()} frames for this sampler, got {num_frames}")
        chunks = np.array_split(np.arange(num_frames), self.num_reference)
        sup = np.empty(self.num_reference, dtype=np.int64)
        ref = np.empty(self.num_reference, dtype=np.int64)
        for i, chunk in enumerate(chunks):
            if self.mode == "eval":
                sup[i] = chunk[len(chunk) // 2]
            else:
                sup[i] = rng.choice(chunk)
            if self.self_supervise:
                ref[i] = sup[i]
                continue
            lo, hi = max(0, sup[i] - self.max_distance), min(num_frames - 1, sup[i] + self.max_distance)
            neighbours = np.array([j for j in range(lo, hi + 1) if j != sup[i]])
            if self.mode == "eval":
                ref[i] = sup[i] + 1 if sup[i] + 1 < num_frames else sup[i] - 1
            else:
                ref[i] = rng.choice(neighbours)
        return ref, sup
