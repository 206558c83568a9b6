"""`foleycache demo`: the whole pipeline on pretrained features, on a laptop CPU, in a few minutes.

    make-synthetic (look DEFAULT_LOOK: train + validation)  and  (HELDOUT_LOOK: validation only)
        ─► extract-features --backbone mobilenet_v2_spacetime_mid --checkpoint imagenet   (train, val, unseen look)
        ─► train-head (its defaults: the recipe compare-heads measured best)  and  the seed's causal LSTM head
        ─► (--with-motion-energy) train-head --input motion-energy   (the seed's LSTM on their change signal)
        ─► export-predictions for both heads, on the held-out same-look clips and the unseen-look clips
        ─► demo.md: each head against both baselines, on both held-out sets

OUT/ holds data/ and data-unseen/ (videos + SSv2 JSONs), cache/{train,val,unseen}/,
runs/{head}/, export/{head}/ and export/{head}-unseen/ (report.md, report.html,
plots, renders, metrics.json), demo.md (the comparison) and demo.json (settings, timings per stage,
headline metrics).

Why this backbone (docs/learning.md, "Pretrained features"): the seed's head needs pretrained features,
and the only pretrained video-capable network that can be had on these machines is torchvision's
ImageNet MobileNetV2, run on every frame, here on spacetime images (grey frames t-1, t, t+1 as its
three channels: a per-frame network then sees motion), read after its fourth stage (96 channels:
they carry over to unseen looks better than the last stage's 1280). A randomly initialised model3d_1
gives the seed's head nothing it can generalise from with a few hundred clips, and on a CPU without
AMX it costs ~3.7 s per clip at 112 px (about 25 minutes for this dataset), so it is not part of
the demo; docs/learning.md gives its numbers. MobileNetV2 at 96 px costs ~0.4 s per clip with AVX2
kernels in float32 (decoding included: the demo's train extraction, 312 clips in 121 s).
"""
from __future__ import annotations

import functools
import json
import shutil
import time
from pathlib import Path

from pipeline import report as R
from pipeline.errors import FoleyError
from pipeline.options import DEMO_SIZE, DEMO_TRAIN, DEMO_UNSEEN, DEMO_VAL, PRECISIONS
from pipeline.recipes import REFERENCE, recipe_options

# --- what the demo runs (docs/performance.md: measured times and their CPUs) ------
# DEMO_TRAIN: sound clips in the train split (plus 1 in 25 non-sound clips the filter drops); DEMO_VAL,
# DEMO_UNSEEN: held-out clips of the training look and of a look the heads never saw (other rooms,
# objects, camera); DEMO_SIZE 96: MobileNetV2's last map is 3x3, averaged to one vector per frame,
# 1.6-1.8x faster than 112 in float32 (docs/learning.md: what fits 10 minutes on AVX2). Defined in
# pipeline.options so that --help shows them.
VIDEO_SIZE = (160, 120)     # the synthetic videos' frame (w, h): 2.6x faster to render and encode than
                            # 320x240 (0.22 vs 0.58 s a clip on 2 cores) and still above DEMO_SIZE
DEMO_SEED = 0
BACKBONE = "mobilenet_v2_spacetime_mid"   # MobileNetV2 on spacetime images (frames see their neighbours),
                                          # read at mid level (docs/learning.md: what made the head find
                                          # the moment, and carry over to unseen looks)
WEIGHTS = "imagenet"        # torchvision's file, found on disk (README's first command installs it)
POOL = "global"             # features [48, 96]: a 2x2 grid learned no better held out (docs/learning.md)
PLOTS = 24                  # plots per export (a seeded random sample of the clips)
RENDERS = 4                 # GIFs per export
CHECKPOINT = "last"         # the last epoch, not the best-on-validation one: no choice is made on the
                            # clips the report scores, so they stay strictly held out
# train-head options per head. "default" is train-head with no flags: the recipe `compare-heads`
# measured best (docs/learning.md), chosen on clips made with other seeds, looks and sounds than the
# demo's, so the demo's held-out numbers played no part in it. "seed" is the seed's causal LSTM
# 2 x 512 + FC on the same centred features: the row the default is measured against.
HEADS = {
    "default": {},
    "seed": recipe_options(REFERENCE),
}
# The seed's LSTM on the motion-energy change signal of the same features: a comparison row that
# costs ~1 more minute on a 2-core AVX2 CPU, so it is left out of the default demo's budget.
MOTION_ENERGY_HEAD = {"motion-energy": {"input": "motion-energy", "temporal": "lstm", "hidden": 512,
                                        "center_clips": False, "onset_weight": 0.0, "slope_weight": 0.0,
                                        "ema_decay": 0.0, "epochs": 16}}
