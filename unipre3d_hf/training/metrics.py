"""Evaluation metrics: PSNR and SSIM per image, a per-view accumulator for rendered views, accuracy and mean IoU, and
the downstream scores (OA / mAcc, Pointcept's mIoU / mAcc / allAcc, ShapeNetPart class and instance mIoU).

Image metrics follow the paper's ``eval.evaluate_dataset`` (method reference, section 7.3): PSNR on the unclamped
render, SSIM with an 11x11 Gaussian window (sigma 1.5, C1 = 0.01^2, C2 = 0.03^2) averaged over its map, views whose
ground truth is entirely background skipped, and averages taken first per example and then across examples, separately
for reference ("cond") and novel views.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .losses import foreground_mask

__all__ = [
    "ViewMetricAccumulator",
    "accuracy",
    "classification_scores",
    "confusion_matrix",
    "iou_per_class",
    "mean_iou",
    "part_segmentation_scores",
    "predict_parts",
    "psnr",
    "segmentation_scores",
    "shape_part_iou",
    "ssim",
]


def _check_image_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.dim() < 3 or pred.shape[-3] != 3:
        raise ValueError(f"`pred` must have shape [..., 3, H, W], got {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(f"`target` must have the shape of `pred` {tuple(pred.shape)}, got {tuple(target.shape)}")


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image, for images in [0, 1].

    PSNR = -10 * log10(mean over (C, H, W) of (pred - target)^2). ``pred`` is not clamped (the paper scores the
    unclamped render). Identical images give ``inf``.

    Args:
        pred: ``[..., 3, H, W]`` rendered images.
        target: ``[..., 3, H, W]`` ground truth.

    Returns:
        ``[...]`` PSNR in dB, in the dtype of ``pred``.
    """
    _check_image_pair(pred, target)
    mse = (pred - target).pow(2).mean(dim=(-3, -2, -1))
    return -10.0 * torch.log10(mse)


