"""make-synthetic: SSv2-shaped output, decodable media, envelope peaks on impacts, faults, determinism.

One dataset of the acceptance size (36 train / 12 val, seed 3) is built once per module, at 160x120
to stay fast (events and audio do not depend on the frame size); the other tests use tiny frames.
"""
from __future__ import annotations

import json
import re

import av
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import synthetic as S
from pipeline.synthetic import TEMPLATES_12, make_synthetic, render_clip, write_video

TINY = (64, 48)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "d"
    summary = make_synthetic(out, n_train=36, n_val=12, seed=3, jobs=2, progress=False, size=(160, 120))
    return out, summary


def _json(path):
    return json.loads(path.read_text())


def _streams(path):
    """(has video, has audio, video frames decoded) or None when the file cannot be decoded."""
    try:
        with av.open(str(path)) as c:
            has_v, has_a = bool(c.streams.video), bool(c.streams.audio)
            n = sum(1 for _ in c.decode(video=0)) if has_v else 0
        return has_v, has_a, n
    except av.FFmpegError:
        return None


def _audio(path):
    """First channel float [S] and its sample rate."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        planar = av.AudioResampler(format="fltp")        # any codec's samples as float [C, n]
        x = np.concatenate([g.to_ndarray() for f in c.decode(stream) for g in planar.resample(f)], axis=1)
        return x[0], stream.rate


# --- SSv2 files ----------------------------------------------------------------------------------
def test_ssv2_jsons(dataset):
    out, summary = dataset
    train, val = _json(out / S.TRAIN_JSON), _json(out / S.VAL_JSON)
    labels, events = _json(out / S.LABELS_JSON), _json(out / S.EVENTS_JSON)
    entries = train + val
    ids = [e["id"] for e in entries]
    assert len(ids) == len(set(ids)) and all(re.fullmatch(r"[1-9][0-9]*", i) for i in ids)
    for e in entries:
        assert set(e) == {"id", "label", "template", "placeholders"}
        assert e["template"].count("[") == len(e["placeholders"])
        assert "[" not in e["label"] and all(p.lower() in e["label"].lower() for p in e["placeholders"])
        assert labels[e["template"].replace("[", "").replace("]", "")].isdigit()
        assert (out / "videos" / f"{e['id']}.webm").is_file()
        assert all(0 <= t for t in events[e["id"]]) and events[e["id"]] == sorted(events[e["id"]])
    for split in (train, val):
        assert {e["template"] for e in split} >= set(TEMPLATES_12)          # all 12, in both splits
        assert any(e["template"] not in TEMPLATES_12 for e in split)       # something to filter out
    sound = [e for e in train if e["template"] in TEMPLATES_12]
    assert len(sound) == 36 and len([e for e in val if e["template"] in TEMPLATES_12]) == 12
    counts = {t: sum(e["template"] == t for e in sound) for t in TEMPLATES_12}
    assert set(counts.values()) == {3}                                     # balanced
    assert sorted(int(v) for v in labels.values()) == list(range(len(labels)))
    # Mostly, the first impact is inside the 4 s the model sees; non-sound clips have none.
    first = [events[e["id"]][0] for e in sound + val if e["template"] in TEMPLATES_12 and events[e["id"]]]
    assert np.mean(np.array(first) < 4.0) >= 0.85
    assert all(events[e["id"]] == [] for e in entries if e["template"] not in TEMPLATES_12)
    manifest = _json(out / S.DATASET_JSON)
    assert manifest["seed"] == 3 and set(manifest["clips"]) == set(ids)
    assert summary["train"] == manifest["counts"]["train"]


def test_annotations_load_with_the_class_filter(dataset):
    data = pytest.importorskip("pipeline.data")
    out, _ = dataset
    kept = data.load_annotations(out / S.TRAIN_JSON, "sound12", out / S.LABELS_JSON)
    assert len(kept) == 36 and {a.template for a in kept} == set(TEMPLATES_12)


# --- media ---------------------------------------------------------------------------------------
def test_most_videos_decode_with_both_streams(dataset):
    out, _ = dataset
    ids = list(_json(out / S.EVENTS_JSON))
    good = [cid for cid in ids if (r := _streams(out / "videos" / f"{cid}.webm")) and r[0] and r[1] and r[2] >= 12]
    assert len(good) >= 0.85 * len(ids)
    assert len(good) < len(ids)


def test_faulty_files_are_faulty(dataset):
    out, _ = dataset
    faulty = _json(out / S.DATASET_JSON)["faulty"]
    assert {f["fault"] for f in faulty.values()} == set(S.FAULT_KINDS)    # 36/12 clips show all three
    for cid, f in faulty.items():
        path = out / "videos" / f"{cid}.webm"
        if f["fault"] == "no_audio_stream":
            assert _streams(path)[:2] == (True, False) and f["reason"] == "no_audio_stream"
        elif f["fault"] == "silent_audio":
            x, _ = _audio(path)
            assert x.size > 0 and np.abs(x).max() == 0 and f["reason"] == "silent_audio"
        else:
            has_v, _, n = _streams(path)
            info = _json(out / S.DATASET_JSON)["clips"][cid]
            assert has_v and n < info["frames"] - 2 and f["reason"] == "decode_error"


def test_media_reports_the_recorded_reasons(dataset):
    media = pytest.importorskip("pipeline.media")
    out, _ = dataset
    for cid, f in _json(out / S.DATASET_JSON)["faulty"].items():
        with pytest.raises(media.FaultyVideo) as e:
            media.load_clip(out / "videos" / f"{cid}.webm", size=32, threads=1)
        assert e.value.reason == f["reason"], e.value


def test_envelope_peak_is_an_impact(dataset):
    """Data-contract envelope of clean clips: its argmax lies within +-1 frame of an impact."""
    media = pytest.importorskip("pipeline.media")
    out, _ = dataset
    events, manifest = _json(out / S.EVENTS_JSON), _json(out / S.DATASET_JSON)
    hits, total = 0, 0
    for cid, times in events.items():
        early = [t for t in times if t < 4.0]
        if cid in manifest["faulty"] or not early:
            continue
        x, rate = _audio(out / "videos" / f"{cid}.webm")
        env = media.audio_envelope(x, rate, frames=48, fps=12, reduce="max")
        length = min(48, manifest["clips"][cid]["frames"] * 12 // manifest["clips"][cid]["fps"])
        peak = int(np.argmax(env[:length]))
        hits += min(abs(peak - int(t * 12)) for t in early) <= 1
        total += 1
    assert total >= 30 and hits >= 0.9 * total, (hits, total)


# --- clips ---------------------------------------------------------------------------------------
def _spec(template, **kw):
    return {"template": template, "seed": 11, "duration": 3.0, "fps": 25, "sample_rate": 44100,
            "channels": 1, "size": TINY, **kw}


def test_render_clip_is_pure_and_shaped():
    spec = _spec("Dropping [something] onto [something]")
    frames, audio, events, fps, rate = render_clip(spec)
    assert frames.dtype == np.uint8 and frames.shape == (75, 48, 64, 3)
    assert audio.dtype == np.float32 and audio.shape == (1, 3 * 44100) and np.abs(audio).max() <= 1
    assert (fps, rate) == (25, 44100) and events and events == sorted(events) and events[-1] < 3.0
    again = render_clip(dict(spec))
    assert np.array_equal(frames, again[0]) and np.array_equal(audio, again[1]) and events == again[2]
    # The physics does not depend on the frame size: same events at 320x240.
    assert render_clip(dict(spec, size=(320, 240)))[2] == events
    stereo = render_clip(dict(spec, channels=2))[1]
    assert stereo.shape == (2, 3 * 44100)


def test_loudness_follows_impact_speed():
    """Each impact's peak |x| is proportional to its speed (mono, no pan), far above the noise."""
    peaks, speeds = [], []
    for seed in range(4):
        spec = _spec("Throwing [something] against [something]", seed=seed, duration=5.0)
        out = S._render(spec)
        x = out["audio"][0]
        for t, v in zip(out["events"], out["speeds"]):
            i = int(t * 44100)
            peaks.append(np.abs(x[i:i + int(0.015 * 44100)]).max())
            speeds.append(v)
    r = np.corrcoef(peaks, speeds)[0, 1]
    assert len(peaks) >= 8 and r > 0.9, r


