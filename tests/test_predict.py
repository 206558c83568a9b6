"""Predicting where the sounds go in videos without sound: the audio-free cache and its refusal by the
trainers, predictions equal with and without the audio stream, windows of any stride joined into
one timeline per video, the onset list in seconds, MP4 previews, and bad files as failure lines."""
import csv
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import av
import h5py
import numpy as np
import pytest
import torch

from pipeline.cache import FeatureCache
from pipeline.data import SOUND12, Annotation
from pipeline.errors import FoleyError
from pipeline.export import export_predictions
from pipeline.extract import CALIBRATED_WEIGHTS, extract_features, holds_targets
from pipeline.metrics import onsets as pick_onsets
from pipeline.preview import SAMPLE_RATE, impact_sound, onset_track
from pipeline.run_features import check_cache
from pipeline.timeline import covered_onsets, join_clips
from tests.cachekit import calibrated_caches_and_head
from tests.mediakit import make_video, ssv2_entry

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32               # model3d_1 at 32x32: features [48, 512]
W, H = 64, 48
N_TRAIN, N_VAL = 4, 3
FPS = 12


def moving_frames(n: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, H, W, 3]: a bright square sliding across a dark frame (any n, unlike index_frame)."""
    frames = np.full((n, H, W, 3), 30, np.uint8)
    rng = np.random.default_rng(seed)
    x = (np.arange(n) * 3 + rng.integers(0, W)) % (W - 12)
    for j in range(n):
        frames[j, 18:30, x[j]:x[j] + 12] = 220
    return frames


def remux(src: Path, dst: Path, audio: str = "drop") -> Path:
    """The same video packets in a new file: audio "drop" (no audio stream) or "silent" (an Opus
    stream of zeros). The frames decode exactly as the source's."""
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        vin = i.streams.video[0]
        vout = o.add_stream_from_template(vin)
        a = o.add_stream("libopus", rate=48000) if audio == "silent" else None    # every stream before muxing
        seconds = 5.0
        for packet in i.demux(vin):
            if packet.dts is None:
                continue
            packet.stream = vout
            o.mux(packet)
        if a is not None:
            for lo in range(0, int(seconds * 48000), 960):
                frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="flt", layout="mono")
                frame.sample_rate, frame.pts = 48000, lo
                o.mux(a.encode(frame))
            o.mux(a.encode(None))
    return dst


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny videos with sound -> train/val caches (random init, calibrated) -> a head trained 1 epoch."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predict")
    videos = root / "videos"
    videos.mkdir()
    splits = {"train": [], "val": []}
    for i in range(N_TRAIN + N_VAL):
        vid = str(500 + i)
        make_video(videos / f"{vid}.webm", seconds=4.5, width=W, height=H, impulses=(0.5 + 0.4 * i, 2.5),
                   frames=moving_frames(54, seed=i))
        splits["train" if i < N_TRAIN else "val"].append(ssv2_entry(vid, SOUND12[i % 12]))
    calibrated_caches_and_head(root, videos, splits, SIZE, epochs=1, batch_size=4, hidden=8, layers=1,
                               input="features")
    return root


@pytest.fixture(scope="module")
def silent_copies(setup):
    """The validation videos again: the first without an audio stream, the others with silent audio."""
    folder = setup / "silent"
    folder.mkdir()
    for k, entry in enumerate(json.loads((setup / "val.json").read_text())):
        name = f"{entry['id']}.webm"
        remux(setup / "videos" / name, folder / name, "drop" if k == 0 else "silent")
    return folder


