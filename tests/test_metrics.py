"""Tests for pipeline.metrics on envelopes shaped like the real target."""

import json
import math

import numpy as np
import pytest

from pipeline.metrics import (
    PEAK_PARAMS, SEED_RULES, baselines, derangement, evaluate, match_onsets, mean_envelope,
    onsets, per_clip, seed_table, shuffle_predictions,
)

T = 48
ONSET_KEYS = ("onset_precision", "onset_recall", "onset_f1", "onset_ap")
METRIC_KEYS = ("n", "bce", "mae", "pearson", "peak_error_frames", "peak_within_1",
               *ONSET_KEYS, *(k + "_tol2" for k in ONSET_KEYS), "onset_count_acc",
               "seed_score", "seed_counts")
# frames between bumps: a 6-frame shift then never lands within ±2 of another bump; bumps keep
# 4 frames off both ends, so np.roll's wrap-around (44 -> 2) cannot land near one either
MIN_BUMP_GAP = 9


def make_envelopes(n, seed=0, lengths=(48, 30), n_silent=0):
    """Target-like envelopes [n, T]: 1-3 Gaussian bumps (sigma ~1 frame) on a low noisy
    floor, min-max scaled to [0, 1] over the valid frames, padding 0; the last
    `n_silent` clips are all-zero (no onset). Returns (target, length, bump_frames)."""
    rng = np.random.default_rng(seed)
    target = np.zeros((n, T))
    length = np.array([lengths[i % len(lengths)] for i in range(n)], dtype=np.int64)
    bumps = []
    for i in range(n):
        L = length[i]
        if i >= n - n_silent:
            bumps.append([])
            continue
        k = rng.integers(1, 4)
        while True:
            frames = np.sort(rng.choice(np.arange(4, L - 4), size=k, replace=False))
            if k == 1 or np.diff(frames).min() >= MIN_BUMP_GAP:
                break
        t = np.arange(L)
        curve = 0.03 + 0.03 * rng.random(L)
        amps = np.concatenate([[1.0], rng.uniform(0.45, 0.9, k - 1)])
        rng.shuffle(amps)
        for f, a in zip(frames, amps):
            centre = f + rng.uniform(-0.2, 0.2)
            curve += a * np.exp(-0.5 * ((t - centre) / rng.uniform(0.7, 1.1)) ** 2)
        target[i, :L] = (curve - curve.min()) / (curve.max() - curve.min())
        bumps.append(list(frames))
    return target, length, bumps


def impulses(frames_heights):
    """One curve [T] with the given {frame: height} impulses, zero elsewhere."""
    c = np.zeros(T)
    for f, h in frames_heights.items():
        c[f] = h
    return c


# ----------------------------------------------------------------------------- acceptance

def test_generator_onsets_are_the_bumps():
    target, length, bumps = make_envelopes(60)
    for i in range(len(target)):
        frames, heights = onsets(target[i, :length[i]])
        assert list(frames) == bumps[i]
        assert heights.max() == pytest.approx(1.0)


def test_perfect_prediction_scores_one():
    target, length, _ = make_envelopes(60)
    m = evaluate(target.copy(), target, length)
    for key in ("pearson", "seed_score", "peak_within_1", "onset_count_acc", *ONSET_KEYS,
                *(k + "_tol2" for k in ONSET_KEYS)):
        assert m[key] == pytest.approx(1.0), key
    assert m["mae"] == 0 and m["peak_error_frames"] == 0
    assert m["seed_counts"] == {"good": 60, "not_so_good": 0, "bad": 0}
    assert m["n"] == 60 and m["n_flat_target"] == 0
    assert m["peak_params"] == PEAK_PARAMS


def test_six_frame_roll_is_bad():
    target, length, _ = make_envelopes(60)
    m = evaluate(np.roll(target, 6, axis=1), target, length)
    assert m["seed_score"] == -1
    assert m["onset_f1"] == 0 and m["onset_ap"] == 0
    assert m["peak_within_1"] == 0
    assert m["pearson"] < 0.2


