"""pretrain-compare: does predicting the sound make better video features? (the seed experiment's question)

For each seed of `seeds` and each arm (no auxiliary loss; `--aux-envelope W`), one command runs:

    pretrain (the same recipe, the arm's loss)  ─► RUN/backbone.pth.tar
    extract-features with it, train and held-out clips  ─► two caches
    train-head: the seed's head (LSTM + FC on the features), seeded  ─► a head run
    export-predictions on the HELD-OUT cache only  ─► seed_score, onset_f1, pearson vs mean_envelope / shuffled

and writes OUT/compare.json and OUT/compare.md: per arm, the pretrain's validation top-1 / top-5 and the
heads' envelope metrics as mean ± sample std over seeds (with min..max), both baselines the same way,
and the per-seed difference aux - no-aux (paired: same seed, same clips, same init). Everything is
the pipeline's own API (pretrain, extract_features, train_head, export_predictions), nothing is
re-implemented here. The held-out clips are never trained on and never select a model: pretrain
exports its last epoch, and the heads are scored with their last epoch (checkpoint "last"), not
train-head's best one (which its validation loss, on these same clips, would pick).

Every stage is skipped when its output is complete and resumed when it is not, so re-running the
same command after a kill continues. Decoded frames are shared by all pretrain runs (OUT/frames).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from pipeline.errors import FoleyError
from pipeline.fsio import atomic_write_json, atomic_write_text
from pipeline.options import COMPARE_DEFAULTS, PRETRAIN_DEFAULTS

ARMS = ("no_aux", "aux")
METRICS = ("seed_score", "onset_f1", "pearson", "peak_within_1")     # from export-predictions' metrics.json
BLOCKS = ("model", "mean_envelope", "shuffled")
# Default cost (300 train clips, 32 px, float32, quiet 2-core CPU): 6 pretrain runs x 8 epochs x ~25 s,
# + 6 x 2 extractions and 6 heads: ~30 min.
DEFAULTS = COMPARE_DEFAULTS
AT_CHANCE = 1.5                 # a val top-1 below this x chance is read as "did not learn the classes"
COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"


def _stat(values: list[float]) -> dict:
    """mean, sample std (ddof 1; 0 for one value), min, max, n of finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if not len(v):
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def _fmt(s: dict, digits: int = 3) -> str:
    if s["mean"] is None:
        return "n/a"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} ({s['min']:.{digits}f}..{s['max']:.{digits}f})"


def _pretrain_done(run: Path, epochs: int) -> bool:
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    return (run / "backbone.pth.tar").is_file() and len(lines) >= epochs


def _run_arm(out: Path, seed: int, arm: str, settings: dict, manifests: dict, data: dict, *, device: str,
             threads: int | None, progress: bool) -> dict:
    """One seed of one arm, each step skipped when a re-run finds it done: pretrain, features of the
    train and held-out clips with its backbone, the seed's head, its scores. Returns the arm's row."""
    from pipeline.export import export_predictions
    from pipeline.extract import extract_features
    from pipeline.pretrain import pretrain
    from pipeline.train import train_head

    recipe, head_epochs = settings["recipe"], settings["head_epochs"]
    run, caches, head, score = (out / d / f"{arm}-seed{seed}" for d in ("runs", "caches", "heads", "scores"))
    # 1. pretrain (resumed when a killed run left its config)
    if not _pretrain_done(run, recipe["epochs"]):
        pretrain(annotations=manifests["train"], val_annotations=manifests["val"], out=run, seed=seed,
                 aux_envelope=settings["aux_weight"] if arm == "aux" else None, frame_cache=out / "frames",
                 device=device, threads=threads, resume=(run / "config.json").is_file(),
                 progress=progress, **recipe, **data)
    options = json.loads((run / "config.json").read_text())["options"]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    # 2. features of train and held-out clips with the trained backbone (extract resumes itself)
    for split, manifest in manifests.items():
        extract_features(annotations=manifest, out=caches / split, backbone=options["backbone"],
                         checkpoint=run / "backbone.pth.tar", size=options["size"], frames=options["frames"],
                         fps=options["fps"], device=device, precision="fp32" if recipe["amp"] == "off" else "auto",
                         progress=progress, **data)
    # 3. the seed's head on those features, seeded like the pretrain
    if not (score / "metrics.json").is_file():
        done = (head / "metrics.jsonl").is_file() and \
            len((head / "metrics.jsonl").read_text().splitlines()) >= head_epochs
        if not done:
            train_head(caches / "train", caches / "val", head, epochs=head_epochs, hidden=settings["head_hidden"],
                       input=settings["head_input"], seed=seed, device=device,
                       resume=(head / "checkpoint-last.pt").is_file(),
                       overwrite=not (head / "checkpoint-last.pt").is_file(), progress=progress)
        # 4. scored on the held-out clips only, next to both baselines
        export_predictions(run=head, out=score, cache=caches / "val", checkpoint="last", plots=0,
                           device=device, progress=progress)
    m = json.loads((score / "metrics.json").read_text())
    return {"seed": seed, "arm": arm, "run": str(run), "val_top1": last["val_top1"], "val_top5": last["val_top5"],
            "val_aux_bce": last.get("val_aux_bce"), "chance": last["chance"],
            "pretrain_seconds": sum(h["seconds"] for h in _history(run)),
            **{f"{b}_{k}": m[b][k] for b in BLOCKS for k in METRICS}, "held_out_clips": m["counts"]["clips"]}


