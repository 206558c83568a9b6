"""The head network, its masked loss, and the input transforms (pipeline/head.py), on real caches."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from pipeline.errors import FoleyError
from pipeline.head import (SPLIT_INPUT_RATIO, Head, HeadConfig, InputTransform, feature_grid, frame_mask,
                           masked_bce)
from pipeline.runs import RunCheckpoint, RunDescription, load_head
from tests.cachekit import make_signal_cache

pytestmark = pytest.mark.usefixtures("one_thread")      # tests/conftest.py


# ----------------------------------------------------------------------------- network + loss

def test_head_maps_frames_to_logits():
    head = Head(HeadConfig(input_dim=7, hidden=16, layers=2, fc=(8, 4), dropout=0.1))
    x = torch.randn(3, 11, 7)
    assert head(x).shape == (3, 11)
    linear = [m for m in head.fc if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(16, 8), (8, 4), (4, 1)]
    assert head.lstm.num_layers == 2 and head.lstm.batch_first


def test_head_is_causal_so_padding_cannot_change_real_frames():
    head = Head(HeadConfig(input_dim=5, hidden=8)).eval()
    x = torch.randn(1, 10, 5)
    y = x.clone()
    y[:, 6:] = 100.0                       # change only the "padding" after frame 6
    assert torch.equal(head(x)[:, :6], head(y)[:, :6])


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_head_cpu_split_lstm_matches_the_fused_lstm(layers):
    """A wide input on CPU runs layer 0 as one GEMM + its recurrence: same outputs and gradients."""
    torch.manual_seed(0)
    head = Head(HeadConfig(input_dim=600, hidden=32, layers=layers)).eval()
    assert head.config.input_dim > SPLIT_INPUT_RATIO * head.config.hidden
    x = torch.randn(3, 9, 600)
    fused = head.fc(head.lstm(x)[0]).squeeze(-1)
    split = head(x)
    assert torch.allclose(split, fused, atol=1e-5)
    grads = []
    for out in (split, fused):
        head.zero_grad()
        out.sum().backward(retain_graph=True)
        grads.append([p.grad.clone() for p in head.parameters()])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads))


def test_head_cpu_split_lstm_under_bf16_autocast_keeps_the_recurrence_float32():
    """--amp bf16 on CPU: only the wide input GEMM is bf16; the result stays near float32's."""
    torch.manual_seed(0)
    head = Head(HeadConfig(input_dim=2048, hidden=64)).eval()
    x = torch.randn(2, 12, 2048)
    ref = head(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = head(x)
        hidden = head._lstm_split(x)            # the LSTM's output: computed in float32
    assert low.shape == ref.shape and torch.isfinite(low).all()
    err = (low.float() - ref).abs().max().item()
    assert 0 < err < 0.02 * ref.abs().max().item() + 1e-3     # bf16 rounding of one GEMM, no more
    assert hidden.dtype == torch.float32
    low.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in head.parameters())


def test_resolve_amp_auto_on_cpu_follows_the_input_width(monkeypatch):
    from pipeline import runtime

    for native in (True, False):
        monkeypatch.setattr(runtime, "cpu_has_bf16", lambda native=native: native)
        cpu = torch.device("cpu")
        assert runtime.resolve_amp("auto", cpu, wide_input=True) == ("bf16" if native else "off")
        assert runtime.resolve_amp("auto", cpu, wide_input=False) == "off"
        assert runtime.resolve_amp("off", cpu, wide_input=True) == "off"
        assert runtime.resolve_amp("bf16", cpu) == "bf16"


def test_head_config_refuses_bad_sizes():
    with pytest.raises(FoleyError, match="input"):
        HeadConfig(input_dim=4, input="pixels")
    with pytest.raises(FoleyError, match="dropout"):
        HeadConfig(input_dim=4, dropout=1.0)
    with pytest.raises(FoleyError):
        HeadConfig(input_dim=0)


