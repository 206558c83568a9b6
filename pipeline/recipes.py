"""`foleycache compare-heads`: which head recipe finds the moment of a sound, measured over seeds.

    compare_heads(train_cache=..., val_cache=..., evals={"same-look": DIR, ...}, out=OUT, seeds=3)

Every variant (RECIPES: a name → train-head options) is trained with `train_head` on the same
train cache, once per seed, and its LAST checkpoint (no choice made on any clip it is scored on) is
scored on every evaluation cache with the functions export uses (`score.predict`,
`score.score_predictions`): the model next to both baselines. OUT gets

    runs/{variant}-seed{k}/       the train-head runs (a re-run skips the finished ones)
    rows.jsonl                    one line per (variant, seed, evaluation set): the metrics of SCORED
    compare-heads.md / .json      mean ± standard error per variant and set, the baselines, and the
                                  paired differences (same seed) against the REFERENCE recipe

The reference is the seed's head: its causal LSTM 2 x 512 + FC on centred features. Choose a recipe
on evaluation sets made for choosing (other seeds, looks and sounds than the ones you report), then
report on held-out sets: a table computed on the clips that chose the recipe flatters it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from pipeline.errors import FoleyError
from pipeline.fsio import atomic_write_json, atomic_write_text, read_jsonl
from pipeline.metrics import BASELINES

SCORED = ("seed_score", "onset_f1", "onset_ap", "onset_count_acc", "pearson")
REFERENCE = "seed-lstm"
DEFAULT_RECIPE = "conv-bilstm+onset0.3+ema+slope"  # what train-head's defaults are (pipeline.options.TrainOptions)
# What every recipe shares: the demo's budget (8 epochs of 8-clip batches) on centred features, and
# no onset or slope term, time shift, dropout or weight averaging unless the recipe names one. Every
# option a recipe varies is spelled out here, so a recipe means the same whatever train-head's
# defaults are.
COMMON = {"epochs": 8, "batch_size": 8, "lr": 1e-3, "center_clips": True, "onset_weight": 0.0, "slope_weight": 0.0,
          "time_shift": 0, "dropout": 0.0, "ema_decay": 0.0}
CONV_BILSTM = {"temporal": "conv-bilstm", "hidden": 128, "conv_channels": 256}
RECIPES = {
    "seed-lstm": {"temporal": "lstm", "hidden": 512},
    "bilstm": {"temporal": "bilstm", "hidden": 256},
    "conv-bilstm": CONV_BILSTM,
    "conv-bilstm+onset": {**CONV_BILSTM, "onset_weight": 1.0},
    "conv-bilstm+onset0.3": {**CONV_BILSTM, "onset_weight": 0.3},
    "conv-bilstm+onset0.3+ema": {**CONV_BILSTM, "onset_weight": 0.3, "ema_decay": 0.993},
    "conv-bilstm+onset0.3+ema+slope": {**CONV_BILSTM, "onset_weight": 0.3, "ema_decay": 0.993, "slope_weight": 3.0},
    "conv-bilstm+shift": {**CONV_BILSTM, "time_shift": 6},
    "conv-bilstm+onset+shift": {**CONV_BILSTM, "onset_weight": 1.0, "time_shift": 6},
    "conv-bilstm+onset+dropout": {**CONV_BILSTM, "onset_weight": 1.0, "dropout": 0.3},
}


def recipe_options(name: str) -> dict:
    """train-head keyword options of recipe `name` (COMMON + its own)."""
    if name not in RECIPES:
        raise FoleyError(f"unknown recipe {name!r}; choose from: {', '.join(RECIPES)}")
    return {**COMMON, **RECIPES[name]}


def _finished(run: Path, epochs: int) -> bool:
    from pipeline.runs import CKPT_LAST, read_metrics

    return len(read_metrics(run)) >= epochs and (run / CKPT_LAST).is_file()


def score_run(run: Path, evals: dict[str, Path], device) -> dict[str, dict]:
    """{set: {"model": metrics, "mean_envelope": ..., "shuffled": ...}} of the run's last checkpoint."""
    from pipeline.cache import FeatureCache
    from pipeline.run_features import check_cache, load_run
    from pipeline.score import predict, score_predictions

    trained = load_run(run, "last", device)
    out = {}
    for name, path in evals.items():
        cache = FeatureCache(path)
        check_cache(trained, cache)
        scores = score_predictions(trained, cache, predict(trained, cache, device))
        out[name] = {block: {k: scores.blocks[block][k] for k in SCORED} for block in ("model", *BASELINES)}
    return out