def _gaussian_window_1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    window = torch.exp(-(coords**2) / (2 * sigma**2))
    return (window / window.sum()).to(dtype)


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of ``x [N, C, H, W]`` with zero ("same") padding, one channel at a time."""
    channels, size = x.shape[1], window.numel()
    pad = size // 2
    kernel_h = window.view(1, 1, size, 1).expand(channels, 1, size, 1)
    kernel_w = window.view(1, 1, 1, size).expand(channels, 1, 1, size)
    x = F.conv2d(x, kernel_h, padding=(pad, 0), groups=channels)
    return F.conv2d(x, kernel_w, padding=(0, pad), groups=channels)


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    c1: float = 0.01**2,
    c2: float = 0.03**2,
) -> torch.Tensor:
    """Structural similarity of each image (Wang, Bovik, Sheikh and Simoncelli, IEEE TIP 2004, eq. 13).

    Local means, variances and covariance come from a normalised Gaussian window (11x11, sigma 1.5) applied as two 1-D
    convolutions per channel (``F.conv2d`` with ``groups=C``) with zero padding of ``window_size // 2``, so the SSIM
    map has the input's size ("same" convolution); the score is the mean of the map over channels and pixels. This is
    the convention of the 3D Gaussian Splatting ``ssim`` that the paper's evaluation uses (border windows see zeros
    and are not renormalised), not the "valid"-region variant of scikit-image.

    Args:
        pred: ``[..., 3, H, W]`` images, nominally in [0, 1] (C1 and C2 assume a data range of 1).
        target: ``[..., 3, H, W]`` ground truth.
        window_size: odd side of the Gaussian window.
        sigma: standard deviation of the window, in pixels.
        c1, c2: stabilising constants (K1 L)^2 and (K2 L)^2 with L = 1.

    Returns:
        ``[...]`` SSIM per image; 1 for identical images.
    """
    _check_image_pair(pred, target)
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"`window_size` must be a positive odd integer, got {window_size}")
    batch_shape, (c, h, w) = pred.shape[:-3], pred.shape[-3:]
    x = pred.reshape(-1, c, h, w)
    y = target.reshape(-1, c, h, w).to(x.dtype)
    window = _gaussian_window_1d(window_size, sigma, x.dtype, x.device)
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    sigma_xx = _blur(x * x, window) - mu_x**2
    sigma_yy = _blur(y * y, window) - mu_y**2
    sigma_xy = _blur(x * y, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sigma_xx + sigma_yy + c2))
    return ssim_map.mean(dim=(-3, -2, -1)).reshape(batch_shape)


class ViewMetricAccumulator:
    """Accumulates PSNR, SSIM and optionally LPIPS over rendered views, as the paper's evaluation averages them.

    For every example, the metrics of its kept reference views are averaged, and so are those of its kept novel views;
    the per-example averages are then averaged across examples. A view is skipped when every pixel of its ground truth
    equals the background colour (within ``atol``); the paper skips all-black views (black is the ShapeNet background).
    An example with no kept view of a kind does not count towards that kind.

    Multi-process use: every process calls :meth:`add` on its own shard, then
    ``state = accelerator.reduce(acc.state(), "sum")`` and ``acc.compute_from_state(state)`` on any process.

    Args:
        lpips_fn: optional callable ``(pred [N, 3, H, W], target [N, 3, H, W]) -> [N]`` (or ``[N, 1, 1, 1]``) taking
            images in [0, 1] (map them to [-1, 1] inside, as ``lpips.LPIPS(...)(x, y, normalize=True)`` does).
        background: default background colour, 3 floats in [0, 1]; :meth:`add` may override it per call.
        atol: tolerance of the background test.
        device: device of the accumulated sums; defaults to the device of the first images added.
    """

    def __init__(
        self,
        lpips_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        background: Sequence[float] = (0.0, 0.0, 0.0),
        atol: float = 1e-6,
        device: torch.device | str | None = None,
    ) -> None:
        if len(background) != 3:
            raise ValueError(f"`background` must hold 3 floats (RGB), got {background!r}")
        self.lpips_fn = lpips_fn
        self.background = tuple(float(v) for v in background)
        self.atol = atol
        self.metric_names = ("psnr", "ssim") + (("lpips",) if lpips_fn is not None else ())
        self._device = torch.device(device) if device is not None else None
        self.reset()

    def reset(self) -> None:
        """Forget everything added so far."""
        self._sums: torch.Tensor | None = None
        self._counts: torch.Tensor | None = None
        if self._device is not None:
            self._allocate(self._device)

    def _allocate(self, device: torch.device) -> None:
        # sums[m, k]: sum over examples of the per-example mean of metric m over views of kind k (0 reference, 1 novel)
        self._sums = torch.zeros(len(self.metric_names), 2, dtype=torch.float64, device=device)
        self._counts = torch.zeros(2, dtype=torch.float64, device=device)

    def _background_tensor(self, background: torch.Tensor | Sequence[float] | None, batch: int, ref: torch.Tensor):
        if background is None:
            background = self.background
        bg = torch.as_tensor(background, dtype=ref.dtype, device=ref.device)
        if bg.shape == (3,):
            bg = bg.expand(batch, 3)
        if bg.shape != (batch, 3):
            raise ValueError(f"`background` must have shape [3] or [B, 3] = [{batch}, 3], got {tuple(bg.shape)}")
        return bg

    @torch.no_grad()
    def add(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        is_reference: torch.Tensor,
        background: torch.Tensor | Sequence[float] | None = None,
    ) -> None:
        """Scores one batch of rendered views.

        Args:
            pred: ``[B, V, 3, H, W]`` renders (unclamped).
            target: ``[B, V, 3, H, W]`` ground-truth views in [0, 1].
            is_reference: ``[B, V]`` or ``[V]`` bool, True for the reference ("cond") views fed to the model.
            background: ``[B, 3]`` or 3 floats, the background colour of each example; default: the constructor's.
        """
        if pred.dim() != 5 or pred.shape[2] != 3:
            raise ValueError(f"`pred` must have shape [B, V, 3, H, W], got {tuple(pred.shape)}")
        if target.shape != pred.shape:
            raise ValueError(f"`target` must have the shape of `pred` {tuple(pred.shape)}, got {tuple(target.shape)}")
        b, v = pred.shape[:2]
        is_reference = torch.as_tensor(is_reference, device=pred.device)
        if is_reference.dtype != torch.bool or is_reference.shape not in ((v,), (b, v)):
            raise ValueError(
                f"`is_reference` must be a bool tensor of shape [V] = [{v}] or [B, V] = [{b}, {v}], "
                f"got {is_reference.dtype} {tuple(is_reference.shape)}"
            )
        is_reference = is_reference.expand(b, v)
        bg = self._background_tensor(background, b, target)
        if self._sums is None:
            self._allocate(pred.device)

        # a view is kept unless every pixel of its ground truth is the background colour
        keep = foreground_mask(target, bg, self.atol).flatten(2).any(dim=2)  # [B, V]
        if not bool(keep.any()):
            return
        kept_pred, kept_target = pred[keep], target[keep]  # [K, 3, H, W]
        values = [psnr(kept_pred, kept_target), ssim(kept_pred, kept_target)]
        if self.lpips_fn is not None:
            values.append(torch.as_tensor(self.lpips_fn(kept_pred, kept_target)).reshape(-1))
        per_view = torch.zeros(len(values), b, v, dtype=torch.float64, device=pred.device)
        for m, value in enumerate(values):
            if value.shape != (kept_pred.shape[0],):
                raise ValueError(f"metric {self.metric_names[m]!r} must give one value per view, got {value.shape}")
            per_view[m][keep] = value.to(torch.float64)

        for k, kind_mask in enumerate((is_reference, ~is_reference)):
            mask = (keep & kind_mask).to(torch.float64)  # [B, V]
            n_views = mask.sum(dim=1)  # [B]
            has_views = n_views > 0
            per_example = (per_view * mask).sum(dim=2) / n_views.clamp(min=1)  # [M, B]
            self._sums[:, k] += (per_example * has_views).sum(dim=1).to(self._sums.device)
            self._counts[k] += has_views.sum().to(self._counts.device)

    def state(self) -> dict[str, torch.Tensor]:
        """Sums and counts to reduce across processes with ``accelerator.reduce(state, "sum")``.

        Returns:
            ``{"sums": [M, 2] float64, "counts": [2] float64}``: per metric (``self.metric_names``) and kind
            (reference, novel), the sum of per-example means and the number of examples.
        """
        if self._sums is None:
            self._allocate(torch.device("cpu"))
        return {"sums": self._sums.clone(), "counts": self._counts.clone()}

    def compute_from_state(self, state: dict[str, torch.Tensor]) -> dict[str, float]:
        """Averages from a (possibly reduced) :meth:`state`.

        Returns:
            ``{"psnr_reference", "ssim_reference", ["lpips_reference"], "psnr_novel", "ssim_novel", ["lpips_novel"],
            "num_examples_reference", "num_examples_novel"}``; a kind with no example gives NaN averages.
        """
        sums, counts = state["sums"], state["counts"]
        if sums.shape != (len(self.metric_names), 2) or counts.shape != (2,):
            raise ValueError(
                f"`state` must hold sums [{len(self.metric_names)}, 2] and counts [2], "
                f"got {tuple(sums.shape)} and {tuple(counts.shape)}"
            )
        out: dict[str, float] = {}
        for k, kind in enumerate(("reference", "novel")):
            n = float(counts[k])
            for m, name in enumerate(self.metric_names):
                out[f"{name}_{kind}"] = float(sums[m, k]) / n if n > 0 else math.nan
        out["num_examples_reference"] = float(counts[0])
        out["num_examples_novel"] = float(counts[1])
        return out

    def compute(self) -> dict[str, float]:
        """Averages of this process's views only; see :meth:`compute_from_state` for the keys."""
        return self.compute_from_state(self.state())