def test_every_template_renders_with_its_events():
    for i, template in enumerate(TEMPLATES_12 + S.OTHER_TEMPLATES):
        out = S._render(_spec(template, seed=100 + i, duration=4.0, fps=12))
        assert len(out["placeholders"]) == template.count("[")
        if template in TEMPLATES_12:
            assert out["events"], template
        else:
            assert out["events"] == [], template


def test_impacts_are_visible():
    """Frames right after an impact change more than the average frame (stop, squash, dust)."""
    out = S._render(_spec("Dropping [something] in front of [something]", seed=5, duration=4.0, fps=12,
                          size=(160, 120)))
    f = out["frames"].astype(np.float32)
    diff = np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3))             # [N-1]: change into frame i+1
    k = int(out["events"][0] * 12)                                      # last frame before the impact
    assert diff[k: k + 2].max() > 2 * np.median(diff)


# --- encoding ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,codecs,rate", [("webm", ("vp9", "opus"), 48000), ("mp4", ("h264", "aac"), 44100),
                                             ("mkv", ("vp9", "flac"), 44100)])
def test_write_video_roundtrip(tmp_path, fmt, codecs, rate):
    frames = np.zeros((24, 48, 64, 3), np.uint8)
    frames[:, 10:20, 10:20] = 200
    audio = np.zeros((2, 2 * 44100), np.float32)
    audio[:, 44100:44100 + 200] = 0.5
    path = tmp_path / f"a.{fmt}"
    write_video(path, frames, 12, audio, 44100, fmt, audio_codec="flac" if fmt == "mkv" else None)
    with av.open(str(path)) as c:
        assert (c.streams.video[0].codec_context.name, c.streams.audio[0].codec_context.name) == codecs
        assert c.streams.audio[0].channels == 2
        assert sum(1 for _ in c.decode(video=0)) == 24
    x, got_rate = _audio(path)
    assert got_rate == rate                                  # Opus decodes at 48 kHz, the others keep it
    assert abs(np.argmax(np.abs(x) > 0.25) / got_rate - 1.0) < 0.005
    silent = tmp_path / f"b.{fmt}"
    write_video(silent, frames, 12, None, None, fmt)
    assert _streams(silent) == (True, False, 24)
    again = tmp_path / f"c.{fmt}"
    write_video(again, frames, 12, audio, 44100, fmt, audio_codec="flac" if fmt == "mkv" else None)
    assert again.read_bytes() == path.read_bytes()           # bit-exact


