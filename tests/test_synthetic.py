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
from pipeline.errors import FoleyError
from pipeline.synthetic import TEMPLATES_12, make_synthetic, render_clip, write_video
from pipeline.synthetic import audio as A
from pipeline.synthetic import looks as L
from pipeline.synthetic import objects as O
from pipeline.synthetic.clip import render
from pipeline.synthetic.physics import Scene

TINY = (64, 48)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "d"
    # TINY frames: nothing below looks at pixels, and drawing 48 clips at 160x120 was the slowest fixture
    summary = make_synthetic(out, n_train=36, n_val=12, seed=3, jobs=2, progress=False, size=TINY)
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


# --- the package's layout -----------------------------------------------------------------------
PIPELINE_ORDER = ["physics", "raster", "objects", "scenes", "looks", "frames", "audio", "clip", "encode", "dataset"]


def test_modules_import_in_pipeline_order():
    """Each module of pipeline.synthetic imports only the ones before it in the order a clip is made."""
    import ast
    from pathlib import Path

    root = Path(S.__file__).parent
    assert sorted(p.stem for p in root.glob("*.py") if p.stem != "__init__") == sorted(PIPELINE_ORDER)
    for i, name in enumerate(PIPELINE_ORDER):
        tree = ast.parse((root / f"{name}.py").read_text())
        used = {node.module.rsplit(".", 1)[1] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline.synthetic.")}
        assert used <= set(PIPELINE_ORDER[:i]), (name, used - set(PIPELINE_ORDER[:i]))


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
        out = render(spec)
        x = out["audio"][0]
        for t, v in zip(out["events"], out["speeds"]):
            i = int(t * 44100)
            peaks.append(np.abs(x[i:i + int(0.015 * 44100)]).max())
            speeds.append(v)
    r = np.corrcoef(peaks, speeds)[0, 1]
    assert len(peaks) >= 8 and r > 0.9, r


def test_every_template_renders_with_its_events():
    for i, template in enumerate(TEMPLATES_12 + S.OTHER_TEMPLATES):
        out = render(_spec(template, seed=100 + i, duration=4.0, fps=12))
        assert len(out["placeholders"]) == template.count("[")
        if template in TEMPLATES_12:
            assert out["events"], template
        else:
            assert out["events"] == [], template


def test_impacts_are_visible():
    """Frames right after an impact change more than the average frame (stop, squash, dust)."""
    out = render(_spec("Dropping [something] in front of [something]", seed=5, duration=4.0, fps=12,
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


# --- looks and variety -------------------------------------------------------------------------
SMALL = (96, 72)


def _look_stats(look, n=24, seed=3):
    """Render (no encoding) n sound clips of a look: per-clip picture statistics and event timings."""
    specs = [sp for sp in S.make_specs(n, 0, seed, SMALL, look) if sp["template"] in TEMPLATES_12]
    pics, first, counts = [], [], []
    for sp in specs:
        out = render(sp)
        f = out["frames"].astype(np.float32)
        pics.append((f.mean(), np.abs(np.diff(f, axis=2)).mean(), np.abs(np.diff(f, axis=0)).mean()))
        first += out["events"][:1]
        counts.append(len(out["events"]))
    return np.array(pics), np.array(first), np.array(counts), specs


def test_looks_api_and_ids():
    assert S.DEFAULT_LOOK in S.LOOKS and S.HELDOUT_LOOK in S.LOOKS and S.DEFAULT_LOOK != S.HELDOUT_LOOK
    home, held = (S.LOOK_FAMILIES[k] for k in (S.DEFAULT_LOOK, S.HELDOUT_LOOK))
    for axis in ("walls", "floors", "palettes", "balls", "boxes"):   # the held-out look shares none of them
        assert not set(home[axis]) & set(held[axis]), axis
    a, b = S.make_specs(30, 10, 0, TINY), S.make_specs(30, 10, 0, TINY, S.HELDOUT_LOOK)
    assert not {s["id"] for s in a} & {s["id"] for s in b}            # same seed, other look: no shared id
    assert not {s["seed"] for s in a} & {s["seed"] for s in b}        # ... and no shared clip
    assert all(s["look"] == S.HELDOUT_LOOK for s in b)
    with pytest.raises(FoleyError, match="unknown look"):
        S.make_specs(1, 1, 0, TINY, "disco")
    from pipeline.cli import make_synthetic_cmd
    help_text = next(p for p in make_synthetic_cmd.params if p.name == "look").help
    assert all(look in help_text for look in S.LOOKS)


def test_several_looks_share_a_dataset_out_as_their_own_datasets_would_draw_them():
    mixed = S.make_specs(5, 2, 0, TINY, "home,night")
    home, night = S.make_specs(3, 1, 0, TINY, "home"), S.make_specs(2, 1, 0, TINY, "night")
    assert [s["id"] for s in mixed] == ([s["id"] for s in home + night if s["split"] == "train"]
                                        + [s["id"] for s in home + night if s["split"] == "validation"])
    assert {s["look"] for s in mixed} == {"home", "night"}
    for bad in ("home,home", "home,disco", ","):
        with pytest.raises(FoleyError):
            S.make_specs(2, 1, 0, TINY, bad)


def test_two_looks_differ_while_timing_stays_alike():
    pa, fa, ca, sa = _look_stats(S.DEFAULT_LOOK)
    pb, fb, cb, sb = _look_stats(S.HELDOUT_LOOK)
    # Pictures: the held-out look is darker on average, more textured (photos, bricks) and noisier.
    assert pb[:, 0].mean() < pa[:, 0].mean() - 10
    assert pb[:, 1].mean() > 1.5 * pa[:, 1].mean()
    assert pb[:, 2].mean() > 2 * pa[:, 2].mean()
    # Events: when and how many stay alike (the physics does not draw from the look's stream).
    assert abs(fa.mean() - fb.mean()) < 0.5 and 0.7 < cb.mean() / ca.mean() < 1.4
    assert np.mean(fa < 4.0) >= 0.85 and np.mean(fb < 4.0) >= 0.85
    names = {p for s in sb for p in render(dict(s, size=TINY))["placeholders"]}
    assert names & set(S.LOOK_FAMILIES[S.HELDOUT_LOOK]["balls"] + S.LOOK_FAMILIES[S.HELDOUT_LOOK]["boxes"])


@pytest.mark.parametrize("look", ["home", "workshop", "night", "classic"])
def test_each_look_keeps_impacts_at_the_events(look):
    """Rendered audio of every look: the envelope's main peak within +-1 frame of an event (>= 90%)."""
    media = pytest.importorskip("pipeline.media")
    hits = total = 0
    for sp in S.make_specs(24, 0, 5, (32, 24), look):
        out = render(sp)
        early = [t for t in out["events"] if t < 4.0]
        if not early:
            continue
        env = media.audio_envelope(out["audio"][0], out["sample_rate"], frames=48, fps=12, reduce="max")
        length = min(48, len(out["frames"]) * 12 // out["fps"])
        peak = int(np.argmax(env[:length]))
        hits += min(abs(peak - int(t * 12)) for t in early) <= 1
        total += 1
    assert total >= 20 and hits >= 0.9 * total, (hits, total)


def _with(spec, **changes):
    """Render spec with some drawn variety settings replaced: (render of the base, render changed)."""
    base = render(spec)
    variety = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base["variety"].items()}
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            variety[outer][inner] = value
        else:
            variety[key] = value
    return base, render(dict(spec, variety=variety))


QUIET = {"blur": 0.0, "noise": 0.0, "occluder": None, "distractor": None}


def _quiet_spec(template="Dropping [something] onto [something]", look="home", **kw):
    """A spec whose look is stripped of motion extras (no blur, noise, occluder, distractor, shake)."""
    spec = _spec(template, fps=12, duration=4.0, size=SMALL, look=look, **kw)
    v = render(spec)["variety"]
    v.update(QUIET)
    v["camera"] = dict(v["camera"], shake=0.0)
    return dict(spec, variety=v)


def test_variety_axes_change_what_they_claim():
    spec = _quiet_spec()
    base = render(spec)
    f0 = base["frames"].astype(np.float32)
    rel = (np.array(base["events"]) * 12).astype(int)
    # Quiet: nothing moves before the object is released, so the first frames are identical.
    assert np.array_equal(f0[0], f0[1])
    # Brightness scales the picture; a tint shifts the colour balance.
    _, dim = _with(spec, **{"light": dict(base["variety"]["light"], brightness=0.5 * base["variety"]["light"]["brightness"])})
    ratio = dim["frames"].astype(np.float32).mean() / f0.mean()
    assert 0.4 < ratio < 0.65, ratio
    _, red = _with(spec, light=dict(base["variety"]["light"], tint=[1.3, 1.0, 0.7]))
    rgb0, rgb1 = f0.mean((0, 1, 2)), red["frames"].astype(np.float32).mean((0, 1, 2))
    assert rgb1[0] / rgb1[2] > 1.3 * rgb0[0] / rgb0[2]
    # Camera shake moves the whole picture every frame; framing puts the table edge where floor_at says.
    _, shaky = _with(spec, camera=dict(base["variety"]["camera"], shake=4.0, zoom=1.3))
    fs = shaky["frames"].astype(np.float32)
    assert np.abs(fs[1] - fs[0]).mean() > 1.0
    # Sensor noise changes every frame a little, everywhere.
    _, noisy = _with(spec, noise=5.0)
    dn = np.abs(noisy["frames"][1].astype(np.float32) - noisy["frames"][0])
    assert (dn > 0).mean() > 0.8
    # A distractor (silent motion) changes the picture, never the events or the sound.
    for kind in L.DISTRACTORS:
        _, busy = _with(spec, distractor={"kind": kind, "t0": 0.2, "seconds": 2.0, "x": 0.3, "y": 0.4,
                                          "size": 1.0, "direction": 1})
        assert busy["events"] == base["events"] and np.array_equal(busy["audio"], base["audio"]), kind
        assert np.abs(busy["frames"][:16].astype(np.float32) - f0[:16]).mean() > 0.05, kind
    # An occluder covers a fixed part of the frame (the same pixels in every frame it covers).
    _, occ = _with(spec, occluder={"kind": "post", "x": 0.1, "width": 0.12, "top": 0.0, "colour": [20, 200, 40]})
    fo = occ["frames"].astype(np.float32)
    strip = fo[:, :, int(0.07 * SMALL[0]):int(0.13 * SMALL[0])]
    assert np.abs(strip - f0[:, :, int(0.07 * SMALL[0]):int(0.13 * SMALL[0])]).mean() > 20
    assert strip.std(axis=0).mean() < 1.0 and occ["events"] == base["events"]
    # Motion blur leaves a trail while the object falls: far more change than while it is held still.
    _, blurred = _with(spec, blur=0.8)
    fb = blurred["frames"].astype(np.float32)
    k = rel[0]                                      # the last frame before the impact: falling fastest
    assert np.abs(fb[k] - f0[k]).sum() > 3 * np.abs(fb[1] - f0[1]).sum()


def test_object_shapes_sizes_and_palettes():
    scene = Scene(320.0, 200.0, 1800.0, 4.0)
    rng = np.random.default_rng(0)
    for look in S.LOOKS:
        scene.family = S.LOOK_FAMILIES[look]
        scene.variety = L.draw_variety(rng, look)
        for _ in range(30):
            name, shape, hx, hy, colour, _ = O.make_object(rng, scene)
            assert name in scene.family["balls" if shape == "ball" else "boxes"]
            if O.VISUALS.get(name) == "bottle":
                assert hy > hx                                         # bottles stand tall
    cols = {}
    for palette in ("pastel", "dark", "metal"):
        scene.variety = dict(scene.variety, palette=palette)
        c = np.array([O.colour(rng, scene) for _ in range(50)])
        cols[palette] = (c.mean(), (c.max(1) - c.min(1)).mean())
    assert cols["pastel"][0] > cols["dark"][0] + 60                   # pastel is light, dark is dark
    assert cols["metal"][1] < 20                                       # metal is grey


def test_walls_and_floors_differ():
    rng = np.random.default_rng(1)
    walls = {kind: L.wall(rng, kind, 60, 80, 0.25) for fam in S.LOOK_FAMILIES.values() for kind in fam["walls"]}
    for kind, img in walls.items():
        assert img.shape == (60, 80, 3) and np.isfinite(img).all(), kind
    kinds = sorted(walls)
    for i, a in enumerate(kinds):
        for b in kinds[i + 1:]:
            assert np.abs(walls[a] - walls[b]).mean() > 5, (a, b)
    img = np.full((60, 80, 3), 128, np.float32)
    for kind in {k for fam in S.LOOK_FAMILIES.values() for k in fam["floors"]}:
        L.floor(rng, kind, img, 40, 0.25)
        assert np.abs(img[40:] - 128).mean() > 3 and np.all(img[:40] == 128), kind


# --- recorded sounds (--sounds DIR) --------------------------------------------------------------
SAMPLE_RATE = 22050


def _impact_wave(peak, freq, seconds=0.4, delay=0.01):
    """A recorded-like impact: a little silence, then a decaying tone + noise; int16 [n]."""
    rng = np.random.default_rng(int(freq))
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    x = (np.sin(2 * np.pi * freq * t) + 0.5 * rng.standard_normal(t.size)) * np.exp(-t / 0.05)
    x = np.concatenate([np.zeros(int(delay * SAMPLE_RATE)), x])
    return (peak * 32767 * x / np.abs(x).max()).astype(np.int16)


def _write_wav(path, samples):
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(samples.tobytes())


def _write_flac(path, samples):
    with av.open(str(path), "w", format="flac") as c:
        stream = c.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        c.mux(stream.encode(frame))
        c.mux(stream.encode())


@pytest.fixture(scope="module")
def sounds_dir(tmp_path_factory):
    """wood/ (three strengths, WAV), glass/ (three strengths, one FLAC) and a file to ignore."""
    root = tmp_path_factory.mktemp("sounds")
    for group, freq in (("wood", 600.0), ("glass", 2500.0)):
        (root / group).mkdir()
        for name, peak in (("soft", 0.2), ("med", 0.5), ("hard", 0.9)):
            path = root / group / f"{group}-{name}.wav"
            (_write_flac if group == "glass" and name == "med" else _write_wav)(
                path.with_suffix(".flac") if group == "glass" and name == "med" else path,
                _impact_wave(peak, freq * (1 + peak)))
    (root / "drumkit.xml").write_text("<drumkit/>")
    return root


def test_load_sounds_groups_by_folder_and_strength(sounds_dir):
    bank = S.load_sounds(sounds_dir)
    assert [g["name"] for g in bank["groups"]] == ["glass", "wood"]
    for g in bank["groups"]:
        assert [p.rsplit("-", 1)[1].split(".")[0] for p in g["files"]] == ["soft", "med", "hard"]
    wave = A._sample_wave(bank["groups"][1]["files"][0], 44100)
    assert wave.dtype == np.float32 and np.abs(wave).max() == pytest.approx(1.0)
    assert np.argmax(np.abs(wave) >= 0.1) <= int(0.003 * 44100)      # trimmed to its onset


def test_sounds_errors_name_the_folder_or_file(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    with pytest.raises(FoleyError, match="empty.*no audio files"):
        S.load_sounds(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    _write_wav(tmp_path / "bad" / "good.wav", _impact_wave(0.5, 500.0))
    (tmp_path / "bad" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    with pytest.raises(FoleyError, match="broken.wav"):
        S.load_sounds(tmp_path / "bad")
    (tmp_path / "quiet").mkdir()
    _write_wav(tmp_path / "quiet" / "zero.wav", np.zeros(2000, np.int16))
    with pytest.raises(FoleyError, match="zero.wav.*silent"):
        S.load_sounds(tmp_path / "quiet")


def test_sample_loudness_follows_impact_speed(sounds_dir):
    bank = S.load_sounds(sounds_dir)
    peaks, speeds, used = [], [], set()
    for seed in range(4):
        out = render(_spec("Throwing [something] against [something]", seed=seed, duration=5.0), bank)
        assert out["sound"]["source"] == "samples" and len(out["sound"]["samples"]) == len(out["events"])
        used |= set(out["sound"]["samples"])
        x = out["audio"][0]
        for t, v in zip(out["events"], out["speeds"]):
            i = int(t * 44100)
            peaks.append(np.abs(x[i:i + int(0.015 * 44100)]).max())
            speeds.append(v)
    r = np.corrcoef(peaks, speeds)[0, 1]
    assert len(peaks) >= 8 and r > 0.9, r
    assert used <= {str(p.relative_to(sounds_dir)) for p in sounds_dir.rglob("*.*") if p.suffix != ".xml"}


def test_make_synthetic_with_sounds_and_a_heldout_look(tmp_path, sounds_dir):
    """--sounds end to end (envelope peaks at the events), a validation-only held-out set, and the
    same seed giving the same files whatever the number of jobs."""
    media = pytest.importorskip("pipeline.media")
    a, b = tmp_path / "a", tmp_path / "b"
    make_synthetic(a, n_train=0, n_val=12, seed=4, jobs=1, progress=False, size=TINY,
                   look=S.HELDOUT_LOOK, sounds=sounds_dir)
    make_synthetic(b, n_train=0, n_val=12, seed=4, jobs=2, progress=False, size=TINY,
                   look=S.HELDOUT_LOOK, sounds=str(sounds_dir))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert _json(a / S.TRAIN_JSON) == [] and len(_json(a / S.VAL_JSON)) == 13 and _json(a / S.LABELS_JSON)
    manifest, events = _json(a / S.DATASET_JSON), _json(a / S.EVENTS_JSON)
    assert manifest["look"] == S.HELDOUT_LOOK and manifest["sounds"] == str(sounds_dir.resolve())
    hits = total = 0
    for cid, info in manifest["clips"].items():
        assert info["look"] == S.HELDOUT_LOOK and info["variety"]["look"] == S.HELDOUT_LOOK
        assert info["sound"]["source"] == "samples" and info["sound"]["group"] in ("glass", "wood")
        if info["variety"]["wall"] == "photo":                         # the photograph used is recorded
            assert info["variety"]["wall_photo"] in L.PHOTO_WALLS
        early = [t for t in events[cid] if t < 4.0]
        if cid in manifest["faulty"] or not early:
            continue
        x, rate = _audio(a / "videos" / f"{cid}.webm")
        env = media.audio_envelope(x, rate, frames=48, fps=12, reduce="max")
        length = min(48, info["frames"] * 12 // info["fps"])
        hits += min(abs(int(np.argmax(env[:length])) - int(t * 12)) for t in early) <= 1
        total += 1
    assert total >= 8 and hits >= 0.9 * total, (hits, total)


def test_cli_look_and_sounds(tmp_path, sounds_dir):
    from pipeline.cli import cli

    out = tmp_path / "d"
    result = CliRunner().invoke(cli, ["make-synthetic", "--out", str(out), "--train", "0", "--val", "1",
                                      "--look", "night", "--sounds", str(sounds_dir), "--jobs", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert _json(out / S.DATASET_JSON)["look"] == "night"
    (tmp_path / "nothing").mkdir()
    result = CliRunner().invoke(cli, ["make-synthetic", "--out", str(tmp_path / "e"), "--train", "1", "--val", "0",
                                      "--sounds", str(tmp_path / "nothing"), "--quiet"])
    assert result.exit_code != 0 and "no audio files" in result.output and "Traceback" not in result.output
