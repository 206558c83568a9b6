"""export-predictions on a small trained run: every file, plots per clip, GIF renders, an offline
report.html, the baselines, on-the-fly features from videos, and refused caches."""
import csv
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cache import FeatureCache, write_cache
from pipeline.data import SOUND12
from pipeline.errors import FoleyError
from pipeline.export import export_predictions
from pipeline.metrics import evaluate, mean_envelope
from tests.cachekit import calibrated_caches_and_head
from tests.mediakit import make_video, ssv2_entry
from tests.runkit import assert_one_line_error, foleycache, read_metrics

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32               # model3d_1 at 32x32: features [48, 512]
N_TRAIN, N_VAL = 8, 5
SHORT = N_TRAIN + 1     # one validation clip lasts 2.5 s: 30 real frames, the rest padding


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Real tiny videos -> train/val caches (random init, calibrated) -> a head trained 2 epochs."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    videos = root / "videos"
    videos.mkdir()
    splits = {"train": [], "val": []}
    for i in range(N_TRAIN + N_VAL):
        vid = str(300 + i)
        make_video(videos / f"{vid}.webm", seconds=2.5 if i == SHORT else 4.5, width=64, height=48,
                   impulses=(0.4 + 0.3 * (i % 9), 2.2 + 0.1 * (i % 5)))
        splits["train" if i < N_TRAIN else "val"].append(ssv2_entry(vid, SOUND12[i % 12]))
    # ema_decay 0: a handful of steps would leave the average mostly the initial weights, whose
    # near-constant curves make pearson too noisy to compare export with training
    calibrated_caches_and_head(root, videos, splits, SIZE, epochs=2, batch_size=4, hidden=16, layers=1,
                               input="features", ema_decay=0.0)
    return root


@pytest.fixture(scope="module")
def exported(setup):
    out = setup / "out"
    summary = export_predictions(run=setup / "run", out=out, cache=setup / "val", videos=setup / "videos",
                                 plots="all", render=2, preview=1, progress=False)
    return out, summary


def test_all_files_are_written(exported):
    out, summary = exported
    for name in ("predictions.h5", "predictions.csv", "metrics.json", "report.md", "report.html", "timelines.h5",
                 "timelines.csv", "onsets.csv", "onsets.json"):
        assert (out / name).is_file(), name
    assert summary["clips"] == N_VAL and summary["plots"] == N_VAL and summary["renders"] == 2
    assert summary["previews"] == 1 and (out / "previews" / f"{FeatureCache(out.parent / 'val').ids[0]}.mp4").is_file()


def test_predictions_h5_and_csv_hold_every_clip(exported, setup):
    out, _ = exported
    val = FeatureCache(setup / "val")
    with h5py.File(out / "predictions.h5") as f:
        ids = [x.decode() for x in f["id"][:]]
        assert ids == val.ids
        assert [x.decode() for x in f["label"][:]] == val.labels
        assert f["target"].shape == f["pred"].shape == (N_VAL, 48)
        np.testing.assert_array_equal(f["length"][:], val.lengths)
        np.testing.assert_allclose(f["target"][:], val.envelopes)
        pred = f["pred"][:]
        assert ((pred >= 0) & (pred <= 1)).all()
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["id"] for r in rows] == val.ids
    assert len(rows[0]) == 3 + 9 + 2 * 48          # id, label, length, 9 per-clip metrics, two curves
    assert int(rows[SHORT - N_TRAIN]["length"]) == 30
    np.testing.assert_allclose([float(rows[0][f"pred_{i:02d}"]) for i in range(48)], pred[0], atol=1e-4)


