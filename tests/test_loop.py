"""The training loop's pure helpers (pipeline/loop.py): the schedule and evaluation. fit itself runs
in tests/test_train.py (train-head, resume, DDP) and tests/test_finetune.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import loop
from pipeline.distributed import Distributed
from pipeline.head import Head, HeadConfig, masked_bce

pytestmark = pytest.mark.usefixtures("one_thread")      # tests/conftest.py


def test_get_lr_warms_up_then_decays_by_cosine_to_min_lr():
    lr, min_lr, warmup, total = 1e-3, 1e-4, 10, 100
    lrs = [loop.get_lr(s, warmup, total, lr, min_lr) for s in range(120)]
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup + 1]))      # rising through warmup
    assert lrs[warmup] == pytest.approx(lr)                                   # peak right after it
    assert all(a >= b for a, b in zip(lrs[warmup:total], lrs[warmup + 1:total + 1]))
    assert loop.get_lr(55, warmup, total, lr, min_lr) == pytest.approx((lr + min_lr) / 2)   # cosine midpoint
    assert lrs[total] == min_lr and lrs[-1] == min_lr
    assert loop.get_lr(0, 0, 10, lr, min_lr) == pytest.approx(lr)


def test_evaluate_model_returns_each_clips_prediction_and_the_summed_loss():
    """Per-clip probabilities in the batches' order with their indices, targets and lengths; the
    loss sum is masked_bce's over the real frames (what export reads as predictions)."""
    torch.manual_seed(0)
    head = Head(HeadConfig(input_dim=6, hidden=8)).train()
    x, target = torch.randn(5, 7, 6), torch.rand(5, 7)
    length = torch.tensor([7, 3, 5, 7, 1])
    batches = [{"inputs": x[i:i + 2], "target": target[i:i + 2], "length": length[i:i + 2],
                "index": torch.arange(i, min(5, i + 2)) + 10} for i in range(0, 5, 2)]
    out = loop.evaluate_model(head, batches, torch.device("cpu"))
    assert head.training                                    # mode restored
    with torch.no_grad():
        logits = head.eval()(x)
    assert out["index"].tolist() == [10, 11, 12, 13, 14] and out["pred"].shape == (5, 7)
    assert np.allclose(out["pred"], torch.sigmoid(logits).numpy(), atol=1e-6)
    assert np.array_equal(out["target"], target.numpy()) and out["length"].tolist() == length.tolist()
    assert out["frames"] == 23
    assert out["loss_sum"] == pytest.approx(float(masked_bce(logits, target, length, reduction="sum")), rel=1e-5)
    # one process: gathering keeps clip order
    assert loop.gather_predictions(out, Distributed())["index"].tolist() == [10, 11, 12, 13, 14]