def test_six_frame_shifted_impulses():
    target = np.stack([impulses({10: 1.0, 30: 0.6}), impulses({20: 1.0})])
    pred = np.stack([impulses({16: 0.9, 36: 0.5}), impulses({26: 0.8})])
    m = evaluate(pred, target, np.array([48, 48]))
    assert m["seed_score"] == -1 and m["onset_f1"] == 0 and m["onset_f1_tol2"] == 0


def test_flat_prediction():
    target, length, _ = make_envelopes(30)
    m = evaluate(np.full_like(target, 0.3), target, length)
    assert m["onset_recall"] == 0 and m["onset_ap"] == 0 and m["onset_f1"] == 0
    assert m["onset_precision"] == 0  # no predictions but targets exist
    assert m["n_pred_onsets"] == 0
    assert m["pearson"] == 0  # flat curve: r = 0 by definition
    assert m["seed_score"] == -1
    pc = per_clip(np.full_like(target, 0.3), target, length)
    assert (pc["pred_peak"] == 0).all()  # flat: argmax is frame 0
    assert m["peak_error_frames"] == pytest.approx(pc["target_peak"].mean())


def test_labels_give_per_class():
    target, length, _ = make_envelopes(40)
    labels = ["Hitting something with something", "Dropping something onto something"] * 20
    pred = np.roll(target, 1, axis=1)
    m = evaluate(pred, target, length, labels=labels)
    assert set(m["per_class"]) == set(labels)
    assert sum(c["n"] for c in m["per_class"].values()) == 40
    for label, c in m["per_class"].items():
        assert set(METRIC_KEYS) <= set(c)
        idx = [i for i, x in enumerate(labels) if x == label]
        sub = evaluate(pred[idx], target[idx], length[idx])
        for key in METRIC_KEYS:
            assert c[key] == pytest.approx(sub[key]), key


def test_evaluate_2000_clips_result():
    """The 2000-clip evaluation benchmarks/metrics.py times (its speed is measured there, not here):
    a one-frame late prediction + 0.05 finds every onset within the tolerance, and the numbers are
    the ones recorded when the timing moved out of this file."""
    target, length, _ = make_envelopes(2000, n_silent=100)
    pred = np.clip(np.roll(target, 1, axis=1) + 0.05, 0, 1)
    labels = [f"class{i % 12}" for i in range(2000)]
    m = evaluate(pred, target, length, labels=labels)
    assert m["n"] == 2000 and m["n_flat_target"] == 100
    assert m["n_target_onsets"] == m["n_pred_onsets"] == 3828
    for key in (*ONSET_KEYS, *(k + "_tol2" for k in ONSET_KEYS), "onset_count_acc", "peak_within_1"):
        assert m[key] == 1.0, key
    assert m["seed_counts"] == {"good": 1897, "not_so_good": 3, "bad": 100}      # the silent clips are bad
    assert m["seed_score"] == pytest.approx(0.8985)
    assert m["peak_error_frames"] == pytest.approx(0.95)
    assert m["pearson"] == pytest.approx(0.63806171739408, rel=1e-6)
    assert m["bce"] == pytest.approx(0.4132843891221521, rel=1e-6)
    assert m["mae"] == pytest.approx(0.11529931357785393, rel=1e-6)
    assert sorted(m["per_class"]) == sorted(set(labels))
    assert sum(c["n"] for c in m["per_class"].values()) == 2000
    assert sum(c["n_flat_target"] for c in m["per_class"].values()) == 100
    assert m["per_class"]["class0"]["seed_counts"] == {"good": 159, "not_so_good": 0, "bad": 8}


# ----------------------------------------------------------------------------- edge cases

def test_clips_without_target_onset():
    target, length, _ = make_envelopes(20, n_silent=5)
    m = evaluate(target.copy(), target, length)
    assert m["onset_f1"] == 1 and m["onset_ap"] == 1 and m["onset_count_acc"] == 1
    assert m["n_flat_target"] == 5
    # flat target: r = 0, so those clips are bad; the others good
    assert m["seed_counts"] == {"good": 15, "not_so_good": 0, "bad": 5}
    assert m["pearson"] == pytest.approx(15 / 20)

    # a false alarm on a silent clip costs precision only
    pred = target.copy()
    pred[-1, 10] = 0.8
    m2 = evaluate(pred, target, length)
    assert m2["onset_recall"] == 1
    assert m2["onset_precision"] == pytest.approx(m["n_pred_onsets"] / (m["n_pred_onsets"] + 1))
    assert m2["onset_ap"] < 1


