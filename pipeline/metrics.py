"""Metrics for predicted loudness envelopes (docs/design.md, "Metrics").

Inputs are batches of clips: `pred` [N, T] probabilities in [0, 1] (the head's
sigmoid output), `target` [N, T] envelopes in [0, 1], `length` [N] real frames.
Every number is computed on the valid frames `[:length]` only; what lies in the
padding (even NaN) is never read.

Conventions (the places where a metric is otherwise undefined):
- Pearson r is per clip; a flat curve (std < FLAT_STD over the valid frames,
  e.g. a constant prediction or an all-zero target) has r = 0. A clip with a
  flat target is therefore always `bad` for the seed score (r < 0.2), which
  matches the seed, where "faulty recording" clips were scored bad.
- The main peak is the argmax over the valid frames; ties go to the first
  frame, so a flat curve peaks at frame 0.
- `bce` and `mae` are pooled over all valid frames of all clips (a frame-weighted
  mean, the same number as the masked training loss), not a mean of clip means.
- Onsets are the peaks of `onsets()`, the single peak picker (plots mark the
  same ones). Matching is greedy per clip: predicted onsets in decreasing
  height, each to the nearest unmatched target onset within the tolerance
  (ties in distance go to the earlier target). Onset counts are pooled over
  clips, so a clip without a target onset counts only through its false
  positives.
- Empty sets: precision with no predicted onsets is 1 if there are no target
  onsets either, else 0; recall, and AP, with no target onsets are 1 if there
  are no predicted onsets either, else 0; F1 is 0 when precision + recall is 0.
  No metric is ever NaN, so `metrics.json` stays plain JSON.
- `onset_ap`: predicted onsets of all clips ranked by height (confidence);
  AP = sum over ranks k of precision@k * TP_k / (number of target onsets).
  A missed target is never retrieved, so it caps the reachable recall, and a
  prediction without onsets has AP 0 (scikit-learn would give 1). Onsets of
  equal height form one threshold step (precision taken after the whole tie),
  so AP does not depend on the order of the clips.

This module owns every metric's definition, the peak picker, the seed's rules, the baselines and
what "beats the baselines" means; training's per-epoch validation and export both score through
`evaluate`. It works on arrays only: it must not read files, import torch or know about runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.signal import find_peaks

# Peak picking on [0, 1] envelopes at 12 fps (scipy.signal.find_peaks settings).
# - height 0.2: targets are min-max scaled per clip, so the loudest impact is 1;
#   an onset must reach a fifth of it. That drops the floor (room noise,
#   hum: typically < 0.1 after scaling) but keeps secondary bounces, and asks a
#   prediction (a sigmoid, not rescaled) to commit to at least 0.2.
# - prominence 0.15: a peak must stand 0.15 above the higher of the two valleys
#   that separate it from higher peaks. Frame-to-frame wiggles of a noisy floor
#   or of a smooth prediction are a few hundredths, so this is what keeps one
#   bump from counting as two, while a bounce that drops back to the floor
#   between hits (an impact decays within ~1-2 frames) still counts.
# - distance 2 frames (167 ms): the finest the 12 fps grid can separate (strict
#   local maxima are never adjacent, so it removes nothing). Merging is left to
#   prominence on purpose: a larger distance would silently delete real fast
#   bounces and stack-collapse impacts 2 frames apart, which ±1-frame matching
#   can still tell apart.
PEAK_PARAMS = {"height": 0.2, "prominence": 0.15, "distance": 2}

# Matching tolerances in frames: ±1 frame ≈ ±83 ms at 12 fps (the headline
# metrics, no suffix) and ±2 frames (the same metrics with the suffix "_tol2").
ONSET_TOLERANCES = {"": 1, "_tol2": 2}

# The seed's manual good (+1) / not so good (0) / bad (-1), made automatic:
# good = main peak within ±1 frame and r >= 0.5; bad = main peak more than
# 3 frames off or r < 0.2; anything else is not so good.
SEED_RULES = {
    "good_max_peak_error": 1,   # frames, inclusive
    "good_min_pearson": 0.5,    # inclusive
    "bad_peak_error_above": 3,  # frames, strictly more is bad
    "bad_pearson_below": 0.2,   # strictly less is bad
}
SEED_VALUES = {"good": 1, "not_so_good": 0, "bad": -1}

# What every metric is printed next to (see `baselines`), and the pair on which a model must beat
# both to "beat the baselines": the headline pair of docs/design.md (the seed's own score, and onsets
# within ±1 frame ≈ ±83 ms).
BASELINES = ("mean_envelope", "shuffled")
HEADLINE = ("seed_score", "onset_f1")

BCE_EPS = 1e-7     # pred clipped to [BCE_EPS, 1 - BCE_EPS] before the log
FLAT_STD = 1e-8    # a curve whose std over the valid frames is below this is flat: r = 0
RANGE_SLACK = 1e-6  # values this far outside [0, 1] are still accepted (float round-off)


# ----------------------------------------------------------------------------- onsets

def _resolve_peak_params(peak_params: dict | None) -> dict:
    """PEAK_PARAMS overridden by `peak_params`; an unknown key is an error, not ignored."""
    if peak_params is None:
        return dict(PEAK_PARAMS)
    unknown = set(peak_params) - set(PEAK_PARAMS)
    if unknown:
        raise ValueError(f"unknown peak_params {sorted(unknown)}; allowed: {sorted(PEAK_PARAMS)}")
    return {**PEAK_PARAMS, **peak_params}


def onsets(curve: np.ndarray, peak_params: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The one peak picker: onsets of an envelope, for metrics and plots alike.

    curve: [L] values in [0, 1], the valid frames of one clip only (slice off padding first).
    Returns (frames [K] int64, heights [K] float64): frame indices in increasing
    order and the curve's value there (a prediction's confidence).
    """
    curve = np.asarray(curve, dtype=np.float64)
    if curve.ndim != 1:
        raise ValueError(f"onsets() takes one curve [L], got shape {curve.shape}")
    frames, _ = find_peaks(curve, **_resolve_peak_params(peak_params))
    return frames.astype(np.int64), curve[frames]