def test_masked_bce_ignores_padding():
    logits = torch.randn(2, 6, requires_grad=True)
    target = torch.rand(2, 6)
    length = torch.tensor([6, 3])
    junk_target = target.clone()
    junk_target[1, 3:] = 1.0
    loss = masked_bce(logits, target, length)
    assert torch.allclose(loss, masked_bce(logits, junk_target, length))
    valid = frame_mask(length, 6)
    manual = torch.nn.functional.binary_cross_entropy_with_logits(logits[valid], target[valid])
    assert torch.allclose(loss, manual)                       # frame-weighted mean over real frames
    loss.backward()
    assert torch.all(logits.grad[1, 3:] == 0) and torch.all(logits.grad[1, :3] != 0)
    assert torch.allclose(masked_bce(logits, target, length, reduction="sum"), manual * valid.sum())


# ----------------------------------------------------------------------------- transforms

def test_features_transform_standardises_with_train_statistics_only(tmp_path):
    train = make_signal_cache(tmp_path / "train", 12, seed=1)
    val = make_signal_cache(tmp_path / "val", 6, seed=2)
    t = InputTransform("features", train.dim).fit(train)
    x = torch.from_numpy(train.read_many(range(len(train)))["features"])
    length = torch.from_numpy(train.lengths.astype(np.int64))
    real = t(x)[frame_mask(length, x.shape[1])]
    assert real.dtype == torch.float32
    # Padding holds 1e3: if it leaked into the statistics, the real frames would be far from 0 / 1.
    assert real.mean(0).abs().max() < 1e-4
    assert (real.std(0, unbiased=False) - 1).abs().max() < 1e-3
    # Fitting on the val cache gives other numbers: the run must use the train ones.
    t_val = InputTransform("features", val.dim).fit(val)
    assert not torch.allclose(t.mean, t_val.mean)


def test_transform_fits_the_same_from_cache_and_from_memory(tmp_path):
    cache = make_signal_cache(tmp_path / "c", 10, seed=3)
    a = InputTransform("features", cache.dim).fit(cache)
    data = cache.read_many(range(len(cache)))
    b = InputTransform("features", cache.dim).fit(
        (torch.from_numpy(data["features"]), torch.from_numpy(data["length"].astype(np.int64))))
    assert torch.allclose(a.mean, b.mean, atol=1e-6) and torch.allclose(a.std, b.std, atol=1e-6)


def _motion_reference(x: np.ndarray, mean, std, channels: int, side: int) -> np.ndarray:
    """docs/learning.md's motion energy by hand, for a grid small enough that each cell is one position."""
    z = (x - mean) / std
    d = np.zeros_like(z)
    d[:, 1:] = z[:, 1:] - z[:, :-1]
    sq = d.reshape(*d.shape[:2], channels, side * side) ** 2
    cells = np.sqrt(sq.mean(2))                                 # RMS over channels per position
    total = np.sqrt(sq.mean((2, 3)))[..., None]                  # over everything
    return np.log1p(np.concatenate([cells, total], -1))


def test_motion_energy_shapes_values_and_train_statistics(tmp_path):
    config = {"backbone": "model3d_1", "purpose": "tests"}
    dim = 512 * 2 * 2                                           # a 64x64 model3d_1 cache: 2x2 grid
    train = make_signal_cache(tmp_path / "train", 8, seed=4, dim=dim, frames=12, config=config)
    val = make_signal_cache(tmp_path / "val", 4, seed=5, dim=dim, frames=12, config=config)
    assert feature_grid(dim, train.config) == (512, 2, 2)
    t = InputTransform("motion-energy", dim, cache_config=train.config).fit(train)
    assert (t.cells, t.out_dim) == (2, 5)                       # 2x2 cells + global (4x4 + 1 = 17 at 224)
    x = torch.from_numpy(train.read_many(range(len(train)))["features"])
    y = t(x)
    assert y.shape == (8, 12, 5) and y.dtype == torch.float32
    # Values: the hand-written reference, then the standardisation fitted on the train cache.
    ref = _motion_reference(x.float().numpy(), t.mean.numpy(), t.std.numpy(), 512, 2)
    expect = (ref - t.out_mean.numpy()) / t.out_std.numpy()
    assert np.allclose(y.numpy(), expect, atol=1e-4)
    length = torch.from_numpy(train.lengths.astype(np.int64))
    real = y[frame_mask(length, 12)]
    assert real.mean(0).abs().max() < 1e-4 and (real.std(0, unbiased=False) - 1).abs().max() < 1e-3
    t_val = InputTransform("motion-energy", dim, cache_config=val.config).fit(val)
    assert not torch.allclose(t.out_mean, t_val.out_mean)       # statistics depend on the fitting cache