SPLITS = {"val": "", "unseen": "-unseen"}    # held-out set -> suffix of its export folder
DEMO_JSON = "demo.json"
DEMO_MD = "demo.md"


def _prepare(out: Path):
    """OUT must be new, empty, or an earlier demo (whose results are replaced)."""
    if out.exists() and not out.is_dir():
        raise FoleyError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / DEMO_JSON).is_file():
        raise FoleyError(f"--out {out} is not empty and holds no {DEMO_JSON} (not an earlier demo): "
                         "choose a new or empty directory")
    for sub in ("cache", "runs", "export"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)        # an earlier demo's: rebuilt from scratch, never mixed
    out.mkdir(parents=True, exist_ok=True)


def _write_json(path: Path, obj: dict):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def comparison_rows(metrics: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one held-out set's comparison: each head, then the baselines (from the first
    head's export; every export of a set scores the same clips and the same train mean, so
    mean_envelope is identical, and `shuffled` is each head's own predictions shuffled: both shown)."""
    heads = list(metrics)
    columns = {f"{h} head": metrics[h]["model"] for h in heads}
    columns["mean_envelope"] = metrics[heads[0]]["mean_envelope"]
    for h in heads:
        columns[f"shuffled ({h})"] = metrics[h]["shuffled"]
    return ["metric", "better", *columns], R.metric_rows(columns)


def best_head(metrics: dict[str, dict]) -> str:
    """The head with the higher seed_score (onset_f1 breaks a tie)."""
    return max(metrics, key=lambda h: (metrics[h]["model"]["seed_score"], metrics[h]["model"]["onset_f1"]))


def _last_epoch(run_dir: Path) -> dict:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


def _section(title: str, intro: str, metrics: dict[str, dict]) -> list[str]:
    header, rows = comparison_rows(metrics)
    lines = [f"## {title}", "", intro, "", R.markdown_table(header, rows), ""]
    lines += [f"- {R.verdict(metrics[h], f'The {h} head')}" for h in metrics]
    return lines + [""]


def any_run_of(results: dict[str, dict], head: str) -> dict:
    """The run config of `head`'s export (the first head's when it is not in the demo)."""
    return (results.get(head) or next(iter(results.values())))["run_config"]


def _head_text(run_config: dict) -> str:
    """A head's recipe in words: temporal layer, sizes, input, epochs."""
    h, o = run_config["head"], run_config["options"]
    temporal = h.get("temporal", "lstm")
    front = f"Conv1d {h['conv_channels']} (k {', '.join(map(str, h['conv_kernels']))}) → " \
        if temporal == "conv-bilstm" else ""
    lstm = {"lstm": "causal LSTM", "bilstm": "bidirectional LSTM", "conv-bilstm": "bidirectional LSTM"}[temporal]
    text = (f"{front}{lstm} {h['layers']} x {h['hidden']} + FC, {'centred' if o.get('center_clips') else 'raw'} "
            f"features, {o['epochs']} epochs of {o['batch_size']} clips")
    if o.get("onset_weight"):
        text += f", onset term x{o['onset_weight']}"
    if o.get("slope_weight"):
        text += f", slope term x{o['slope_weight']:g}"
    if o.get("time_shift"):
        text += f", time shifts up to {o['time_shift']} frames"
    if o.get("ema_decay"):
        text += f", weights averaged (EMA {o['ema_decay']})"
    return text


def demo_report(results: dict[str, dict[str, dict]], settings: dict, out: Path) -> str:
    """demo.md: per held-out set, the comparison table and verdicts; what each row shows; where things are.

    results: {split: {head: metrics.json of that head's export on that split}}.
    """
    val, unseen = results["val"], results["unseen"]
    any_run = next(iter(val.values()))["run_config"]
    dim = any_run["train_cache"]["dim"]
    losses = {h: _last_epoch(out / "runs" / h) for h in val}
    fit = "; ".join(f"{h} head: train {losses[h].get('train_loss', float('nan')):.3f}, held-out "
                    f"{losses[h].get('val_loss', float('nan')):.3f}" for h in val)
    me_dim = val["motion-energy"]["run_config"]["transform"]["out_dim"] if "motion-energy" in val else None
    lines = [
        "# foleycache demo",
        "",
        f"Synthetic Something-Something-shaped clips with sound, the 12 sound templates: {settings['train']} "
        f"training clips of the `{settings['look']}` look. Features: ImageNet-pretrained MobileNetV2 "
        f"(torchvision's weights, `{settings['backbone']}`: on spacetime images, the grey frames t-1, t, t+1 as "
        f"its three channels, so each frame's features see motion; read after its fourth stage) on every frame "
        f"at {settings['size']}x{settings['size']}, the map averaged "
        f"({settings['pool']} pooling: features [48, {dim}]), precision {settings['precision']}. Every head is "
        "trained only on the training clips, and every number below is on held-out clips (checkpoint "
        f"`{CHECKPOINT}`: no choice was made on them). Rows: `default head` = `train-head` with no flags "
        f"({_head_text(any_run_of(val, 'default'))}; the recipe `compare-heads` measured best on clips made "
        "for choosing, never on these); `seed head` = the seed's causal LSTM(512, 2 layers) + FC on the same "
        "centred features (its output at a frame sees only the frames before it); "
        + (f"`motion-energy head` = the seed's LSTM on {me_dim} numbers per frame, the frame-to-frame change "
           "of the same features; " if me_dim else "")
        + "`mean_envelope` = the training set's mean envelope for every clip; `shuffled` = each head's "
        "predictions given to other clips. seed_score is the seed's good (+1) / not so good (0) / bad (-1) "
        "made automatic; onset_f1 and onset_ap score sound onsets within ±1 frame (±83 ms: the 0.1 s test of "
        "CondFoleyGen and SyncFusion at 12 fps), onset_count_acc is their onset accuracy (the share of clips "
        "with the right number of onsets).",
        "",
        *_section(f"Held-out clips of the training look ({next(iter(val.values()))['counts']['clips']} clips)",
                  "Same renderer family as the training clips, other scenes.", val),
        *_section(f"Held-out clips of an unseen look ({next(iter(unseen.values()))['counts']['clips']} clips, "
                  f"`{settings['unseen_look']}`)",
                  "Rooms, objects, colours and camera the heads never saw: does the head follow the event "
                  "or the look?", unseen),
        f"**The {best_head(val)} head wins** on the held-out clips of the training look (seed_score, then "
        f"onset_f1); on the unseen look the {best_head(unseen)} head does.",
        "",
        f"BCE at the last epoch ({fit}).",
        "",
        "Where everything is:",
        f"- datasets: `{out / 'data'}`, `{out / 'data-unseen'}` (videos/, SSv2 JSONs, events.json, dataset.json)",
        f"- feature caches: `{out / 'cache'}`/{{train,val,unseen}}",
        *[f"- {h} head: run `{out / 'runs' / h}`, reports `{out / 'export' / h / 'report.html'}` and "
          f"`{out / 'export' / (h + SPLITS['unseen']) / 'report.html'}`" for h in val],
        f"- this comparison: `{out / DEMO_MD}`; settings and timings: `{out / DEMO_JSON}`",
        "",
    ]
    return "\n".join(lines)


def _amp(precision: str) -> str:
    """train-head's --amp for the demo's --precision (fp32 = no autocast anywhere)."""
    return {"auto": "auto", "fp32": "off", "bf16": "bf16"}[precision]


def run_demo(*, out: Path, n_train: int = DEMO_TRAIN, n_val: int = DEMO_VAL, n_unseen: int = DEMO_UNSEEN,
             size: int = DEMO_SIZE, seed: int = DEMO_SEED, precision: str = "auto", heads: dict | None = None,
             progress: bool = True) -> dict:
    """Run the whole pipeline into `out`; returns the summary written to demo.json (+ "report": demo.md text).

    precision: "auto" (bf16 where the CPU/GPU has it natively), "fp32" (no bf16 anywhere) or "bf16".
    heads: train-head options per head name (default HEADS); the keys name the runs and exports.
    """
    from pipeline.export import export_predictions
    from pipeline.extract import extract_features
    from pipeline.synthetic import DEFAULT_LOOK, HELDOUT_LOOK, LABELS_JSON, TRAIN_JSON, VAL_JSON, make_synthetic
    from pipeline.train import train_head

    _check_arguments(n_train, n_val, n_unseen, precision)
    heads = dict(HEADS if heads is None else heads)
    out = Path(out)
    _prepare(out)
    t_start = time.time()
    settings = {"train": n_train, "val": n_val, "unseen": n_unseen, "size": size, "video_size": list(VIDEO_SIZE),
                "seed": seed,
                "backbone": BACKBONE, "weights": WEIGHTS, "pool": POOL, "precision": precision,
                "look": DEFAULT_LOOK, "unseen_look": HELDOUT_LOOK, "checkpoint": CHECKPOINT, "heads": heads}
    summary = {"status": "running", "out": str(out.resolve()), "settings": settings, "seconds": {}}
    _write_json(out / DEMO_JSON, summary)
    stage = functools.partial(_stage, out, summary)

    data, unseen, caches = out / "data", out / "data-unseen", out / "cache"
    stage("make_synthetic", lambda: make_synthetic(out=data, n_train=n_train, n_val=n_val, seed=seed,
                                                   look=DEFAULT_LOOK, size=VIDEO_SIZE, progress=progress))
    stage("make_synthetic_unseen", lambda: make_synthetic(out=unseen, n_train=0, n_val=n_unseen, seed=seed + 1,
                                                          look=HELDOUT_LOOK, size=VIDEO_SIZE, progress=progress))
    common = dict(backbone=BACKBONE, checkpoint=WEIGHTS, size=size, pool=POOL, precision=precision, fmt="hdf5",
                  progress=progress)
    sources = {"train": (data, TRAIN_JSON), "val": (data, VAL_JSON), "unseen": (unseen, VAL_JSON)}
    for split, (root, annotations) in sources.items():
        stage(f"extract_{split}", lambda: extract_features(videos=root / "videos", annotations=root / annotations,
                                                           labels=root / LABELS_JSON, out=caches / split, **common))
    results = {split: {} for split in SPLITS}
    for name, options in heads.items():
        key = name.replace("-", "_")
        stage(f"train_{key}", lambda: train_head(train_cache=caches / "train", val_cache=caches / "val",
                                                 out=out / "runs" / name, seed=seed, preload="ram",
                                                 amp=_amp(precision), progress=progress, **options))
        for split, suffix in SPLITS.items():
            root = sources[split][0]
            exported = stage(f"export_{key}{suffix.replace('-', '_')}", lambda: export_predictions(
                run=out / "runs" / name, out=out / "export" / (name + suffix), cache=caches / split,
                videos=root / "videos", checkpoint=CHECKPOINT, plots=PLOTS, render=RENDERS, progress=progress))
            results[split][name] = json.loads(Path(exported["metrics"]).read_text())

    text = demo_report(results, settings, out)
    (out / DEMO_MD).write_text(text, encoding="utf-8")
    summary.update(status="done", seconds_total=round(time.time() - t_start, 1), **_outcome(results, heads, out))
    _write_json(out / DEMO_JSON, summary)
    return dict(summary, report=text)


def _check_arguments(n_train: int, n_val: int, n_unseen: int, precision: str):
    if n_train < 2 or n_val < 2 or n_unseen < 2:
        raise FoleyError("the demo needs at least 2 train, 2 validation and 2 unseen-look clips")
    if precision not in PRECISIONS:
        raise FoleyError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")


def _stage(out: Path, summary: dict, name: str, fn):
    """fn(), its wall time recorded in demo.json as soon as it ends (a killed demo shows how far it got)."""
    t0 = time.time()
    result = fn()
    summary["seconds"][name] = round(time.time() - t0, 1)
    _write_json(out / DEMO_JSON, summary)
    return result


def _outcome(results: dict[str, dict[str, dict]], heads: dict, out: Path) -> dict:
    """demo.json's closing fields: the best head on validation, each head's headline metrics and
    baseline verdict per split, the clip counts and the files to open."""
    return dict(
        best_head=best_head(results["val"]),
        headline={split: {h: {col: {k: m[col][k] for k in R.HEADLINE} for col in ("model",) + R.BASELINES}
                          for h, m in per_head.items()} for split, per_head in results.items()},
        beats_baselines={split: {h: m["beats_baselines"] for h, m in per_head.items()}
                         for split, per_head in results.items()},
        validation_clips={split: next(iter(per_head.values()))["counts"]["clips"]
                          for split, per_head in results.items()},
        files={"report": str(out / DEMO_MD),
               **{f"{h}{s}_html": str(out / "export" / (h + s) / "report.html") for h in heads for s in SPLITS.values()}})
