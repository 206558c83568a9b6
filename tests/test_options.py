"""The training commands' options (pipeline/options.py): defaults as --help shows them, ranges, and
what a --resume may change."""
from __future__ import annotations

import pytest

from pipeline.errors import FoleyError
from pipeline.options import FinetuneOptions, TrainOptions


def test_defaults_are_the_documented_ones():
    o = TrainOptions()
    assert (o.epochs, o.batch_size, o.lr, o.weight_decay, o.warmup, o.hidden, o.layers, o.fc, o.dropout, o.input,
            o.seed, o.amp, o.early_stop, o.center_clips, o.temporal, o.conv_channels, o.onset_weight,
            o.time_shift) == (8, 8, 1e-3, 0.01, None, 128, 2, (256, 64), 0.0, "features", 0, "auto", 0, True,
                              "conv-bilstm", 256, 0.3, 0)
    shown = {name: TrainOptions.default_text(name) for name in ("epochs", "lr", "warmup", "dropout", "center_clips")}
    assert shown == {"epochs": "8", "lr": "0.001", "warmup": "5% of all steps", "dropout": "0",
                     "center_clips": "on (--input features)"}
    assert [FinetuneOptions.default_text(n) for n in ("epochs", "batch_size", "lr", "backbone_lr")] == \
        ["5", "4", "1e-4", "1e-6"]
    assert TrainOptions().to_dict()["fc"] == [256, 64]
    assert list(TrainOptions().to_dict())[:3] == ["epochs", "batch_size", "lr"]       # config.json's order
    assert TrainOptions().warmup_steps(1000) == 50 and TrainOptions(warmup=3).warmup_steps(1000) == 3
    assert TrainOptions().warmup_steps(4) == 1


@pytest.mark.parametrize("name,value,message", [
    ("epochs", 0, "--epochs must be >= 1, got 0"), ("lr", 0.0, "--lr must be > 0"),
    ("dropout", 1.0, r"--dropout must be in \[0, 1\)"), ("early_stop", -1, "--early-stop must be >= 0"),
    ("input", "pixels", "unknown --input 'pixels'; choose one of: features, motion-energy"),
    ("amp", "fp8", "unknown --amp 'fp8'")])
def test_out_of_range_options_are_one_line_errors(name, value, message):
    with pytest.raises(FoleyError, match=message):
        TrainOptions.check_given({name: value})
    TrainOptions.check_given({name: None})          # not given: nothing to check


def test_resume_keeps_the_runs_options_and_refuses_changing_one_that_matters():
    run = {"command": "train-head", "options": {**TrainOptions(lr=0.01, fc=(8,)).to_dict()}}
    o = TrainOptions.resolve({"lr": None, "early_stop": 2}, run)
    assert o.lr == 0.01 and list(o.fc) == [8] and o.early_stop == 2       # early stop may change
    assert TrainOptions.resolve({"fc": (8,)}, run).lr == 0.01            # the same value given again
    with pytest.raises(FoleyError, match=r"--resume with other training options.*--lr 0\.01 -> 0\.1"):
        TrainOptions.resolve({"lr": 0.1}, run)
    with pytest.raises(FoleyError, match="not a train-head run"):
        TrainOptions.resolve({}, {"command": "finetune", "options": {}})
    assert TrainOptions.resolve({"epochs": 3}).epochs == 3


def test_finetune_options_range_and_resume_rules():
    with pytest.raises(FoleyError, match=r"--freeze-blocks must be 0\.\.5"):
        FinetuneOptions.resolve({"freeze_blocks": 6})
    with pytest.raises(FoleyError, match="--size must be >= 32"):
        FinetuneOptions(size=16).validate()
    o = FinetuneOptions(backbone="model3d_1", size=64, pool="none", frames=12, fps=12.0, checkpoint="none")
    assert o.changed_from(o.to_dict()) == [] and o.changed_from({**o.to_dict(), "lr": 1.0, "other": 1}) == ["lr"]
