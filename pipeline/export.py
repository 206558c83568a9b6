"""Stage 4: run a trained head on held-out clips; write predictions, metrics, report, plots and renders.

export_predictions(run=RUN_DIR, out=DIR, cache=CACHE_DIR)                     # features already cached
export_predictions(run=RUN_DIR, out=DIR, videos=DIR, annotations=FILE)       # features made on the fly

Writes into `out`:
  predictions.h5    id [N] str, label [N] str, length [N] int32, target [N, T] float32, pred [N, T] float32
  predictions.csv   one row per clip: per-clip metrics, then target_00..target_{T-1}, pred_00..pred_{T-1}
  metrics.json      model / mean_envelope / shuffled evaluate() blocks (per_class included), peak-picking
                    settings, run and cache fingerprints, the run's config, counts
  report.md         the seed's table, then the metric table (model vs baselines) and a verdict line
  report.html       the same tables, every plot and every render, in one offline page
  plots/{id}.png    target vs prediction over time (s), onsets marked, padding shaded
  renders/{id}.gif  the clip's frames with both curves and a moving cursor (needs the videos: --videos,
                    else the videos folder the cache recorded when it was extracted)
  timelines.h5/.csv one curve per video at the clip frame rate from its first frame: clips and windows
                    of any stride joined (`pipeline.timeline`: each frame from the clip where it is
                    most central)
  onsets.csv/.json  video, time_s (from the video's first frame), frame, strength: every onset the
                    metrics' peak picker finds on each timeline
  previews/{video}.mp4  with `preview`: the first N videos' frames, the curve and a cursor, and an
                    impact on the sound track at each onset, as loud as it is strong (`pipeline.preview`)

A cache without targets (`targets=False`: the videos' audio is not read, so videos without an audio
stream or with silent audio are predicted like any other; `foleycache predict`) gets the same files
but no metrics.json, plots of the prediction alone, and a report that says why nothing is scored.

Where the features come from (`pipeline.run_features`):
- `--cache`: a cache whose fingerprint must equal the one the run was trained on (the checkpoint
  carries it): the same backbone weights, preprocessing, envelope and dtype. Anything else is refused.
- `--videos/--annotations`: features are extracted into OUT/cache with `pipeline.extract` (a normal,
  resumable cache, reusable later with --cache), using the network the run expects:
  * a train-head run: the backbone weights recorded in its train cache (the calibrated
    TRAIN_CACHE/backbone.safetensors for `--checkpoint none`, else the checkpoint path it was
    extracted with, which must still exist) and the same frames/fps/size/envelope/dtype/precision;
    the resulting fingerprint must equal the run's.
  * a finetune run (the head checkpoint also holds a finetuned backbone): that backbone's weights are
    written to OUT/backbone-finetuned.safetensors and used the same way.

This module only orders the stages: run_features (which features) → score (predictions through
training's own evaluate_model, metrics, baselines) → timeline (one curve and the onsets per video) →
figures (plots, renders) → report (tables, pages) → preview (MP4s).
It computes, draws and formats nothing itself.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from pipeline import figures, report
from pipeline.errors import FoleyError
from pipeline.fsio import atomic_write_text
from pipeline.metrics import HEADLINE, PEAK_PARAMS
from pipeline.run_features import TrainedRun, check_cache, features_from_videos, load_run
from pipeline.runtime import resolve_device
from pipeline.score import (PREDICT_BATCH, metrics_record, predict, prediction_amp, score_predictions, unscored,
                            write_predictions_csv, write_predictions_h5)
from pipeline.timeline import JOIN_RULE, clip_origins, join_clips, write_onsets, write_timelines

DEFAULT_PLOTS = 24          # plots (and report cards) when --plots is not given
AUDIO_REASONS = ("no_audio_stream", "silent_audio")     # faults that reading no audio avoids
PREVIEWS_DIR = "previews"


def _check_arguments(cache, videos, annotations, plots, render, preview):
    if (cache is None) == (annotations is None):
        raise FoleyError("give either --cache CACHE_DIR or --videos DIR --annotations FILE")
    if annotations is not None and videos is None:
        raise FoleyError("--annotations needs --videos (the folder of the videos it lists)")
    if plots != "all" and int(plots) < 0 or render < 0 or preview < 0:
        raise FoleyError("--plots, --render and --preview must not be negative")


def _no_clips(cache_dir, c) -> FoleyError:
    """The one-line error of an empty cache; it names the way out when audio is what failed."""
    reasons = Counter(f.get("reason") for f in c.failures)
    message = f"cache {cache_dir} holds no clips (all {len(c.failures)} were faulty: " + \
        ", ".join(f"{n} {r}" for r, n in reasons.most_common()) + ")"
    if reasons and set(reasons) <= set(AUDIO_REASONS):
        message += "; to predict from the video alone, without audio, use `foleycache predict`"
    return FoleyError(message)


def export_predictions(*, run: Path, out: Path, cache: Path | None = None, videos: Path | None = None,
                       annotations: Path | str | None = None, labels: Path | None = None,
                       classes: str | None = None, window_stride: float | None = None,
                       checkpoint: str = "best", plots: int | str = DEFAULT_PLOTS, render: int = 0,
                       preview: int = 0, targets: bool = True, device: str = "auto",
                       batch_size: int = PREDICT_BATCH, progress: bool = True) -> dict:
    """Predict every clip of a cache (or of videos + annotations) with a trained run; write the report.

    plots: number of clips to plot (a seeded random sample) or "all"; the report shows the same clips.
    render: GIFs for the first `render` plotted clips; preview: MP4 previews of the first `preview`
    videos (both need the videos: --videos, or a cache whose config records its videos folder).
    targets: with videos + annotations, False extracts without reading audio (a cache without
    targets: predictions, timelines and onsets, no metrics). A --cache says itself whether it holds
    targets. Returns a summary dict (paths, counts, headline metrics where there are targets).
    """
    from pipeline.cache import FeatureCache
    from pipeline.extract import holds_targets

    t0 = time.time()
    out = Path(out)
    _check_arguments(cache, videos, annotations, plots, render, preview)
    dev = resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    trained = load_run(run, checkpoint, device=dev)
    if cache is None:
        cache = features_from_videos(trained, out, videos=Path(videos), annotations=annotations, labels=labels,
                                     classes=classes, window_stride=window_stride, device=device, progress=progress,
                                     targets=targets)
    c = FeatureCache(cache)
    check_cache(trained, c)
    if len(c) == 0:
        raise _no_clips(cache, c)

    pred = predict(trained, c, dev, batch_size, progress)
    lines = join_clips(pred, c.lengths, clip_origins(c, videos), float(c.config.get("fps", 12.0)), c.ids)
    files = [*write_timelines(out, lines)]
    onsets = write_onsets(out, lines)
    write = _write_scored if holds_targets(c.config) else _write_unscored
    summary = write(trained, c, pred, lines, onsets, out, dev, plots, render, videos, progress)
    previews = []
    if preview:
        source = figures.videos_for_renders(videos, c)
        from pipeline.preview import write_previews
        previews = write_previews(out / PREVIEWS_DIR, lines, source, preview, progress)
    summary.update(out=str(out), clips=len(c), videos=len(lines), onsets=len(onsets), previews=len(previews),
                   timelines=str(files[0]), onsets_csv=str(out / "onsets.csv"), report=str(out / "report.md"),
                   html=str(out / "report.html"), wall_seconds=round(time.time() - t0, 2))
    return summary


def _write_scored(trained: TrainedRun, c, pred, lines, onsets, out: Path, dev, plots, render, videos,
                  progress) -> dict:
    """Scores, metrics.json, the prediction files, plots, renders and the report of a cache with targets."""
    scores = score_predictions(trained, c, pred, progress)
    metrics = metrics_record(trained, c, scores, prediction_amp(trained, dev))
    _write_prediction_files(out, scores, trained, c)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    cards = figures.plot_cards(out / "plots", scores, figures.select_clips(len(c), plots), progress)
    rendered = figures.render_cards(out / "renders", cards, scores, c, videos, render, progress) if render else []
    atomic_write_text(out / "report.md", report.report_markdown(metrics, scores.seed_rows))
    atomic_write_text(out / "report.html", report.report_html(metrics, scores.seed_rows, cards))
    blocks = scores.blocks
    return {"plots": len(cards), "renders": len(rendered), "targets": True, "metrics": str(out / "metrics.json"),
            "headline": {k: {b: blocks[b][k] for b in blocks} for k in HEADLINE},
            "beats_baselines": metrics["beats_baselines"], "verdict": report.verdict(blocks)}


def _write_unscored(trained: TrainedRun, c, pred, lines, onsets, out: Path, dev, plots, render, videos,
                    progress) -> dict:
    """The prediction files, plots of the prediction alone, renders and a report saying why nothing
    is scored, for a cache without targets. A metrics.json left by an earlier export is removed."""
    scores = unscored(c, pred)
    _write_prediction_files(out, scores, trained, c)
    (out / "metrics.json").unlink(missing_ok=True)
    cards = figures.plot_cards(out / "plots", scores, figures.select_clips(len(c), plots), progress)
    rendered = figures.render_cards(out / "renders", cards, scores, c, videos, render, progress) if render else []
    record = _prediction_record(trained, c, scores, lines, onsets, prediction_amp(trained, dev))
    times: dict[str, list[float]] = {}
    for r in onsets:
        times.setdefault(r["video"], []).append(r["time_s"])
    timelines = [{"video": t.video, "seconds": t.seconds, "onsets": times.get(t.video, [])} for t in lines]
    atomic_write_text(out / "report.md", report.predictions_markdown(record, timelines))
    atomic_write_text(out / "report.html", report.predictions_html(record, timelines, cards))
    return {"plots": len(cards), "renders": len(rendered), "targets": False, "metrics": None, "headline": None,
            "beats_baselines": None, "verdict": report.NO_METRICS}


def _write_prediction_files(out: Path, scores, trained: TrainedRun, c):
    write_predictions_h5(out / "predictions.h5", scores, {"run": trained.dir, "checkpoint": trained.checkpoint_path,
                                                          "fingerprint": c.fingerprint, "fps": scores.fps})
    write_predictions_csv(out / "predictions.csv", scores)


def _prediction_record(trained: TrainedRun, c, scores, lines, onsets, amp: str) -> dict:
    """What report.md / .html say about an unscored export: the run, the cache, the counts."""
    return {"run": {"dir": trained.dir, "checkpoint_name": trained.checkpoint_name, "epoch": trained.epoch,
                    "input": trained.input, "amp": amp},
            "cache": {"path": str(c.path), "fingerprint": c.fingerprint},
            "counts": {"clips": len(c), "videos": len(lines), "failed": len(c.failures), "fps": scores.fps,
                       "onsets": len(onsets)},
            "peak_params": dict(PEAK_PARAMS), "join_rule": JOIN_RULE}