def test_all_silent_set():
    target = np.zeros((3, T))
    length = np.array([48, 30, 20])
    m = evaluate(np.zeros_like(target), target, length)
    assert m["onset_precision"] == m["onset_recall"] == m["onset_f1"] == m["onset_ap"] == 1
    m = evaluate(np.stack([impulses({5: 0.9})] * 3), target, length)
    assert m["onset_precision"] == m["onset_recall"] == m["onset_f1"] == m["onset_ap"] == 0


def test_padding_is_ignored():
    target, length, _ = make_envelopes(20, lengths=(30,))
    pred = np.roll(target, 1, axis=1)
    m = evaluate(pred, target, length)
    noisy_pred, noisy_target = pred.copy(), target.copy()
    noisy_pred[:, 30:] = np.nan
    noisy_pred[:, 40] = 1.0  # a peak in the padding is no onset and no argmax
    noisy_target[:, 30:] = 5.0  # out of range, but never read
    assert evaluate(noisy_pred, noisy_target, length) == m


def test_length_shorter_cuts_peaks_off():
    target = np.stack([impulses({10: 1.0, 40: 0.9})])
    m = evaluate(target.copy(), target, np.array([30]))
    assert m["n_target_onsets"] == 1  # the impulse at 40 is padding
    assert m["onset_f1"] == 1


def test_single_clip():
    target, length, _ = make_envelopes(1)
    m = evaluate(target, target, length, labels=["x"])
    assert m["n"] == 1 and m["seed_score"] == 1 and m["per_class"]["x"]["n"] == 1
    assert set(evaluate(target, target, length, labels=[b"x"])["per_class"]) == {"x"}  # h5py bytes
    assert (shuffle_predictions(target) == target).all()  # N = 1: nothing to swap with


def test_outputs_are_plain_json():
    target, length, _ = make_envelopes(10, n_silent=2)
    m = evaluate(np.full_like(target, 0.5), target, length, labels=["a"] * 5 + ["b"] * 5)
    json.dumps(m, allow_nan=False)


def test_bad_inputs_raise():
    target, length, _ = make_envelopes(4)
    with pytest.raises(ValueError, match="logits"):
        evaluate(target * 8 - 4, target, length)
    with pytest.raises(ValueError):
        evaluate(target[:, :40], target, length)
    with pytest.raises(ValueError):
        evaluate(target, target, np.array([48, 48, 0, 48]))
    with pytest.raises(ValueError):
        evaluate(target, target, length, labels=["a"])
    with pytest.raises(ValueError, match="unknown peak_params"):
        evaluate(target, target, length, peak_params={"hieght": 0.1})


# ----------------------------------------------------------------------------- definitions

def test_bce_and_mae_pool_valid_frames():
    target = np.zeros((2, T))
    target[:, 0] = 1.0
    pred = np.full((2, T), 0.5)
    m = evaluate(pred, target, np.array([48, 10]))
    assert m["bce"] == pytest.approx(math.log(2))
    assert m["mae"] == pytest.approx((2 * 0.5 + 56 * 0.5) / 58)
    # extreme predictions are clipped at 1e-7, not infinite
    m = evaluate(1 - target, target, np.array([48, 10]))
    assert m["bce"] == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_greedy_matching_one_prediction_per_target():
    # one prediction between two targets matches only one of them
    assert list(match_onsets([11], [0.9], [10, 12], 1)) == [0]
    m = evaluate(impulses({11: 0.9})[None], impulses({10: 1.0, 12: 0.8})[None], np.array([48]))
    assert m["onset_precision"] == 1 and m["onset_recall"] == 0.5
    # two predictions near one target: the more confident claims it, the other is a false positive
    assert list(match_onsets([10, 11], [0.5, 0.9], [10], 1)) == [-1, 0]
    # greedy by confidence, not optimal assignment: the confident one takes the earlier tie
    assert list(match_onsets([11, 9], [0.9, 0.5], [10, 12], 1)) == [0, -1]
    # nearest wins over earlier
    assert list(match_onsets([12], [0.9], [10, 12], 2)) == [1]
    assert list(match_onsets([20], [0.9], [10, 12], 2)) == [-1]