def accuracy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Fraction of correctly classified items, ignoring ``labels == ignore_index``.

    Args:
        logits: ``[..., C]`` class scores (the arg-max is the prediction).
        labels: ``[...]`` integer class labels.
        ignore_index: label value to leave out.

    Returns:
        0-dim float tensor; NaN when every label is ignored.
    """
    if logits.dim() < 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"`logits` must have shape [..., C] with [...] = the shape of `labels` {tuple(labels.shape)}, "
            f"got {tuple(logits.shape)}"
        )
    valid = labels != ignore_index
    correct = (logits.argmax(dim=-1) == labels) & valid
    return correct.sum().float() / valid.sum().float()


def confusion_matrix(
    pred: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = -1
) -> torch.Tensor:
    """Confusion matrix ``[num_classes, num_classes]`` (rows: true class, columns: predicted class), int64.

    Args:
        pred: ``[...]`` predicted class indices in ``[0, num_classes)``.
        labels: ``[...]`` true class indices in ``[0, num_classes)`` or ``ignore_index``.

    Matrices of several batches or processes add up (``accelerator.reduce(cm, "sum")``).
    """
    pred, labels = torch.as_tensor(pred), torch.as_tensor(labels)  # NumPy arrays and lists too
    if pred.shape != labels.shape:
        raise ValueError(f"`pred` must have the shape of `labels` {tuple(labels.shape)}, got {tuple(pred.shape)}")
    if pred.is_floating_point() or labels.is_floating_point():
        raise ValueError("`pred` and `labels` must hold integer class indices (take the arg-max of logits first)")
    valid = labels != ignore_index
    pred, labels = pred[valid].long(), labels[valid].long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"`labels` must be in [0, {num_classes}) or equal to ignore_index={ignore_index}")
    if pred.numel() and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"`pred` must be in [0, {num_classes}) where labels are not ignored")
    counts = torch.bincount(labels * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU = TP / (TP + FP + FN) of each class from a confusion matrix ``[C, C]``; NaN for a class absent from both
    the predictions and the labels. Returns ``[C]`` float64."""
    if confusion.dim() != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"`confusion` must have shape [C, C], got {tuple(confusion.shape)}")
    confusion = confusion.to(torch.float64)
    tp = confusion.diagonal()
    union = confusion.sum(dim=0) + confusion.sum(dim=1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))