def match_onsets(pred_frames: np.ndarray, pred_heights: np.ndarray,
                 target_frames: np.ndarray, tolerance: int) -> np.ndarray:
    """Greedy matching of one clip's onsets within ±tolerance frames.

    Predicted onsets are taken in decreasing height; each claims the nearest
    still-unmatched target onset within the tolerance (the earlier one on a tie),
    so no target is matched twice and no prediction matches two targets.
    Returns [P] int64: for each predicted onset, the index into target_frames it
    matched, or -1 (a false positive).
    """
    pred_frames = [int(f) for f in pred_frames]
    targets = [int(f) for f in target_frames]
    matched = np.full(len(pred_frames), -1, dtype=np.int64)
    if not targets:
        return matched
    taken = [False] * len(targets)
    # stable sort: equal heights are taken in frame order, so the result is deterministic
    for i in np.argsort(-np.asarray(pred_heights, dtype=np.float64), kind="stable"):
        best, best_dist = -1, tolerance + 1
        for j, t in enumerate(targets):
            dist = abs(t - pred_frames[i])
            if not taken[j] and dist < best_dist:
                best, best_dist = j, dist
        if best >= 0:
            matched[i] = best
            taken[best] = True
    return matched


# ----------------------------------------------------------------------------- per clip

def _check_inputs(pred, target, length) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """float64 copies with the padding zeroed, int64 lengths, and the valid-frame mask [N, T]."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    length = np.asarray(length)
    if pred.ndim != 2 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be [N, T]; got {pred.shape} and {target.shape}")
    n, t = pred.shape
    if n == 0:
        raise ValueError("no clips to evaluate (N = 0)")
    if length.shape != (n,) or not np.issubdtype(length.dtype, np.integer):
        raise ValueError(f"length must be [N] = [{n}] integers; got shape {length.shape}, dtype {length.dtype}")
    length = length.astype(np.int64)
    if length.min() < 1 or length.max() > t:
        raise ValueError(f"length must lie in [1, T={t}]; got min {length.min()}, max {length.max()}")
    mask = np.arange(t)[None, :] < length[:, None]
    # np.where, not multiplication: NaN * 0 is NaN and padding may hold anything
    pred = np.where(mask, pred, 0.0)
    target = np.where(mask, target, 0.0)
    for name, x in (("pred", pred), ("target", target)):
        if not np.isfinite(x).all() or x.min() < -RANGE_SLACK or x.max() > 1 + RANGE_SLACK:
            raise ValueError(f"{name} must be finite and in [0, 1] on the valid frames "
                             f"(pass probabilities, not logits); got [{np.nanmin(x)}, {np.nanmax(x)}]")
    return pred, target, length, mask


def _clip_stats(pred, target, length, peak_params: dict | None) -> dict:
    """Everything the aggregate metrics need, per clip [N] and per predicted onset [M]."""
    pred, target, length, mask = _check_inputs(pred, target, length)
    params = _resolve_peak_params(peak_params)
    n = len(length)

    p = np.clip(pred, BCE_EPS, 1 - BCE_EPS)
    bce = -(target * np.log(p) + (1 - target) * np.log(1 - p))
    bce_sum = np.where(mask, bce, 0.0).sum(1)
    abs_sum = np.where(mask, np.abs(pred - target), 0.0).sum(1)

    pc = np.where(mask, pred - pred.sum(1, keepdims=True) / length[:, None], 0.0)
    tc = np.where(mask, target - target.sum(1, keepdims=True) / length[:, None], 0.0)
    var_p, var_t = (pc * pc).sum(1), (tc * tc).sum(1)
    flat_p = var_p <= length * FLAT_STD**2
    flat_t = var_t <= length * FLAT_STD**2
    flat = flat_p | flat_t
    denom = np.sqrt(np.where(flat, 1.0, var_p * var_t))
    pearson = np.where(flat, 0.0, np.clip((pc * tc).sum(1) / denom, -1.0, 1.0))

    # argmax returns the first maximum: a flat curve peaks at frame 0
    pred_peak = np.where(mask, pred, -np.inf).argmax(1)
    target_peak = np.where(mask, target, -np.inf).argmax(1)
    peak_error = np.abs(pred_peak - target_peak)

    good = (peak_error <= SEED_RULES["good_max_peak_error"]) & (pearson >= SEED_RULES["good_min_pearson"])
    bad = (peak_error > SEED_RULES["bad_peak_error_above"]) | (pearson < SEED_RULES["bad_pearson_below"])
    seed_value = np.where(good, 1, np.where(bad, -1, 0))

    n_target = np.zeros(n, dtype=np.int64)
    n_pred = np.zeros(n, dtype=np.int64)
    tp = {suffix: np.zeros(n, dtype=np.int64) for suffix in ONSET_TOLERANCES}
    onset_clip, onset_height = [], []
    onset_tp = {suffix: [] for suffix in ONSET_TOLERANCES}
    for i in range(n):
        t_frames, _ = onsets(target[i, :length[i]], params)
        p_frames, p_heights = onsets(pred[i, :length[i]], params)
        n_target[i], n_pred[i] = len(t_frames), len(p_frames)
        onset_clip.append(np.full(len(p_frames), i, dtype=np.int64))
        onset_height.append(p_heights)
        for suffix, tol in ONSET_TOLERANCES.items():
            hit = match_onsets(p_frames, p_heights, t_frames, tol) >= 0
            tp[suffix][i] = hit.sum()
            onset_tp[suffix].append(hit)

    return {
        "length": length, "bce_sum": bce_sum, "abs_sum": abs_sum,
        "bce": bce_sum / length, "mae": abs_sum / length,
        "pearson": pearson, "flat_target": flat_t,
        "pred_peak": pred_peak, "target_peak": target_peak, "peak_error": peak_error,
        "seed_value": seed_value,
        "n_target_onsets": n_target, "n_pred_onsets": n_pred, "tp": tp,
        "onset_clip": np.concatenate(onset_clip),
        "onset_height": np.concatenate(onset_height),
        "onset_tp": {s: np.concatenate(v) for s, v in onset_tp.items()},
        "peak_params": params,
    }


def _label_strings(labels: Sequence) -> list[str]:
    """Labels as str; bytes (what h5py returns for string datasets) are decoded as UTF-8."""
    return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in labels]


def _categories(seed_value: np.ndarray) -> np.ndarray:
    names = {v: k for k, v in SEED_VALUES.items()}
    return np.array([names[int(v)] for v in seed_value], dtype="<U11")


def per_clip(pred, target, length, peak_params: dict | None = None) -> dict[str, np.ndarray]:
    """Per-clip metrics, each an array [N] (for predictions.csv, plots and seed_table).

    pred, target: [N, T] in [0, 1]; length: [N] valid frames.
    Keys: pearson, peak_error (frames, |argmax pred - argmax target|), pred_peak,
    target_peak (frames), seed_category ("good" / "not_so_good" / "bad"),
    seed_value (+1 / 0 / -1), n_target_onsets, n_pred_onsets, bce, mae (means
    over the clip's valid frames).
    """
    s = _clip_stats(pred, target, length, peak_params)
    out = {k: s[k] for k in ("pearson", "peak_error", "pred_peak", "target_peak", "seed_value",
                             "n_target_onsets", "n_pred_onsets", "bce", "mae")}
    out["seed_category"] = _categories(s["seed_value"])
    return out


# ----------------------------------------------------------------------------- aggregate

def _ratio(num: float, den: float, empty: float) -> float:
    return float(num / den) if den > 0 else empty


def _average_precision(heights: np.ndarray, hit: np.ndarray, n_target: int) -> float:
    """AP over predicted onsets ranked by height; misses cap the recall (see module docstring)."""
    if n_target == 0:
        return 1.0 if len(heights) == 0 else 0.0
    if len(heights) == 0:
        return 0.0
    order = np.argsort(-heights, kind="stable")
    h, hit = heights[order], hit[order].astype(np.float64)
    cum_tp = np.cumsum(hit)
    # one threshold step per distinct height: precision is read at the end of each tie group
    group_end = np.append(h[1:] != h[:-1], True)
    ends = np.flatnonzero(group_end)
    precision = cum_tp[ends] / (ends + 1)
    tp_in_group = np.diff(np.concatenate([[0.0], cum_tp[ends]]))
    return float((precision * tp_in_group).sum() / n_target)


def _summarise(s: dict, idx: np.ndarray) -> dict:
    """The named metrics over the clips `idx` of the statistics `s` from _clip_stats."""
    in_set = np.zeros(len(s["length"]), dtype=bool)
    in_set[idx] = True
    onset_in = in_set[s["onset_clip"]]
    n_frames = s["length"][idx].sum()
    n_t = int(s["n_target_onsets"][idx].sum())
    n_p = int(s["n_pred_onsets"][idx].sum())
    seed_value = s["seed_value"][idx]

    out = {
        "n": int(len(idx)),
        "bce": float(s["bce_sum"][idx].sum() / n_frames),
        "mae": float(s["abs_sum"][idx].sum() / n_frames),
        "pearson": float(s["pearson"][idx].mean()),
        "peak_error_frames": float(s["peak_error"][idx].mean()),
        "peak_within_1": float((s["peak_error"][idx] <= 1).mean()),
    }
    for suffix in ONSET_TOLERANCES:
        tp = int(s["tp"][suffix][idx].sum())
        precision = _ratio(tp, n_p, 1.0 if n_t == 0 else 0.0)
        recall = _ratio(tp, n_t, 1.0 if n_p == 0 else 0.0)
        out[f"onset_precision{suffix}"] = precision
        out[f"onset_recall{suffix}"] = recall
        out[f"onset_f1{suffix}"] = _ratio(2 * precision * recall, precision + recall, 0.0)
        out[f"onset_ap{suffix}"] = _average_precision(
            s["onset_height"][onset_in], s["onset_tp"][suffix][onset_in], n_t)
    out["onset_count_acc"] = float((s["n_target_onsets"][idx] == s["n_pred_onsets"][idx]).mean())
    out["n_target_onsets"] = n_t
    out["n_pred_onsets"] = n_p
    out["seed_score"] = float(seed_value.mean())
    out["seed_counts"] = {k: int((seed_value == v).sum()) for k, v in SEED_VALUES.items()}
    out["n_flat_target"] = int(s["flat_target"][idx].sum())
    return out


def evaluate(pred, target, length, labels: Sequence[str] | None = None,
             peak_params: dict | None = None) -> dict:
    """All metrics of docs/design.md, "Metrics", over a set of clips.

    pred: [N, T] probabilities in [0, 1] (sigmoid output, not logits).
    target: [N, T] envelopes in [0, 1]. length: [N] int, valid frames (1..T).
    labels: [N] class names; adds `per_class` {label: {same metrics}}.
    peak_params: overrides of PEAK_PARAMS for `onsets()`.

    Returns a JSON-ready dict: n, bce, mae, pearson, peak_error_frames,
    peak_within_1, onset_precision, onset_recall, onset_f1, onset_ap (±1 frame),
    the same four with suffix `_tol2` (±2 frames), onset_count_acc,
    n_target_onsets, n_pred_onsets (pooled counts), seed_score (mean of
    +1/0/-1), seed_counts {good, not_so_good, bad}, n_flat_target (clips whose
    target is flat, r = 0 and so `bad`), peak_params (the settings used),
    onset_tolerances {suffix: frames}, seed_rules, and per_class with labels.
    """
    s = _clip_stats(pred, target, length, peak_params)
    n = len(s["length"])
    out = _summarise(s, np.arange(n))
    out["peak_params"] = dict(s["peak_params"])
    out["onset_tolerances"] = dict(ONSET_TOLERANCES)
    out["seed_rules"] = dict(SEED_RULES)
    if labels is not None:
        labels = np.asarray(_label_strings(labels))
        if labels.shape != (n,):
            raise ValueError(f"labels must have one entry per clip ({n}); got {labels.shape[0]}")
        out["per_class"] = {str(label): _summarise(s, np.flatnonzero(labels == label))
                            for label in sorted(set(labels.tolist()))}
    return out


# ----------------------------------------------------------------------------- seed table

def seed_table(per_clip_categories: Sequence[str], labels: Sequence[str],
               class_order: Sequence[str] | None = None) -> list[dict]:
    """The seed's table: one row per class, then a "TOTAL" row.

    per_clip_categories: [N] "good" / "not_so_good" / "bad" (per_clip()["seed_category"]).
    labels: [N] class names. class_order: classes to list first, in this order
    (e.g. the 12 sound templates, so the table reads like the seed's); the rest
    follow alphabetically, and listed classes without clips are left out.
    Row: {label, n, good, not_so_good, bad, score, mean_score} with
    score = good - bad (the seed's 9(1) + 5(0) + 2(-1) = 7) and mean_score = score / n.
    """
    cats = _label_strings(per_clip_categories)
    labels = _label_strings(labels)
    if len(cats) != len(labels):
        raise ValueError(f"{len(cats)} categories but {len(labels)} labels")
    unknown = set(cats) - set(SEED_VALUES)
    if unknown:
        raise ValueError(f"unknown seed categories {sorted(unknown)}; allowed: {list(SEED_VALUES)}")
    present = set(labels)
    first = [c for c in dict.fromkeys(class_order or []) if c in present]
    order = first + sorted(present - set(first))

    def row(label: str, chosen: list[str]) -> dict:
        counts = {k: chosen.count(k) for k in SEED_VALUES}
        score = counts["good"] - counts["bad"]
        n = len(chosen)
        return {"label": label, "n": n, **counts, "score": score,
                "mean_score": score / n if n else 0.0}

    rows = [row(label, [c for c, x in zip(cats, labels) if x == label]) for label in order]
    rows.append(row("TOTAL", cats))
    return rows


# ----------------------------------------------------------------------------- baselines

def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A uniformly random permutation [n] with no fixed point (identity for n = 1)."""
    if n < 1:
        raise ValueError(f"need at least one clip, got n = {n}")
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    rng = np.random.default_rng(seed)
    # rejection sampling: about 1/e of permutations are derangements, so ~2.7 draws
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


def shuffle_predictions(pred, seed: int = 0) -> np.ndarray:
    """Each clip gets another clip's prediction: rows of `pred` [N, T] permuted by a
    derangement, so no clip keeps its own row when N > 1 (N = 1 is returned as is).
    A row is used whole: where the donor clip was shorter, the receiver sees the
    donor's padding frames (prediction on padding, or target 0)."""
    pred = np.asarray(pred)
    return pred[derangement(len(pred), seed)].copy()


def mean_envelope(target, length) -> np.ndarray:
    """Per-frame mean of the valid frames of `target` [N, T] (e.g. the train cache's
    envelopes): [T] float64; a frame no clip reaches gets 0 (the padding value)."""
    target = np.asarray(target, dtype=np.float64)
    mask = np.arange(target.shape[1])[None, :] < np.asarray(length)[:, None]
    count = mask.sum(0)
    total = np.where(mask, target, 0.0).sum(0)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def baselines(target, length, train_mean, seed: int = 0, pred=None) -> dict[str, np.ndarray]:
    """The two baselines every metric is printed next to, as predictions [N, T].

    target: [N, T]; length: [N]; train_mean: [T] (mean_envelope() of the train set).
    - mean_envelope: train_mean for every clip.
    - shuffled: another clip's prediction, shuffle_predictions(pred, seed); docs/design.md's
      baseline, so pass the model's `pred` [N, T]. Without `pred` it is another
      clip's *target* (an envelope of the right shape at the wrong time).
    Evaluate each with evaluate(baseline, target, length, ...), exactly like the model.
    """
    target = np.asarray(target, dtype=np.float64)
    train_mean = np.asarray(train_mean, dtype=np.float64)
    if target.ndim != 2 or np.shape(length) != (target.shape[0],):
        raise ValueError(f"target must be [N, T] and length [N]; got {target.shape} and {np.shape(length)}")
    if train_mean.shape != (target.shape[1],):
        raise ValueError(f"train_mean must be [T] = [{target.shape[1]}]; got {train_mean.shape}")
    if pred is not None and np.shape(pred) != target.shape:
        raise ValueError(f"pred must be [N, T] = {list(target.shape)}; got {list(np.shape(pred))}")
    source = target if pred is None else np.asarray(pred, dtype=np.float64)
    return {
        "mean_envelope": np.broadcast_to(train_mean, target.shape).copy(),
        "shuffled": shuffle_predictions(source, seed),
    }


def beats_baselines(blocks: dict, metrics: Sequence[str] = HEADLINE) -> dict[str, bool]:
    """For each headline metric: is blocks["model"] strictly better than every baseline block present?"""
    return {m: all(blocks["model"][m] > blocks[b][m] for b in BASELINES if b in blocks) for m in metrics}