def test_ap_hand_computed():
    # clip A: targets 10, 30; predictions 10 (0.9, TP), 25 (0.8, FP)
    # clip B: target 20;       predictions 20 (0.6, TP),  5 (0.7, FP)
    # ranked: TP (P=1/1), FP, FP, TP (P=2/4); AP = (1 + 0.5) / 3 targets = 0.5
    target = np.stack([impulses({10: 1.0, 30: 1.0}), impulses({20: 1.0})])
    pred = np.stack([impulses({10: 0.9, 25: 0.8}), impulses({20: 0.6, 5: 0.7})])
    m = evaluate(pred, target, np.array([48, 48]))
    assert m["onset_ap"] == pytest.approx(0.5)
    assert m["onset_precision"] == pytest.approx(0.5)
    assert m["onset_recall"] == pytest.approx(2 / 3)
    assert m["onset_f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert m["onset_count_acc"] == 0.5  # A: 2 and 2, B: 1 target, 2 predicted
    # AP does not depend on clip order
    assert evaluate(pred[::-1], target[::-1], np.array([48, 48]))["onset_ap"] == pytest.approx(0.5)


def test_ap_ties_are_one_threshold():
    # equal confidences: precision read after the whole tie, whatever the order
    target = np.stack([impulses({10: 1.0}), impulses({20: 1.0})])
    pred = np.stack([impulses({30: 0.7}), impulses({20: 0.7})])  # FP and TP tied
    for order in ([0, 1], [1, 0]):
        m = evaluate(pred[order], target[order], np.array([48, 48]))
        assert m["onset_ap"] == pytest.approx(0.5 * 1 / 2)


def test_tolerance_two_catches_two_frame_shift():
    target, length, _ = make_envelopes(30)
    m = evaluate(np.roll(target, 2, axis=1), target, length)
    assert m["onset_f1"] == 0 and m["onset_recall"] == 0
    assert m["onset_recall_tol2"] > 0.9 and m["onset_f1_tol2"] > 0.9
    assert m["onset_ap_tol2"] > 0.9


def test_seed_categories_follow_rules():
    target = np.exp(-0.5 * ((np.arange(T) - 20) / 1.0) ** 2)[None].repeat(4, 0)
    pred = np.stack([np.roll(target[0], s) for s in (1, 2, 4, 0)])
    pred[3] = np.where(np.arange(T) == 20, 1.0, 0.5)  # right peak, r high
    pc = per_clip(pred, target, np.full(4, T))
    # shift 1: r ~ 0.78 -> good; shift 2: r ~ 0.37 -> not so good; shift 4: r ~ 0 -> bad
    assert list(pc["seed_category"]) == ["good", "not_so_good", "bad", "good"]
    assert list(pc["peak_error"]) == [1, 2, 4, 0]
    assert pc["pearson"][0] >= SEED_RULES["good_min_pearson"]
    assert SEED_RULES["bad_pearson_below"] <= pc["pearson"][1] < SEED_RULES["good_min_pearson"]
    assert list(pc["seed_value"]) == [1, 0, -1, 1]


def test_seed_table_totals():
    # the seed's first row: 9 good, 5 not so good, 2 bad -> 7
    cats = ["good"] * 9 + ["not_so_good"] * 5 + ["bad"] * 2 + ["good"] * 7 + ["not_so_good"] * 2
    labels = ["Hitting"] * 16 + ["Throwing against"] * 9
    rows = seed_table(cats, labels, class_order=["Throwing against", "Hitting", "Absent"])
    assert [r["label"] for r in rows] == ["Throwing against", "Hitting", "TOTAL"]
    assert rows[1] == {"label": "Hitting", "n": 16, "good": 9, "not_so_good": 5, "bad": 2,
                       "score": 7, "mean_score": 7 / 16}
    assert rows[0]["score"] == 7
    assert rows[-1] == {"label": "TOTAL", "n": 25, "good": 16, "not_so_good": 7, "bad": 2,
                        "score": 14, "mean_score": 14 / 25}
    with pytest.raises(ValueError):
        seed_table(["great"], ["x"])


def test_seed_table_agrees_with_evaluate():
    target, length, _ = make_envelopes(40, n_silent=4)
    labels = [f"class{i % 3}" for i in range(40)]
    pred = np.roll(target, np.random.default_rng(1).integers(0, 2), axis=1)
    pred[::5] = np.roll(target[::5], 3, axis=1)
    m = evaluate(pred, target, length, labels=labels)
    rows = seed_table(per_clip(pred, target, length)["seed_category"], labels)
    for row in rows[:-1]:
        c = m["per_class"][row["label"]]
        assert row["mean_score"] == pytest.approx(c["seed_score"])
        assert {k: row[k] for k in ("good", "not_so_good", "bad")} == c["seed_counts"]
    assert rows[-1]["mean_score"] == pytest.approx(m["seed_score"])


# ----------------------------------------------------------------------------- baselines

@pytest.mark.parametrize("n", [2, 3, 7, 100])
def test_shuffle_is_derangement(n):
    for seed in range(20):
        perm = derangement(n, seed)
        assert sorted(perm) == list(range(n))
        assert not (perm == np.arange(n)).any()
    pred = np.arange(n, dtype=float)[:, None].repeat(T, 1) / n
    shuffled = shuffle_predictions(pred, seed=3)
    assert (shuffled[:, 0] != pred[:, 0]).all()
    assert sorted(shuffled[:, 0]) == sorted(pred[:, 0])
    assert (shuffle_predictions(pred, seed=3) == shuffled).all()  # seeded


def test_baselines_through_evaluate():
    train, train_len, _ = make_envelopes(80, seed=1)
    target, length, _ = make_envelopes(40, seed=2, n_silent=3)
    train_mean = mean_envelope(train, train_len)
    assert train_mean.shape == (T,)
    assert train_mean[40] == pytest.approx(train[train_len > 40, 40].mean())  # padding excluded
    model = np.clip(np.roll(target, 1, axis=1) * 0.9 + 0.05, 0, 1)
    b = baselines(target, length, train_mean, seed=0, pred=model)
    assert set(b) == {"mean_envelope", "shuffled"}
    assert (b["mean_envelope"] == train_mean).all() and b["mean_envelope"].shape == target.shape
    perm = derangement(40, 0)
    assert (b["shuffled"] == model[perm]).all()
    scores = {name: evaluate(p, target, length) for name, p in {**b, "model": model}.items()}
    for m in scores.values():
        assert set(METRIC_KEYS) <= set(m)
    assert scores["model"]["pearson"] > scores["mean_envelope"]["pearson"]
    assert scores["model"]["pearson"] > scores["shuffled"]["pearson"]
    assert scores["model"]["onset_f1"] > scores["shuffled"]["onset_f1"]
    assert scores["mean_envelope"]["onset_ap"] < 0.5
    # without pred, "shuffled" is another clip's target
    assert (baselines(target, length, train_mean)["shuffled"] == target[perm]).all()


def test_beats_baselines_is_strict_on_the_headline_pair():
    from pipeline.metrics import HEADLINE, beats_baselines
    blocks = {"model": {"seed_score": 0.5, "onset_f1": 0.4},
              "mean_envelope": {"seed_score": 0.1, "onset_f1": 0.4}, "shuffled": {"seed_score": 0.2, "onset_f1": 0.1}}
    assert HEADLINE == ("seed_score", "onset_f1")
    assert beats_baselines(blocks) == {"seed_score": True, "onset_f1": False}     # a tie does not beat