def test_without_audio_the_predictions_equal_those_with_audio(setup, silent_copies, tmp_path):
    with_audio = export_predictions(run=setup / "run", out=tmp_path / "a", videos=setup / "videos",
                                    annotations=setup / "val.json", plots=0, progress=False)
    without = export_predictions(run=setup / "run", out=tmp_path / "b", videos=silent_copies,
                                 annotations=setup / "val.json", plots="all", targets=False, progress=False)
    assert with_audio["clips"] == without["clips"] == N_VAL and without["targets"] is False
    with h5py.File(tmp_path / "a" / "predictions.h5") as a, h5py.File(tmp_path / "b" / "predictions.h5") as b:
        np.testing.assert_allclose(b["pred"][:], a["pred"][:], atol=1e-6)
        assert "target" in a and "target" not in b
    cache = FeatureCache(tmp_path / "b" / "cache")
    assert not holds_targets(cache.config) and holds_targets(FeatureCache(setup / "val").config)
    assert not cache.envelopes.any()
    # no metric is invented: no metrics.json, a report that says why, plots of the prediction alone
    assert (tmp_path / "a" / "metrics.json").is_file() and not (tmp_path / "b" / "metrics.json").exists()
    report = (tmp_path / "b" / "report.md").read_text()
    assert "No metrics" in report and "seed_score" not in report and "pearson" not in report
    assert "No metrics" in (tmp_path / "b" / "report.html").read_text()
    assert len(list((tmp_path / "b" / "plots").glob("*.png"))) == N_VAL
    header = next(csv.reader(open(tmp_path / "b" / "predictions.csv")))
    assert header[:3] == ["id", "label", "length"] and not any(h.startswith("target_") for h in header)
    for name in ("timelines.h5", "timelines.csv", "onsets.csv", "onsets.json"):
        assert (tmp_path / "a" / name).is_file() and (tmp_path / "b" / name).is_file(), name
    # with audio, the same files are there for a cache that reads it: an empty set of them is an error
    with pytest.raises(FoleyError, match="foleycache predict"):
        export_predictions(run=setup / "run", out=tmp_path / "c", videos=silent_copies,
                           annotations=setup / "val.json", plots=0, progress=False)


def test_a_cache_without_targets_cannot_be_trained_on(setup, silent_copies, tmp_path):
    extract_features(videos=silent_copies, annotations=setup / "val.json", out=tmp_path / "nt", size=SIZE,
                     checkpoint=setup / "train" / CALIBRATED_WEIGHTS, fmt="hdf5", targets=False, progress=False)
    assert FeatureCache(tmp_path / "nt").config["targets"] == "none"
    p = subprocess.run([sys.executable, "-m", "pipeline", "train-head", "--train-cache", tmp_path / "nt",
                        "--val-cache", tmp_path / "nt", "--out", tmp_path / "run", "--quiet"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, p.stderr
    assert "holds no targets" in p.stderr and "Traceback" not in p.stderr


def test_finetune_refuses_a_head_trained_without_targets(setup, tmp_path):
    from pipeline.finetune import _init_head_defaults
    ckpt = torch.load(setup / "run" / "checkpoint-best.pt", weights_only=True)
    ckpt["cache_config"]["targets"] = "none"
    torch.save(ckpt, tmp_path / "head.pt")
    with pytest.raises(FoleyError, match="holds no targets"):
        _init_head_defaults(tmp_path / "head.pt")


@pytest.fixture(scope="module")
def minute(setup, tmp_path_factory):
    """A 60 s video without an audio stream, predicted in windows every 2 s, with a preview."""
    folder = tmp_path_factory.mktemp("minute")
    (folder / "videos").mkdir()
    make_video(folder / "videos" / "long.mp4", seconds=60, width=W, height=H, with_audio=False,
               frames=moving_frames(720))
    summary = export_predictions(run=setup / "run", out=folder / "out", videos=folder / "videos",
                                 annotations="none", window_stride=2.0, plots=0, preview=1, targets=False,
                                 progress=False)
    return folder / "out", summary


def test_a_minute_without_audio_gives_one_timeline_of_720_values(minute):
    out, summary = minute
    # windows at 0, 2, ..., 58 s (the last holds the final 2 s: 24 real frames)
    assert summary["clips"] == 30 and summary["videos"] == 1
    with h5py.File(out / "timelines.h5") as f, h5py.File(out / "predictions.h5") as p:
        assert [v.decode() for v in f["video"][:]] == ["long"]
        assert list(f["offset"][:]) == [0, 720] and f.attrs["fps"] == FPS
        timeline = f["pred"][:]
        ids, pred = [x.decode() for x in p["id"][:]], p["pred"][:]
    assert timeline.shape == (720,) and np.isfinite(timeline).all()
    window = {int(i.split("@")[1]) / 1000: pred[k] for k, i in enumerate(ids)}
    # the rule: frame j from the window where it is most central, the earlier on a tie
    assert timeline[486] == window[38.0][30]        # 40.5 s: frame 30 of the 38 s window (centre 23.5)
    assert timeline[492] == window[40.0][12]        # 41.0 s: frames 36 / 12 of 38 / 40 s, equally central
    assert timeline[5] == window[0.0][5] and timeline[719] == window[58.0][23]   # centre 11.5 of 24 frames
    rows = list(csv.DictReader(open(out / "timelines.csv")))
    assert len(rows) == 720 and rows[486]["time_s"] == "40.5000"


def test_onsets_are_the_metrics_peaks_in_seconds_from_the_start(minute):
    out, summary = minute
    with h5py.File(out / "timelines.h5") as f:
        timeline = f["pred"][:]
    frames, heights = pick_onsets(timeline)
    rows = list(csv.DictReader(open(out / "onsets.csv")))
    assert [int(r["frame"]) for r in rows] == list(frames) and summary["onsets"] == len(rows)
    for r, f, h in zip(rows, frames, heights):
        assert r["video"] == "long" and float(r["time_s"]) == pytest.approx(f / FPS, abs=1e-4)
        assert float(r["strength"]) == pytest.approx(h, abs=1e-4)
    record = json.loads((out / "onsets.json").read_text())
    assert record["fps"] == FPS and len(record["onsets"]) == len(rows)
    assert record["peak_params"] == {"height": 0.2, "prominence": 0.15, "distance": 2}


def test_the_preview_plays_with_a_sound_track(minute):
    out, summary = minute
    mp4 = out / "previews" / "long.mp4"
    assert summary["previews"] == 1 and mp4.is_file()
    with av.open(str(mp4)) as c:
        assert {s.type for s in c.streams} == {"video", "audio"}
        assert c.duration / 1e6 == pytest.approx(60.0, abs=0.2)
        assert sum(1 for _ in c.decode(video=0)) == 720
    with av.open(str(mp4)) as c:
        audio = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])
    assert audio.size == pytest.approx(60 * SAMPLE_RATE, rel=0.01)