def test_motion_energy_at_224_gives_17_values():
    t = InputTransform("motion-energy", 512 * 7 * 7, cache_config={"backbone": "model3d_1"})
    assert (t.h, t.w, t.cells, t.out_dim) == (7, 7, 4, 17)
    assert t(torch.randn(2, 3, 512 * 49, dtype=torch.float16)).shape == (2, 3, 17)


def test_motion_energy_refuses_features_without_a_grid():
    with pytest.raises(FoleyError, match="motion-energy"):
        InputTransform("motion-energy", 100)


def test_transform_state_roundtrips_through_weights_only(tmp_path):
    t = InputTransform("motion-energy", 2048, cache_config={"backbone": "model3d_1"})
    t.fit((torch.randn(3, 6, 2048), torch.tensor([6, 4, 5])))
    buf = io.BytesIO()
    torch.save(t.state_dict(), buf)
    buf.seek(0)
    t2 = InputTransform.from_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(2, 6, 2048)
    assert t2.kind == "motion-energy" and t2.fitted and torch.equal(t2(x), t(x))


def test_load_head_rebuilds_a_saved_head(tmp_path):
    head = Head(HeadConfig(input_dim=6, hidden=8)).eval()
    t = InputTransform("features", 6).fit((torch.randn(2, 4, 6), torch.tensor([4, 4])))
    description = RunDescription(kind="train-head", head_config=head.config.to_dict(), transform=t.state_dict(),
                                 fingerprint="abc")
    checkpoint = lambda model: RunCheckpoint(description, model, optimizer={}, scaler={}, epoch=1, step=1,  # noqa: E731
                                             val_loss=0.5, metrics={}, best_val_loss=0.5, best_epoch=1, bad_epochs=0)
    checkpoint(head.state_dict()).write(tmp_path / "ckpt.pt")
    head2, t2, ckpt = load_head(tmp_path / "ckpt.pt")
    x = torch.randn(1, 4, 6)
    assert torch.equal(head2(t2(x)), head(t(x))) and ckpt.description.fingerprint == "abc"
    # A bigger model (finetune) stores its head under `head.`: load_head takes that part.
    bigger = {f"head.{k}": v for k, v in head.state_dict().items()} | {"backbone.w": torch.zeros(1)}
    checkpoint(bigger).write(tmp_path / "big.pt")
    head3, _, _ = load_head(tmp_path / "big.pt")
    assert torch.equal(head3(x), head(x))
    with pytest.raises(FoleyError, match="no checkpoint"):
        load_head(tmp_path / "missing.pt")


def test_centered_features_drop_what_stays_the_same_in_a_clip():
    torch.manual_seed(0)
    x = torch.randn(3, 8, 6)
    offset = torch.randn(3, 1, 6) * 5                    # a per-clip look: constant through the clip
    t = InputTransform("features", 6, center=True).fit((x + offset, torch.tensor([8, 8, 8])))
    assert torch.allclose(t(x + offset), t(x), atol=1e-5)
    assert torch.allclose(t(x).mean((0, 1)), torch.zeros(6), atol=1e-5)     # standardised after centring
    plain = InputTransform("features", 6).fit((x + offset, torch.tensor([8, 8, 8])))
    assert not torch.allclose(plain(x + offset), plain(x), atol=1e-2)
    t2 = InputTransform.from_state_dict(t.state_dict())
    assert t2.center and torch.equal(t2(x), t(x))
    with pytest.raises(FoleyError, match="input transform state"):
        plain.load_state_dict(t.state_dict())               # a centred head never reads uncentred inputs
    with pytest.raises(FoleyError, match="--center-clips"):
        InputTransform("motion-energy", 2048, cache_config={"backbone": "model3d_1"}, center=True)