def _frames(path):
    try:
        with av.open(str(path)) as c:
            return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float32)
    except av.FFmpegError:
        return None                                          # a deliberately truncated file


def _psnr(x, y):
    return 10 * np.log10(255.0 ** 2 / max(float(np.mean((x - y) ** 2)), 1e-12))


def test_mp4_dataset_and_determinism(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_synthetic(a, n_train=3, n_val=1, seed=7, fmt="mp4", jobs=1, progress=False, size=TINY)
    make_synthetic(b, n_train=3, n_val=1, seed=7, fmt="mp4", jobs=2, progress=False, size=TINY)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    specs = {s["id"]: s for s in S.make_specs(3, 1, 7, TINY)}
    for rel in files:                                        # independent of the number of jobs
        if rel.suffix != ".mp4":
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
        elif (a / rel).read_bytes() != (b / rel).read_bytes():
            # libx264 occasionally takes other, equally good decisions under load (seen in CI and
            # reproduced with jobs=1 too) though render_clip is pure (test above). Then each file
            # must still be an encoding of the same rendering: decoded frames within compression
            # noise of it, and nearer to it than to the rendering shifted by one frame either way.
            fa, fb = _frames(a / rel), _frames(b / rel)
            if fa is None or fb is None:                     # truncated on purpose: both unreadable
                assert fa is None and fb is None, rel
                continue
            src = S.render_clip(specs[rel.stem])[0].astype(np.float32)
            for f in (fa, fb):
                assert f.shape == src.shape, rel
                aligned = _psnr(f, src)
                assert aligned >= 28.0, (rel, aligned)
                assert aligned > max(_psnr(f[1:], src[:-1]), _psnr(f[:-1], src[1:])), rel
    manifest = _json(a / S.DATASET_JSON)
    reasons = {f["reason"] for f in manifest["faulty"].values()}
    assert manifest["format"] == "mp4" and reasons <= {"no_audio_stream", "silent_audio", "unreadable"}
    for cid, info in manifest["clips"].items():
        if cid not in manifest["faulty"]:
            has_v, has_a, n = _streams(a / "videos" / f"{cid}.mp4")
            assert has_v and has_a and n == info["frames"]
            assert _audio(a / "videos" / f"{cid}.mp4")[1] == info["sample_rate"]
    # Another seed gives another dataset; a re-run in place replaces the old one.
    make_synthetic(b, n_train=2, n_val=1, seed=8, fmt="webm", jobs=1, progress=False, size=TINY)
    assert not list((b / "videos").glob("*.mp4"))
    assert _json(b / S.EVENTS_JSON) != _json(a / S.EVENTS_JSON)


# --- command line --------------------------------------------------------------------------------
def test_cli(tmp_path):
    from pipeline.cli import cli

    out = tmp_path / "d"
    result = CliRunner().invoke(cli, ["make-synthetic", "--out", str(out), "--train", "2", "--val", "1",
                                      "--seed", "1", "--jobs", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (out / S.TRAIN_JSON).is_file() and (out / S.DATASET_JSON).is_file()
    assert len(list((out / "videos").glob("*.webm"))) == len(_json(out / S.EVENTS_JSON))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "precious.txt").write_text("keep me")
    result = CliRunner().invoke(cli, ["make-synthetic", "--out", str(tmp_path / "other"), "--train", "1",
                                      "--val", "1", "--quiet"])
    assert result.exit_code == 2 and "refusing" in result.output and "Traceback" not in result.output
    assert (tmp_path / "other" / "precious.txt").read_text() == "keep me"