def test_the_sound_track_has_an_impact_at_each_onset_scaled_by_its_strength():
    track = onset_track(np.array([1.0, 2.5]), np.array([1.0, 0.25]), seconds=4.0)
    assert track.shape == (4 * SAMPLE_RATE,) and np.abs(track).max() <= 1.0
    n = impact_sound().size
    first = np.abs(track[SAMPLE_RATE:SAMPLE_RATE + n]).max()
    second = np.abs(track[int(2.5 * SAMPLE_RATE):int(2.5 * SAMPLE_RATE) + n]).max()
    assert second == pytest.approx(first / 4, rel=1e-5)
    assert not track[:SAMPLE_RATE].any() and not track[SAMPLE_RATE + n:int(2.5 * SAMPLE_RATE)].any()


def test_bad_files_are_failure_lines_not_a_crash(setup, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "good.webm", seconds=4.5, width=W, height=H, with_audio=False, frames=moving_frames(54))
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "junk.mkv").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    summary = export_predictions(run=setup / "run", out=tmp_path / "out", videos=videos, annotations="none",
                                 window_stride=2.0, plots=0, targets=False, progress=False)
    assert summary["videos"] == 1 and summary["clips"] == 2
    failures = [json.loads(line) for line in open(tmp_path / "out" / "cache" / "failures.jsonl")]
    assert sorted(f["id"].split("@")[0] for f in failures) == ["empty", "junk"]
    assert all(f["reason"] in ("unreadable", "decode_error") for f in failures)
    (videos / "good.webm").unlink()
    p = subprocess.run([sys.executable, "-m", "pipeline", "predict", "--run", setup / "run", "--videos", videos,
                        "--out", tmp_path / "out2", "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and p.stderr.startswith("error:") and p.stderr.strip().count("\n") == 0, p.stderr


# ----------------------------------------------------------------------------- joining, on arrays

def _windows(starts, value_of=lambda k, i: 100 * k + i, length=48):
    origins = [Annotation(f"v@{int(s * 1000)}", "", "", None, video="v.mp4", start=float(s)) for s in starts]
    pred = np.array([[value_of(k, i) for i in range(48)] for k in range(len(starts))], np.float32)
    return pred, np.full(len(starts), length), origins, [a.id for a in origins]


def test_joining_takes_each_frame_from_the_window_where_it_is_most_central():
    pred, length, origins, ids = _windows([0, 2, 4])
    (t,) = join_clips(pred, length, origins, FPS, ids)
    assert t.video == "v" and len(t.pred) == 96 and t.clips == ids
    # window k covers 24k .. 24k+47, centre 24k+23.5: frames 0-35 from window 0 (36 ties with 1: earlier)
    expected = [i for i in range(36)] + [100 + j - 24 for j in range(36, 60)] + [200 + j - 48 for j in range(60, 96)]
    np.testing.assert_array_equal(t.pred, expected)


def test_a_window_at_40_s_puts_its_frame_6_at_40_5_s_and_gaps_stay_empty():
    pred, length, origins, ids = _windows([40, 50])            # stride 10 s > 4 s: a gap between them
    (t,) = join_clips(pred, length, origins, FPS, ids)
    assert len(t.pred) == 50 * FPS + 48 and t.pred[486] == 6 and 486 / FPS == 40.5
    assert np.isnan(t.pred[:480]).all() and np.isnan(t.pred[528:600]).all()
    # a start off the 12 fps grid moves to the nearest frame; a short last window keeps its real frames
    pred, length, origins, ids = _windows([0, 1.04])
    (t,) = join_clips(pred, length, origins, FPS, ids)
    assert len(t.pred) == 60 and t.pred[59] == 147               # 1.04 s * 12 = 12.48 -> from frame 12
    pred, length, origins, ids = _windows([0, 3])
    length[1] = 30
    (t,) = join_clips(pred, length, origins, FPS, ids)
    assert len(t.pred) == 36 + 30 and t.pred[65] == 129 and t.pred[36] == 36    # centre 14.5 of 30 frames


def test_onsets_are_picked_on_each_covered_stretch_alone():
    curve = np.zeros(60)
    curve[[10, 40]] = [0.9, 0.6]
    frames, heights = covered_onsets(curve)
    np.testing.assert_array_equal(frames, pick_onsets(curve)[0])
    gappy = curve.copy()
    gappy[20:30] = np.nan
    frames, heights = covered_onsets(gappy)
    assert list(frames) == [10, 40] and list(heights) == [0.9, 0.6]
    assert covered_onsets(np.full(5, np.nan))[0].size == 0


# ----------------------------------------------------------------------------- which features a run reads

def _config(**changes):
    config = {"backbone": "model3d_1", "weights_sha256": "w", "frames": 48, "fps": 12.0, "preprocess": {"size": 32},
              "dtype": "float16", "precision": "fp32", "envelope": {"reduce": "max"}}
    config.update(changes)
    return config


def test_a_run_reads_features_of_any_stride_and_refuses_other_features():
    """Old runs and caches hash the window stride into their fingerprints: what decides is the
    features' identity from the config (and the envelope where the cache has targets)."""
    run = SimpleNamespace(backbone=None, fingerprint="old-run-with-stride", dir="RUN",
                          cache_config=_config(windows={"stride_s": 4}))

    def cache(**changes):
        return SimpleNamespace(fingerprint="other", config=_config(**changes), path="CACHE")

    check_cache(run, cache())                                       # no windows
    check_cache(run, cache(windows={"stride_s": 2.0}))              # another stride
    check_cache(run, cache(targets="none", envelope={"reduce": "mean"}))   # no targets: the envelope is moot
    check_cache(run, cache(frames=48.0, fps=12))                    # 48 == 48.0
    for changes, word in [({"weights_sha256": "x"}, "weights_sha256"), ({"preprocess": {"size": 64}}, "preprocess"),
                          ({"dtype": "float32"}, "dtype"), ({"fps": 25.0}, "fps"), ({"pool": "2x2"}, "pool"),
                          ({"envelope": {"reduce": "mean"}}, "envelope")]:
        with pytest.raises(FoleyError, match=word):
            check_cache(run, cache(**changes))
    with pytest.raises(FoleyError, match="fingerprint"):            # a config without extraction settings
        check_cache(run, SimpleNamespace(fingerprint="other", config={"note": "by hand"}, path="CACHE"))


def test_the_same_command_again_reuses_the_cache_and_gives_the_same_timeline(setup, minute):
    out, _ = minute
    shards = {p: p.stat().st_mtime_ns for p in (out / "cache" / "shards").iterdir()}
    with h5py.File(out / "timelines.h5") as f:
        before = f["pred"][:]
    export_predictions(run=setup / "run", out=out, videos=out.parent / "videos", annotations="none",
                       window_stride=2.0, plots=0, targets=False, progress=False)
    assert {p: p.stat().st_mtime_ns for p in (out / "cache" / "shards").iterdir()} == shards
    with h5py.File(out / "timelines.h5") as f:
        np.testing.assert_array_equal(f["pred"][:], before)