def mean_iou(pred: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = -1) -> torch.Tensor:
    """Mean over classes of the per-class IoU (see :func:`iou_per_class`), leaving out classes absent from both the
    predictions and the labels. ``pred`` and ``labels``: ``[...]`` integer class indices. Returns a 0-dim float64
    tensor; NaN when no class is present."""
    iou = iou_per_class(confusion_matrix(pred, labels, num_classes, ignore_index))
    return iou.nanmean()


# ---------------------------------------------------------------------------------------------- downstream metrics
def _indices(name: str, value) -> torch.Tensor:
    """A NumPy array, list or tensor of integer class indices as a CPU int64 tensor (arg-max of logits first)."""
    tensor = torch.as_tensor(value)
    if tensor.is_floating_point() or tensor.dtype == torch.bool:
        raise ValueError(f"`{name}` must hold integer class indices (arg-max of logits), got {tensor.dtype}")
    return tensor.detach().cpu().long()


def segmentation_scores(confusion) -> dict[str, object]:
    """Pointcept's semantic segmentation scores from a confusion matrix ``[C, C]`` (rows: truth, columns: prediction).

    Returns ``{"mIoU", "mAcc", "allAcc"}`` as floats and ``"iou_per_class"`` / ``"acc_per_class"`` as lists of C
    floats (NaN for a class absent from the labels, and, for IoU, from the predictions too). As Pointcept's
    ``SemSegEvaluator`` (intersection / union and intersection / target per class): mIoU and mAcc average the classes
    present, allAcc is the fraction of labelled points predicted right. Empty matrices give NaN.
    """
    confusion = torch.as_tensor(confusion).to(torch.float64)
    iou = iou_per_class(confusion)
    tp, target = confusion.diagonal(), confusion.sum(dim=1)
    acc = torch.where(target > 0, tp / target.clamp(min=1), torch.full_like(tp, math.nan))
    total = confusion.sum()
    return {
        "mIoU": float(iou.nanmean()),
        "mAcc": float(acc.nanmean()),
        "allAcc": float(tp.sum() / total) if total > 0 else math.nan,
        "iou_per_class": iou.tolist(),
        "acc_per_class": acc.tolist(),
    }