def test_metrics_json_has_model_and_both_baselines_side_by_side(exported, setup):
    out, _ = exported
    m = json.loads((out / "metrics.json").read_text())
    keys = {"bce", "mae", "pearson", "peak_error_frames", "peak_within_1", "onset_precision", "onset_recall",
            "onset_f1", "onset_ap", "onset_f1_tol2", "onset_count_acc", "seed_score", "per_class"}
    for block in ("model", "mean_envelope", "shuffled"):
        assert keys <= set(m[block]), block
        assert m[block]["n"] == N_VAL
    assert m["peak_params"] == {"height": 0.2, "prominence": 0.15, "distance": 2}
    val = FeatureCache(setup / "val")
    assert m["cache"]["fingerprint"] == val.fingerprint == m["run"]["fingerprint"]
    assert m["run_config"]["command"] == "train-head"
    # the export re-scores what training scored on the same clips at the exported epoch (up to the float
    # noise of other batch shapes: validation batches clips 4 at a time, export 16)
    epoch = next(line for line in read_metrics(setup / "run") if line["epoch"] == m["run"]["epoch"])
    for key in ("bce", "pearson", "onset_f1", "seed_score"):
        assert m["model"][key] == pytest.approx(epoch[f"val_{key}"], abs=2e-4), key
    assert m["counts"]["clips"] == N_VAL
    # mean_envelope really is the train set's mean envelope, scored like the model
    train = FeatureCache(setup / "train")
    mean = mean_envelope(train.envelopes, train.lengths)
    expected = evaluate(np.broadcast_to(mean, (N_VAL, 48)), val.envelopes, val.lengths)
    assert m["mean_envelope"]["mae"] == pytest.approx(expected["mae"])
    assert m["mean_envelope"]["seed_score"] == pytest.approx(expected["seed_score"])
    assert set(m["beats_baselines"]) == {"seed_score", "onset_f1"}


def test_one_plot_per_clip_and_gifs_of_48_frames(exported, setup):
    out, _ = exported
    val = FeatureCache(setup / "val")
    assert sorted(p.stem for p in (out / "plots").glob("*.png")) == sorted(val.ids)
    gifs = sorted((out / "renders").glob("*.gif"))
    assert len(gifs) == 2
    for gif in gifs:
        with Image.open(gif) as im:
            assert im.n_frames >= 48
            assert im.info["duration"] in (80, 83, 90)     # one GIF frame per clip frame at 12 fps


def test_report_md_has_the_seed_table_and_the_metric_table(exported):
    out, summary = exported
    text = (out / "report.md").read_text()
    assert "| class | n | good (+1) | not so good (0) | bad (-1) | score (mean) |" in text
    assert re.search(r"\| TOTAL \| 5 \|", text)
    assert "| metric | better | model | mean_envelope | shuffled |" in text
    assert "| seed_score |" in text and "| onset_f1 |" in text
    from pipeline.report import verdict                    # the verdict line, whichever way it goes
    metrics = json.loads((out / "metrics.json").read_text())
    assert "**" + verdict(metrics) + "**" in text
    assert summary["verdict"] in text


def test_report_html_is_self_contained(exported):
    out, _ = exported
    page = (out / "report.html").read_text()
    # nothing fetched from anywhere: no external src/href, no scripts, no stylesheets by link
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    srcs = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(srcs) == N_VAL + 2                           # every plot and both renders
    assert all(s.startswith(("data:image/png;base64,", "data:image/gif;base64,")) for s in srcs)
    assert sum(s.startswith("data:image/gif") for s in srcs) == 2
    assert "TOTAL" in page and "mean_envelope" in page


def test_fingerprint_mismatch_is_refused(setup, tmp_path):
    val = FeatureCache(setup / "val")
    data = val.read_many(range(len(val)))
    other = tmp_path / "other"
    write_cache(other, data["id"], data["label"], data["features"], data["envelope"], data["length"],
                config={"note": "same numbers, other extraction settings"})
    with pytest.raises(FoleyError, match="fingerprint"):
        export_predictions(run=setup / "run", out=tmp_path / "o", cache=other, progress=False)


def test_videos_path_extracts_with_the_runs_backbone_and_matches_the_cache(setup, exported, tmp_path):
    out = tmp_path / "fromvideos"
    export_predictions(run=setup / "run", out=out, videos=setup / "videos", annotations=setup / "val.json",
                       plots=1, progress=False)
    assert FeatureCache(out / "cache").fingerprint == FeatureCache(setup / "val").fingerprint
    with h5py.File(out / "predictions.h5") as a, h5py.File(exported[0] / "predictions.h5") as b:
        np.testing.assert_allclose(a["pred"][:], b["pred"][:], atol=1e-5)


