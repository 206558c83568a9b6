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
training's own evaluate_model, metrics, baselines) → figures (plots, renders) → report (tables, pages).
It computes, draws and formats nothing itself.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline import figures, report
from pipeline.errors import FoleyError
from pipeline.fsio import atomic_write_text
from pipeline.metrics import HEADLINE
from pipeline.run_features import check_cache, features_from_videos, load_run
from pipeline.runtime import resolve_device
from pipeline.score import (PREDICT_BATCH, metrics_record, predict, prediction_amp, score_predictions,
                            write_predictions_csv, write_predictions_h5)

DEFAULT_PLOTS = 24          # plots (and report cards) when --plots is not given


def _check_arguments(cache, videos, annotations, plots, render):
    if (cache is None) == (annotations is None):
        raise FoleyError("give either --cache CACHE_DIR or --videos DIR --annotations FILE")
    if annotations is not None and videos is None:
        raise FoleyError("--annotations needs --videos (the folder of the videos it lists)")
    if plots != "all" and int(plots) < 0 or render < 0:
        raise FoleyError("--plots and --render must not be negative")


def export_predictions(*, run: Path, out: Path, cache: Path | None = None, videos: Path | None = None,
                       annotations: Path | str | None = None, labels: Path | None = None,
                       classes: str | None = None, window_stride: float | None = None,
                       checkpoint: str = "best", plots: int | str = DEFAULT_PLOTS, render: int = 0,
                       device: str = "auto", batch_size: int = PREDICT_BATCH, progress: bool = True) -> dict:
    """Predict every clip of a cache (or of videos + annotations) with a trained run; write the report.

    plots: number of clips to plot (a seeded random sample) or "all"; the report shows the same clips.
    render: GIFs for the first `render` plotted clips (needs the videos: --videos, or a cache whose
    config records its videos folder). Returns a summary dict (paths, counts, headline metrics).
    """
    from pipeline.cache import FeatureCache

    t0 = time.time()
    out = Path(out)
    _check_arguments(cache, videos, annotations, plots, render)
    dev = resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    trained = load_run(run, checkpoint, device=dev)
    if cache is None:
        cache = features_from_videos(trained, out, videos=Path(videos), annotations=annotations, labels=labels,
                                     classes=classes, window_stride=window_stride, device=device, progress=progress)
    c = FeatureCache(cache)
    check_cache(trained, c)
    if len(c) == 0:
        raise FoleyError(f"cache {cache} holds no clips (all {len(c.failures)} were faulty)")

    scores = score_predictions(trained, c, predict(trained, c, dev, batch_size, progress), progress)
    metrics = metrics_record(trained, c, scores, prediction_amp(trained, dev))
    write_predictions_h5(out / "predictions.h5", scores, {"run": trained.dir, "checkpoint": trained.checkpoint_path,
                                                          "fingerprint": c.fingerprint, "fps": scores.fps})
    write_predictions_csv(out / "predictions.csv", scores)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")

    cards = figures.plot_cards(out / "plots", scores, figures.select_clips(len(c), plots), progress)
    rendered = figures.render_cards(out / "renders", cards, scores, c, videos, render, progress) if render else []
    atomic_write_text(out / "report.md", report.report_markdown(metrics, scores.seed_rows))
    atomic_write_text(out / "report.html", report.report_html(metrics, scores.seed_rows, cards))

    blocks = scores.blocks
    return {"out": str(out), "clips": len(c), "plots": len(cards), "renders": len(rendered),
            "report": str(out / "report.md"), "html": str(out / "report.html"),
            "metrics": str(out / "metrics.json"), "headline": {k: {b: blocks[b][k] for b in blocks} for k in HEADLINE},
            "beats_baselines": metrics["beats_baselines"], "verdict": report.verdict(blocks),
            "wall_seconds": round(time.time() - t0, 2)}
