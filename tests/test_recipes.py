"""Head recipes: the temporal layers, the onset term, time shifts, old runs, and compare-heads (pipeline/head.py,
pipeline/train.py, pipeline/recipes.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import FoleyError
from pipeline.head import Head, HeadConfig, HeadLoss, masked_bce, onset_bce, onset_frames, rebuild_head, slope_mse
from pipeline.options import TEMPORALS, TrainOptions
from pipeline.train import TimeShift
from tests.cachekit import make_signal_cache

pytestmark = pytest.mark.usefixtures("one_thread")      # tests/conftest.py


@pytest.mark.parametrize("temporal", TEMPORALS)
def test_padding_never_changes_the_outputs_on_real_frames(temporal):
    torch.manual_seed(0)
    head = Head(HeadConfig(input_dim=6, hidden=8, temporal=temporal, conv_channels=10)).eval()
    x, length = torch.randn(3, 16, 6), torch.tensor([16, 11, 5])
    other = x.clone()
    other[1, 11:], other[2, 5:] = 100.0, -7.0            # only the padding differs
    a, b = head(x, length), head(other, length)
    for i, n in enumerate(length.tolist()):
        assert torch.allclose(a[i, :n], b[i, :n], atol=1e-6)
    # and a clip scored alone, without any padding, gets the same outputs
    alone = head(x[1:2, :11], torch.tensor([11]))
    assert torch.allclose(a[1, :11], alone[0], atol=1e-5)


def test_bidirectional_heads_read_what_follows_a_frame():
    torch.manual_seed(0)
    for temporal in ("bilstm", "conv-bilstm"):
        head = Head(HeadConfig(input_dim=4, hidden=8, temporal=temporal, conv_channels=8)).eval()
        x = torch.randn(1, 12, 4)
        later = x.clone()
        later[:, 9:] += 3.0                  # a change after frame 8 reaches frame 2
        assert not torch.allclose(head(x)[:, :3], head(later)[:, :3])


def test_a_checkpoint_without_a_temporal_entry_rebuilds_the_seeds_causal_lstm():
    old = Head(HeadConfig(input_dim=5, hidden=8))
    config = {k: v for k, v in HeadConfig(input_dim=5, hidden=8).to_dict().items()
              if k not in ("temporal", "conv_channels", "conv_kernels")}      # what earlier runs recorded
    from pipeline.head import InputTransform
    head, _ = rebuild_head(config, old.state_dict(), InputTransform("features", 5).state_dict())
    assert head.config.temporal == "lstm" and not head.lstm.bidirectional
    x = torch.randn(2, 7, 5)
    assert torch.equal(head(x), old(x))


def test_head_config_refuses_an_unknown_temporal_layer_and_even_kernels():
    with pytest.raises(FoleyError, match="unknown --temporal 'gru'"):
        HeadConfig(input_dim=4, temporal="gru")
    with pytest.raises(FoleyError, match="odd"):
        HeadConfig(input_dim=4, temporal="conv-bilstm", conv_kernels=(4,))


def test_onset_frames_are_the_metrics_peaks_widened_by_the_tolerance():
    target = torch.zeros(1, 12)
    target[0, 5] = 1.0
    marks = onset_frames(target, torch.tensor([12]), tolerance=1)
    assert marks[0].nonzero().flatten().tolist() == [4, 5, 6]
    assert not onset_frames(target, torch.tensor([4]))[0].any()     # the peak lies in the padding


def test_onset_term_rewards_a_peak_at_the_onset_and_ignores_the_padding():
    target, length = torch.zeros(1, 12), torch.tensor([10])
    target[0, 5] = 1.0
    low = torch.full((1, 12), -4.0)
    peaked = low.clone()
    peaked[0, 6] = 4.0                        # one frame late: inside the tolerance
    assert onset_bce(peaked, target, length) < onset_bce(low, target, length)
    padded = peaked.clone()
    padded[0, 10:] = 50.0
    assert torch.equal(onset_bce(padded, target, length), onset_bce(peaked, target, length))
    assert torch.equal(HeadLoss(0.0)(peaked, target, length), masked_bce(peaked, target, length))


def test_slope_term_prices_a_blurred_dip_between_two_impacts_and_ignores_the_padding():
    # two impacts 2 frames apart with a dip between them: a prediction that follows the dip costs
    # far less than one that blurs both impacts into a single bump
    target, length = torch.zeros(1, 10), torch.tensor([8])
    target[0, 3], target[0, 4], target[0, 5] = 1.0, 0.3, 0.7
    follows = torch.logit(target.clamp(0.02, 0.98))
    blurred = torch.logit(torch.tensor([[0.02, 0.02, 0.02, 0.75, 0.65, 0.6, 0.02, 0.02, 0.02, 0.02]]))
    assert slope_mse(follows, target, length) < slope_mse(blurred, target, length) / 5
    # a constant offset changes no slope: the term reads changes, not levels
    flat, raised = torch.full((1, 10), -3.0), torch.full((1, 10), 1.0)
    assert slope_mse(flat, torch.zeros(1, 10), length) == pytest.approx(0.0, abs=1e-12)
    assert slope_mse(raised, torch.zeros(1, 10), length) == pytest.approx(0.0, abs=1e-12)
    padded = follows.clone()
    padded[0, 8:] = 30.0                      # the pair (7, 8) reaches into the padding: not read
    assert torch.equal(slope_mse(padded, target, length), slope_mse(follows, target, length))
    loss = HeadLoss(0.0, 2.0)(blurred, target, length)
    assert loss == pytest.approx(float(masked_bce(blurred, target, length) + 2 * slope_mse(blurred, target, length)))
    assert torch.equal(HeadLoss(0.3, 0.0)(blurred, target, length),
                       masked_bce(blurred, target, length) + 0.3 * onset_bce(blurred, target, length))


def test_time_shift_moves_features_and_target_together_and_keeps_a_second():
    torch.manual_seed(0)
    t = 24
    batch = {"inputs": torch.arange(t, dtype=torch.float32).view(1, t, 1).repeat(4, 1, 1),
             "target": torch.arange(t, dtype=torch.float32).repeat(4, 1) / t,
             "length": torch.tensor([24, 20, 13, 12])}
    out = TimeShift(5)(batch)
    shift = batch["length"] - out["length"]
    assert ((shift >= 0) & (shift <= 5)).all() and (out["length"] >= 12).all()
    assert shift[3] == 0                      # a 12-frame clip cannot lose a frame
    for i in range(4):
        n = int(out["length"][i])
        assert torch.equal(out["inputs"][i, :n, 0], torch.arange(t)[shift[i]:shift[i] + n].float())
        assert torch.equal(out["target"][i, :n] * t, out["inputs"][i, :n, 0])


def test_resuming_a_run_that_predates_the_recipe_options_keeps_the_seeds_head():
    saved = {k: v for k, v in TrainOptions().to_dict().items()
             if k not in ("temporal", "conv_channels", "onset_weight", "time_shift", "center_clips", "ema_decay")}
    opts = TrainOptions.resolve({}, {"command": "train-head", "options": saved})
    assert (opts.temporal, opts.onset_weight, opts.time_shift, opts.center_clips, opts.ema_decay) == \
        ("lstm", 0.0, 0, False, 0.0)
    with pytest.raises(FoleyError, match="--temporal 'lstm' -> 'bilstm'"):
        TrainOptions.resolve({"temporal": "bilstm"}, {"command": "train-head", "options": saved})


def test_compare_heads_trains_each_recipe_per_seed_and_writes_mean_and_standard_error(tmp_path):
    from pipeline.recipes import REFERENCE, compare_heads

    train, val = tmp_path / "train", tmp_path / "val"
    make_signal_cache(train, n=12, seed=0)
    make_signal_cache(val, n=6, seed=1)
    out = tmp_path / "cmp"
    summary = compare_heads(train_cache=train, val_cache=val, evals={"a": val, "b": train}, out=out,
                            recipes=["conv-bilstm"], seeds=2, progress=False)
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert sorted((r["recipe"], r["seed"]) for r in rows) == sorted([(REFERENCE, 0), (REFERENCE, 1),
                                                                     ("conv-bilstm", 0), ("conv-bilstm", 1)])
    entry = summary["sets"]["a"]
    values = [r["sets"]["a"]["model"]["onset_f1"] for r in rows if r["recipe"] == "conv-bilstm"]
    stat = entry["recipes"]["conv-bilstm"]["onset_f1"]
    assert stat["n"] == 2 and stat["mean"] == pytest.approx(np.mean(values))
    assert stat["se"] == pytest.approx(np.std(values, ddof=1) / np.sqrt(2))
    assert set(entry["baselines"]) == {"mean_envelope", "shuffled"} and "conv-bilstm" in entry["vs_reference"]
    text = (out / "compare-heads.md").read_text()
    assert "## a" in text and "## b" in text and "±" in text
    # a re-run trains nothing new: every run is finished and scored
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("checkpoint-last.pt")}
    compare_heads(train_cache=train, val_cache=val, evals={"a": val, "b": train}, out=out,
                  recipes=["conv-bilstm"], seeds=2, progress=False)
    assert before == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("checkpoint-last.pt")}


def test_train_heads_defaults_are_the_default_recipe():
    from pipeline.recipes import DEFAULT_RECIPE, recipe_options

    defaults = TrainOptions().to_dict()
    assert {k: defaults[k] for k in recipe_options(DEFAULT_RECIPE)} == recipe_options(DEFAULT_RECIPE)


def _as_recorded_before_recipes(run, epochs):
    """Rewrite a causal-LSTM run's files as runs were written before the recipe options existed, by a
    command that asked for `epochs` (so a resume has epochs left to train)."""
    new_options = ("temporal", "conv_channels", "onset_weight", "time_shift", "center_clips", "preload", "ema_decay")
    config = json.loads((run / "config.json").read_text())
    config["options"] = {k: v for k, v in config["options"].items() if k not in new_options}
    config["options"]["epochs"] = epochs
    (run / "config.json").write_text(json.dumps(config))
    for name in ("checkpoint-last.pt", "checkpoint-best.pt"):
        ckpt = torch.load(run / name, weights_only=True)
        ckpt["config"]["options"] = config["options"]
        for key in ("temporal", "conv_channels", "conv_kernels"):
            ckpt["head_config"].pop(key, None)      # best may be a hard link to last
        ckpt["transform"]["_extra_state"].pop("center_frames", None)
        ckpt.pop("train_model", None)
        torch.save(ckpt, run / name)


def test_a_run_recorded_before_the_recipes_resumes_and_exports_as_the_seeds_head(tmp_path):
    from pipeline.export import export_predictions
    from pipeline.run_features import load_run
    from pipeline.train import train_head

    train, val = tmp_path / "train", tmp_path / "val"
    make_signal_cache(train, n=12, seed=0)
    make_signal_cache(val, n=6, seed=1)
    run = tmp_path / "old"
    old = dict(temporal="lstm", hidden=16, center_clips=False, onset_weight=0.0, ema_decay=0.0, batch_size=4,
               progress=False, workers=0)
    train_head(train, val, run, epochs=1, **old)
    _as_recorded_before_recipes(run, epochs=2)
    exported = export_predictions(run=run, cache=val, out=tmp_path / "x", checkpoint="last", plots=0, progress=False)
    assert json.loads(Path(exported["metrics"]).read_text())["model"]["n"] == 6
    trained = load_run(run, "last")
    assert trained.head.config.temporal == "lstm" and not trained.head.lstm.bidirectional
    assert not trained.transform.center and trained.transform.center_frames == "all"
    resumed = train_head(train, val, run, resume=True, progress=False, workers=0)
    assert resumed["epochs_run"] == 2
    options = resumed["config"]["options"]
    assert (options["temporal"], options["center_clips"], options["onset_weight"], options["hidden"],
            options["ema_decay"]) == ("lstm", False, 0.0, 16, 0.0)
    assert load_run(run, "last").head.config.temporal == "lstm"


def test_the_seeds_recipe_is_the_seeds_head_whatever_the_defaults():
    from pipeline.recipes import REFERENCE, recipe_options

    seed = recipe_options(REFERENCE)
    assert (seed["temporal"], seed["hidden"], seed["onset_weight"], seed["time_shift"], seed["dropout"],
            seed["ema_decay"]) == ("lstm", 512, 0.0, 0, 0.0, 0.0)