def classification_scores(pred, labels, num_classes: int) -> dict[str, object]:
    """Overall accuracy (OA) and mean class accuracy (mAcc, the mean over classes present in ``labels`` of the
    fraction of their samples predicted right), as the ScanObjectNN / ModelNet40 tables report them.

    Args:
        pred, labels: ``[N]`` integer class indices (NumPy arrays, lists or tensors).
    Returns:
        ``{"accuracy", "mean_class_accuracy", "acc_per_class" (C floats, NaN for a class with no sample),
        "confusion_matrix" (C x C nested lists)}``.
    """
    pred, labels = _indices("pred", pred), _indices("labels", labels)
    confusion = confusion_matrix(pred, labels, num_classes, ignore_index=-100)
    scores = segmentation_scores(confusion)
    return {
        "accuracy": scores["allAcc"],
        "mean_class_accuracy": scores["mAcc"],
        "acc_per_class": scores["acc_per_class"],
        "confusion_matrix": confusion.tolist(),
    }


def predict_parts(logits: torch.Tensor, parts) -> torch.Tensor:
    """Part prediction of one shape restricted to its category's parts, as the standard ShapeNetPart evaluation
    (PointNet++ / Point-BERT ``test``: arg-max over the category's part logits only).

    Args:
        logits: ``[N, num_parts_total]`` (or ``[B, N, num_parts_total]`` with one part list for all).
        parts: the category's part indices (increasing).
    Returns:
        ``[N]`` (or ``[B, N]``) int64 part indices, each one of ``parts``.
    """
    parts = torch.as_tensor(list(parts), dtype=torch.long, device=logits.device)
    if parts.numel() == 0 or parts.min() < 0 or parts.max() >= logits.shape[-1]:
        raise ValueError(f"`parts` must be non-empty indices in [0, {logits.shape[-1]}), got {parts.tolist()}")
    return parts[logits.index_select(-1, parts).argmax(dim=-1)]


def shape_part_iou(pred, labels, parts) -> float:
    """Mean IoU of one shape over its category's parts; a part absent from both the prediction and the truth counts
    IoU 1 (the PointNet++ / Point-BERT ShapeNetPart convention).

    Args:
        pred, labels: ``[N]`` part indices of the shape's points.
        parts: the part indices of the shape's category.
    """
    pred, labels = _indices("pred", pred).reshape(-1), _indices("labels", labels).reshape(-1)
    if pred.shape != labels.shape:
        raise ValueError(f"`pred` must have the shape of `labels` {tuple(labels.shape)}, got {tuple(pred.shape)}")
    ious = []
    for part in parts:
        p, t = pred == int(part), labels == int(part)
        union = (p | t).sum().item()
        ious.append(1.0 if union == 0 else (p & t).sum().item() / union)
    if not ious:
        raise ValueError("`parts` must not be empty")
    return sum(ious) / len(ious)


def part_segmentation_scores(shape_ious, categories, category_names=None) -> dict[str, object]:
    """ShapeNetPart instance mIoU (mean over shapes) and class mIoU (mean over categories of the mean shape IoU of
    the category's shapes), from one :func:`shape_part_iou` per shape.

    Args:
        shape_ious: ``[S]`` shape IoUs. categories: ``[S]`` category index (or name) of each shape.
        category_names: optional names to key the per-category IoUs by (index -> name).
    Returns:
        ``{"instance_mIoU", "class_mIoU", "iou_per_category": {category: IoU}}`` (categories with no shape left out).
    """
    shape_ious = [float(v) for v in torch.as_tensor(shape_ious, dtype=torch.float64).reshape(-1).tolist()]
    categories = list(categories.tolist() if hasattr(categories, "tolist") else categories)
    if len(categories) != len(shape_ious):
        raise ValueError(f"`categories` must hold one entry per shape ({len(shape_ious)}), got {len(categories)}")
    if not shape_ious:
        return {"instance_mIoU": math.nan, "class_mIoU": math.nan, "iou_per_category": {}}
    per_category: dict = {}
    for iou, category in zip(shape_ious, categories):
        key = category_names[category] if category_names is not None else category
        per_category.setdefault(key, []).append(iou)
    iou_per_category = {k: sum(v) / len(v) for k, v in sorted(per_category.items(), key=lambda kv: str(kv[0]))}
    return {
        "instance_mIoU": sum(shape_ious) / len(shape_ious),
        "class_mIoU": sum(iou_per_category.values()) / len(iou_per_category),
        "iou_per_category": iou_per_category,
    }
