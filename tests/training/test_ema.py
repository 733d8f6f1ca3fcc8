import io
import math

import pytest
import torch
from torch import nn

from unipre3d_hf.training import EMA, ema_decay


def test_decay_schedule_hand_computed():
    assert ema_decay(0) == 0.0 and ema_decay(101) == 0.0
    assert ema_decay(111) == pytest.approx(1 - 11 ** (-2 / 3))
    assert ema_decay(111) == pytest.approx(0.79782, abs=1e-5)
    # the values quoted by the method reference (section 7.4): 0.9999 is never reached
    assert ema_decay(10_001) == pytest.approx(0.99783, abs=1e-5)
    assert ema_decay(50_001) == pytest.approx(0.99926, abs=1e-5)
    assert ema_decay(100_001) == pytest.approx(0.99954, abs=1e-5)
    assert ema_decay(10**9) == 0.9999  # clamped to beta
    assert ema_decay(1000, min_value=0.999) == 0.999


class _Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))


def test_copy_phase_then_moving_average():
    online = _Scalar()
    ema = EMA(online)
    assert ema.model.w is not online.w and not ema.model.w.requires_grad and not ema.model.training
    history = []
    for t in range(131):  # the online weight is t at call t
        online.w.data.fill_(float(t))
        ema.update(online)
        history.append(ema.model.w.item())
    assert ema.step == 131
    # copies at calls 0, 10, ..., 100 only
    assert history[0] == 0.0 and history[9] == 0.0 and history[10] == 10.0 and history[100] == 100.0
    assert history[109] == 100.0
    # the first averaging call (110) copies first, as ema-pytorch's `initted` flag does, so it lands on 110
    d2, d3 = ema_decay(121), ema_decay(131)
    e1 = 110.0
    e2 = e1 - (1 - d2) * (e1 - 120.0)
    e3 = e2 - (1 - d3) * (e2 - 130.0)
    assert history[110] == pytest.approx(e1, abs=1e-12) and history[119] == pytest.approx(e1, abs=1e-12)
    assert history[120] == pytest.approx(e2, abs=1e-12)
    assert history[130] == pytest.approx(e3, abs=1e-12)
    assert ema.current_decay() == pytest.approx(ema_decay(131))


def test_float_buffers_averaged_integer_buffers_copied():
    online = nn.BatchNorm1d(2).double()
    ema = EMA(online, update_every=1, update_after_step=0)
    ema.update(online)  # call 0: copy
    ema.update(online)  # call 1: first average, preceded by a copy
    online.running_mean.fill_(1.0)
    online.num_batches_tracked.fill_(7)
    ema.update(online)  # call 2, step counter 3: decay 1 - 3^(-2/3)
    d = 1 - 3 ** (-2 / 3)
    assert ema.current_decay() == pytest.approx(d)
    assert ema.model.running_mean.tolist() == pytest.approx([1 - d, 1 - d])
    assert ema.model.num_batches_tracked.item() == 7


class _Composite(nn.Module):
    def __init__(self):
        super().__init__()
        self.image_encoder = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))
        self.image_encoder.requires_grad_(False)
        self.backbone = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)


def test_excluded_submodule_is_shared_not_copied_nor_saved():
    online = _Composite()
    online.image_encoder.train()
    ema = EMA(online, exclude_prefixes=("image_encoder.",))
    assert ema.model.image_encoder is online.image_encoder
    assert ema.model.backbone is not online.backbone and ema.model.head.weight is not online.head.weight
    assert online.image_encoder.training  # eval() of the EMA copy leaves the shared module alone
    assert not ema.model.training and not ema.model.backbone.training
    assert online.backbone.weight.requires_grad  # the online model is untouched
    state = ema.state_dict()
    assert sorted(state["model"]) == ["backbone.bias", "backbone.weight", "head.bias", "head.weight"]
    assert state["step"] == 0


def test_state_dict_round_trip_through_torch_save():
    torch.manual_seed(0)
    online = _Composite()
    ema = EMA(online, update_every=1, update_after_step=2, exclude_prefixes=("image_encoder.",))
    for _ in range(6):
        with torch.no_grad():
            online.backbone.weight.add_(0.1)
        ema.update(online)
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    restored = EMA(_Composite(), update_every=1, update_after_step=2, exclude_prefixes=("image_encoder.",))
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.step == 6 and restored.initted
    for key, value in ema.state_dict()["model"].items():
        assert torch.equal(restored.state_dict()["model"][key], value)
    assert restored.current_decay() == ema.current_decay() == pytest.approx(1 - (1 + 3) ** (-2 / 3))
    assert not math.isclose(restored.model.backbone.weight.sum().item(), online.backbone.weight.sum().item())


def test_bad_arguments_and_foreign_state():
    with pytest.raises(ValueError, match="`update_every` must be >= 1"):
        EMA(nn.Linear(2, 2), update_every=0)
    with pytest.raises(ValueError, match="`model` must be an nn.Module"):
        EMA({"w": torch.zeros(1)})
    ema = EMA(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="does not match the EMA copy"):
        ema.load_state_dict({"step": 3, "model": {"weight": torch.zeros(2, 2)}})