def compare(*, videos: Path, annotations: Path | str, val_annotations: Path | str, out: Path,
            labels: Path | None = None, classes: str | None = None, seeds=None, aux_weight: float | None = None,
            backbone: str | None = None, size: int | None = None, epochs: int | None = None,
            batch_size: int | None = None, lr: float | None = None, amp: str | None = None,
            head_epochs: int | None = None, head_hidden: int | None = None, head_input: str | None = None,
            device: str = "auto", threads: int | None = None, limit: int | None = None,
            progress: bool = True) -> dict:
    """Run (or continue) the with / without auxiliary-envelope comparison into `out`; returns the
    report dict (also OUT/compare.json; OUT/compare.md is the table). seeds: the pretrain and head
    seeds (default 0, 1, 2; at least 2). aux_weight: W of the aux arm. The pretrain recipe options
    (backbone, size, epochs, batch_size, lr, amp) default to pretrain's; head_* to DEFAULTS.
    """
    t0 = time.perf_counter()
    out, videos = Path(out), Path(videos)
    seeds = tuple(DEFAULTS["seeds"] if seeds is None else seeds)
    aux_weight = DEFAULTS["aux_weight"] if aux_weight is None else float(aux_weight)
    head_epochs = DEFAULTS["head_epochs"] if head_epochs is None else head_epochs
    head_hidden = DEFAULTS["head_hidden"] if head_hidden is None else head_hidden
    head_input = DEFAULTS["head_input"] if head_input is None else head_input
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise FoleyError(f"--seeds: give at least 2 different seeds (got {list(seeds)}); 3 or more for a spread "
                         "worth reading")
    if not aux_weight > 0 or not math.isfinite(aux_weight):
        raise FoleyError(f"--aux-envelope must be > 0 for the comparison's aux arm, got {aux_weight}")
    recipe = {k: v for k, v in dict(backbone=backbone, size=size, epochs=epochs, batch_size=batch_size, lr=lr,
                                    amp=amp).items() if v is not None}
    recipe.setdefault("epochs", DEFAULTS["epochs"])      # shorter than a lone pretrain: six runs
    recipe = {k: recipe.get(k, PRETRAIN_DEFAULTS[k]) for k in ("backbone", "size", "epochs", "batch_size", "lr", "amp")}
    settings = {"seeds": list(seeds), "aux_weight": aux_weight, "recipe": recipe, "head_epochs": head_epochs,
                "head_hidden": head_hidden, "head_input": head_input, "limit": limit,
                "videos": str(videos.resolve()), "annotations": str(annotations),
                "val_annotations": str(val_annotations), "classes": classes}
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "settings.json"
    if saved.is_file() and json.loads(saved.read_text())["recipe"] != settings["recipe"]:
        raise FoleyError(f"{out} holds a comparison with another recipe ({saved}); choose another --out")
    atomic_write_json(saved, settings)

    data = dict(videos=videos, labels=labels, classes=classes, limit=limit)
    manifests = {"train": annotations, "val": val_annotations}
    rows = [_run_arm(out, seed, arm, settings, manifests, data, device=device, threads=threads, progress=progress)
            for seed in seeds for arm in ARMS]
    report = summarise(rows, settings)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(out / COMPARE_JSON, report)
    atomic_write_text(out / COMPARE_MD, markdown(report))
    return report


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]