def test_videos_path_is_refused_when_the_backbone_weights_are_gone(setup, tmp_path):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(setup / "run", run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["train_cache"]["path"] = str(tmp_path / "gone")
    (run / "config.json").write_text(json.dumps(cfg))
    ckpt = torch.load(run / "checkpoint-best.pt", weights_only=True)
    ckpt["config"]["train_cache"]["path"] = str(tmp_path / "gone")
    torch.save(ckpt, run / "checkpoint-best.pt")
    with pytest.raises(FoleyError, match="calibrated weights"):
        export_predictions(run=run, out=tmp_path / "o", videos=setup / "videos", annotations=setup / "val.json",
                           progress=False)


def test_cli_errors_are_one_line(setup, tmp_path):
    def run(*args):
        return foleycache("export-predictions", *args, env=None)

    p = run("--run", setup / "run", "--out", tmp_path / "o")
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "--cache" in p.stderr
    p = run("--run", setup / "run", "--out", tmp_path / "o", "--cache", setup / "train", "--checkpoint", "last",
            "--plots", "0", "--quiet")
    assert p.returncode == 0, p.stderr            # the train cache shares the fingerprint: allowed
    p = run("--run", setup / "train", "--out", tmp_path / "o2", "--cache", setup / "val", "--quiet")
    assert p.returncode == 2
    assert_one_line_error(p.stderr, "config.json")


def test_finetune_run_exports_from_videos_with_its_own_backbone(setup, tmp_path):
    """A finetune run carries a finetuned backbone: --videos extracts with it (and a cache made by the
    run's initial backbone is refused); the mean_envelope baseline comes from the --init-head's train cache."""
    from pipeline.finetune import finetune
    run = tmp_path / "ft"
    finetune(videos=setup / "videos", annotations=setup / "train.json", val_annotations=setup / "val.json",
             out=run, init_head=setup / "run" / "checkpoint-best.pt", epochs=1, batch_size=4, backbone_lr=1e-3,
             workers=0, limit=4, progress=False)      # one step: the export is what is tested here
    out = tmp_path / "o"
    summary = export_predictions(run=run, out=out, videos=setup / "videos", annotations=setup / "val.json",
                                 plots=2, render=1, progress=False)
    m = json.loads((out / "metrics.json").read_text())
    assert m["run"]["kind"] == "finetune" and m["run"]["finetuned_backbone"]
    assert summary["clips"] == N_VAL and summary["renders"] == 1
    assert "train cache" in m["baselines"]["mean_envelope"]
    ft_cache = FeatureCache(out / "cache")
    assert ft_cache.config["weights_sha256"] != FeatureCache(setup / "val").config["weights_sha256"]
    with pytest.raises(FoleyError, match="finetune run"):
        export_predictions(run=run, out=tmp_path / "o2", cache=setup / "val", progress=False)
    # the cache export made is accepted as --cache, and gives the same predictions
    export_predictions(run=run, out=tmp_path / "o3", cache=out / "cache", plots=0, progress=False)
    with h5py.File(out / "predictions.h5") as a, h5py.File(tmp_path / "o3" / "predictions.h5") as b:
        np.testing.assert_array_equal(a["pred"][:], b["pred"][:])


def test_renders_fall_back_to_the_videos_folder_the_cache_records(setup, tmp_path):
    """Without --videos, renders decode from the cache's config manifest.videos (extract records it)."""
    assert FeatureCache(setup / "val").config["manifest"]["videos"] == str((setup / "videos").resolve())
    summary = export_predictions(run=setup / "run", out=tmp_path / "o", cache=setup / "val", plots=1, render=1,
                                 progress=False)
    assert summary["renders"] == 1 and len(list((tmp_path / "o" / "renders").glob("*.gif"))) == 1


def test_renders_without_videos_say_what_is_missing(tmp_path):
    from types import SimpleNamespace

    from pipeline.figures import videos_for_renders
    assert videos_for_renders(tmp_path, SimpleNamespace(config={})) == tmp_path      # --videos wins
    with pytest.raises(FoleyError, match="does not record them"):
        videos_for_renders(None, SimpleNamespace(config={"manifest": {"annotations": "none"}}))
    with pytest.raises(FoleyError, match="videos folder .* is gone"):
        videos_for_renders(None, SimpleNamespace(config={"manifest": {"videos": str(tmp_path / "gone")}}))


def test_mean_envelope_needs_the_train_cache_or_the_training_videos(setup, tmp_path):
    """The checkpoint stores no train mean: without its train cache a train-head run cannot give one."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(setup / "run", run)
    ckpt = torch.load(run / "checkpoint-best.pt", weights_only=True)
    ckpt["config"]["train_cache"]["path"] = str(tmp_path / "gone")
    torch.save(ckpt, run / "checkpoint-best.pt")
    cfg = json.loads((run / "config.json").read_text())
    cfg["train_cache"]["path"] = str(tmp_path / "gone")
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FoleyError, match="needs the run's training envelopes"):
        export_predictions(run=run, out=tmp_path / "o", cache=setup / "val", plots=0, progress=False)