def compare_heads(*, train_cache: Path, val_cache: Path, evals: dict[str, Path], out: Path,
                  recipes: list[str] | None = None, seeds: int = 3, device: str = "cpu",
                  progress: bool = True) -> dict:
    """Train each recipe `seeds` times, score each on every evaluation cache; write OUT (module docstring).
    Returns the summary written to compare-heads.json."""
    import torch
    from tqdm import tqdm

    from pipeline.cache import FeatureCache
    from pipeline.train import train_head

    recipes = list(recipes or RECIPES)
    if REFERENCE not in recipes:
        recipes.insert(0, REFERENCE)
    for name in recipes:
        recipe_options(name)
    if seeds < 1 or not evals:
        raise FoleyError("compare-heads needs --seeds >= 1 and at least one --eval NAME=CACHE")
    for path in (train_cache, val_cache, *evals.values()):
        FeatureCache(path)                  # a missing or damaged cache is refused before OUT is touched
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = {(r["recipe"], r["seed"]): r for r in read_jsonl(rows_path)}
    jobs = [(name, seed) for name in recipes for seed in range(seeds)]
    for name, seed in tqdm(jobs, desc="recipes x seeds", unit="run", disable=not progress):
        if (name, seed) in done and set(evals) <= set(done[(name, seed)]["sets"]):
            continue
        opts = recipe_options(name)
        run = out / "runs" / f"{name}-seed{seed}"
        if not _finished(run, opts["epochs"]):
            train_head(train_cache=train_cache, val_cache=val_cache, out=run, seed=seed, preload="ram",
                       overwrite=True, progress=False, device=device, **opts)
        row = {"recipe": name, "seed": seed, "options": opts, "sets": score_run(run, evals, torch.device(device))}
        done[(name, seed)] = row
        atomic_write_text(rows_path, "".join(json.dumps(r) + "\n" for r in done.values()))
    summary = summarise(list(done.values()), recipes, list(evals), seeds)
    summary["caches"] = {"train": str(train_cache), "val": str(val_cache), **{k: str(v) for k, v in evals.items()}}
    atomic_write_json(out / "compare-heads.json", summary)
    atomic_write_text(out / "compare-heads.md", markdown(summary))
    return summary


def mean_se(values: list[float]) -> dict:
    """{"mean", "se", "n"}: the standard error of the mean (sample std / sqrt(n); 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {"mean": mean, "se": math.sqrt(var / n), "n": n}


def summarise(rows: list[dict], recipes: list[str], sets: list[str], seeds: int) -> dict:
    """Per set: per recipe mean ± se of each SCORED metric, the baselines (the reference's runs), and
    per recipe the paired difference against the reference over the seeds both have."""
    table = {}
    for s in sets:
        by = {name: {r["seed"]: r["sets"][s] for r in rows if r["recipe"] == name and s in r["sets"]}
              for name in recipes}
        ref = by[REFERENCE]
        entry = {"recipes": {}, "baselines": {}, "vs_reference": {}}
        for name in recipes:
            runs = [by[name][k] for k in sorted(by[name]) if k < seeds]
            if runs:
                entry["recipes"][name] = {m: mean_se([r["model"][m] for r in runs]) for m in SCORED}
            paired = [k for k in by[name] if k in ref and k < seeds]
            if name != REFERENCE and paired:
                entry["vs_reference"][name] = {m: mean_se([by[name][k]["model"][m] - ref[k]["model"][m] for k in paired])
                                               for m in SCORED}
        for b in BASELINES:
            if ref:
                entry["baselines"][b] = {m: mean_se([r[b][m] for r in ref.values()]) for m in SCORED}
        table[s] = entry
    return {"scored": list(SCORED), "reference": REFERENCE, "seeds": seeds, "recipes": {n: recipe_options(n) for n in recipes},
            "sets": table}


def _cell(stat: dict | None, signed: bool = False) -> str:
    if not stat:
        return "–"
    mean = f"{stat['mean']:+.3f}" if signed else f"{stat['mean']:.3f}"
    return f"{mean} ± {stat['se']:.3f}"


def markdown(summary: dict) -> str:
    """compare-heads.md: one table per evaluation set, then the paired differences."""
    scored, lines = summary["scored"], ["# Head recipes compared", ""]
    lines += [f"Each recipe trained {summary['seeds']} times (seeds 0..{summary['seeds'] - 1}) on the same train "
              "cache; its last checkpoint scored on each set. Cells: mean ± standard error over the seeds. "
              f"Differences are paired by seed against `{summary['reference']}` (the seed's causal LSTM head).", ""]
    for name, opts in summary["recipes"].items():
        lines.append(f"- `{name}`: " + ", ".join(f"{k}={v}" for k, v in opts.items()))
    for s, entry in summary["sets"].items():
        lines += ["", f"## {s}", "", "| recipe | " + " | ".join(scored) + " |", "|---" * (len(scored) + 1) + "|"]
        for name, stats in entry["recipes"].items():
            lines.append(f"| {name} | " + " | ".join(_cell(stats[m]) for m in scored) + " |")
        for name, stats in entry["baselines"].items():
            lines.append(f"| *baseline: {name}* | " + " | ".join(_cell(stats[m]) for m in scored) + " |")
        if entry["vs_reference"]:
            lines += ["", f"Paired difference against `{summary['reference']}`:", "",
                      "| recipe | " + " | ".join(scored) + " |", "|---" * (len(scored) + 1) + "|"]
            for name, stats in entry["vs_reference"].items():
                lines.append(f"| {name} | " + " | ".join(_cell(stats[m], signed=True) for m in scored) + " |")
    return "\n".join(lines) + "\n"