def summarise(rows: list[dict], settings: dict) -> dict:
    """Per arm mean ± spread of every number in `rows`, and the paired aux - no_aux differences."""
    keys = ["val_top1", "val_top5"] + [f"{b}_{k}" for b in BLOCKS for k in METRICS]
    arms = {arm: {k: _stat([r[k] for r in rows if r["arm"] == arm]) for k in keys} for arm in ARMS}
    by = {(r["seed"], r["arm"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows if (r["seed"], "aux") in by and (r["seed"], "no_aux") in by})
    diff = {k: _stat([by[(s, "aux")][k] - by[(s, "no_aux")][k] for s in seeds]) for k in keys}
    return {"settings": settings, "rows": rows, "arms": arms, "aux_minus_no_aux": diff,
            "chance": rows[0]["chance"] if rows else None}


def verdict(d: dict) -> str:
    """A paired difference's stat in words: its mean, standard error and whether it is clear."""
    if d["mean"] is None:
        return "n/a"
    se = d["std"] / math.sqrt(d["n"]) if d["n"] > 1 else float("inf")
    word = "clearly higher with aux" if d["mean"] > 2 * se else "clearly lower with aux" if d["mean"] < -2 * se \
        else "no clear difference"
    return f"{d['mean']:+.3f} (standard error {se:.3f}, {d['n']} seeds): {word}"


def markdown(report: dict) -> str:
    """The comparison's table: mean ± sample std (min..max) over seeds, held-out clips only."""
    s, arms, diff = report["settings"], report["arms"], report["aux_minus_no_aux"]
    r = s["recipe"]
    n = arms["no_aux"]["val_top1"]["n"]
    w = s["aux_weight"]
    lines = [
        "# pretrain with and without the envelope as an auxiliary task",
        "",
        f"{n} seeds ({', '.join(map(str, s['seeds']))}) per arm; recipe: {r['backbone']}, {r['size']} px, "
        f"{r['epochs']} epochs, batch {r['batch_size']}, lr {r['lr']}; aux arm: loss = CE + {w:g} x BCE. "
        f"Heads: the seed's LSTM head ({s['head_input']}, hidden {s['head_hidden']}, {s['head_epochs']} epochs, "
        f"last epoch) on each backbone's features. Every number: mean ± sample std (min..max) over seeds, "
        f"on the held-out clips only (chance top-1 {report['chance']:.3f}).",
        "",
        "| | no aux | aux envelope | aux - no aux (paired by seed) |",
        "|---|---|---|---|",
    ]
    names = [("val_top1", "pretrain val top-1"), ("val_top5", "pretrain val top-5")]
    names += [(f"model_{k}", f"head {k}") for k in METRICS]
    names += [(f"{b}_{k}", f"baseline {b} {k}") for b in ("mean_envelope", "shuffled") for k in ("seed_score", "onset_f1")]
    for key, label in names:
        lines.append(f"| {label} | {_fmt(arms['no_aux'][key])} | {_fmt(arms['aux'][key])} | {_fmt(diff[key])} |")
    lines += ["", "Answer (paired difference aux - no aux; 'clear' when |mean| > 2 standard errors):", ""]
    for key, label in (("val_top1", "pretrain val top-1"), ("model_seed_score", "head seed_score"),
                       ("model_onset_f1", "head onset_f1")):
        lines.append(f"- {label}: {verdict(diff[key])}")
    beats = {arm: all(arms[arm][f"model_{k}"]["mean"] is not None and all(
        arms[arm][f"model_{k}"]["mean"] > arms[arm][f"{b}_{k}"]["mean"] for b in ("mean_envelope", "shuffled"))
        for k in ("seed_score", "onset_f1")) for arm in ARMS}
    lines.append(f"- heads beat both baselines on seed_score and onset_f1 (means): no aux {'yes' if beats['no_aux'] else 'no'}, "
                 f"aux {'yes' if beats['aux'] else 'no'}")
    chance = report["chance"]
    if all(arms[a]["val_top1"]["mean"] is not None and arms[a]["val_top1"]["mean"] < AT_CHANCE * chance for a in ARMS):
        lines.append(f"- both arms are at chance (val top-1 < {AT_CHANCE:g} x {chance:.3f}): neither backbone learned the "
                     "classes, so a difference between them says nothing about the sound")
    if not any(beats.values()):
        lines.append("- no head beats both baselines: their envelope metrics cannot tell the arms apart")
    lines += ["", "Per run:", "", "| seed | arm | val top-1 | head seed_score | head onset_f1 | head pearson |",
              "|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['seed']} | {row['arm']} | {row['val_top1']:.3f} | {row['model_seed_score']:.3f} | "
                     f"{row['model_onset_f1']:.3f} | {row['model_pearson']:.3f} |")
    return "\n".join(lines) + "\n"
