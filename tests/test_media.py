"""pipeline.media on real files encoded by the test suite (tests/mediakit.py)."""
import os

import av
import numpy as np
import pytest
import torch

from pipeline.media import (FaultyVideo, audio_envelope, load_clip, preprocess_frames, resize_short_side,
                            gaussian_smooth)
from tests.mediakit import impulse_audio, index_frame, make_video, read_index

# Impulses mid-window (i + 0.3) / 12 s, so each lands in one known frame despite smoothing.
IMPULSE_FRAMES = (7, 20, 33)
IMPULSES = tuple((i + 0.3) / 12 for i in IMPULSE_FRAMES)


def onset_frames(env, k=3):
    return sorted(np.argsort(env)[-k:].tolist())


@pytest.mark.parametrize("ext,fps,rate,channels,fmt", [
    (".webm", 12, 48000, 2, None),        # VP9 + Opus (Opus is always 48 kHz)
    (".mp4", 25, 44100, 1, None),         # H.264 + AAC
    (".mkv", 30, 44100, 2, "s16"),        # FLAC int16
    (".mkv", 25, 48000, 1, "s32"),        # FLAC 32-bit
    (".mov", 12, 44100, 1, "s16"),        # PCM int16
])
def test_impulses_land_in_their_frames(tmp_path, ext, fps, rate, channels, fmt):
    path = make_video(tmp_path / f"v{ext}", fps=fps, sample_rate=rate, channels=channels,
                      impulses=IMPULSES, audio_format=fmt)
    clip = load_clip(path, size=32)
    assert clip.length == 48 and clip.sample_rate == rate and clip.channels == channels
    assert onset_frames(clip.envelope) == list(IMPULSE_FRAMES)
    assert clip.envelope.max() == pytest.approx(1.0) and clip.envelope.min() >= 0.0
    assert clip.envelope.dtype == np.float32


def test_int16_and_float_audio_give_the_same_envelope(tmp_path):
    audio = impulse_audio(4.5, 44100, IMPULSES)
    a = load_clip(make_video(tmp_path / "i.mov", audio=audio, sample_rate=44100, audio_format="s16",
                             audio_codec="pcm_s16le"), size=32)
    b = load_clip(make_video(tmp_path / "f.mov", audio=audio, sample_rate=44100, audio_format="flt",
                             audio_codec="pcm_f32le"), size=32)
    np.testing.assert_allclose(a.envelope, b.envelope, atol=2e-3)


def test_sample_rates_agree(tmp_path):
    """The same sound at 44.1 and 48 kHz gives the same envelope (sigma scales with the rate)."""
    envs = []
    for rate in (44100, 48000):
        audio = impulse_audio(4.5, rate, IMPULSES, noise=0.0)
        envs.append(load_clip(make_video(tmp_path / f"r{rate}.mov", audio=audio, sample_rate=rate,
                                         audio_format="s16", audio_codec="pcm_s16le"), size=32).envelope)
    np.testing.assert_allclose(envs[0], envs[1], atol=0.03)


def test_file_envelope_equals_array_envelope(tmp_path):
    """load_clip(path) and audio_envelope(decoded samples) are the same math (lossless PCM)."""
    audio = impulse_audio(4.5, 44100, IMPULSES)
    path = make_video(tmp_path / "p.mov", audio=audio, sample_rate=44100, audio_format="s16",
                      audio_codec="pcm_s16le")
    clip = load_clip(path, size=32)
    samples = np.round(audio[0] * 32767).astype(np.int16) / 32768.0
    np.testing.assert_allclose(clip.envelope, audio_envelope(samples, 44100), atol=1e-5)


@pytest.mark.parametrize("reduce", ["max", "mean", "sample"])
def test_audio_envelope_reduce_and_padding(reduce):
    rate = 44100
    x = impulse_audio(2.5, rate, (1.0,), noise=0.001)[0]
    env = audio_envelope(x, rate, reduce=reduce, length=30)
    assert env.shape == (48,) and env.dtype == np.float32
    assert np.all(env[30:] == 0) and env[:30].max() == pytest.approx(1.0) and env[:30].min() == 0.0
    if reduce != "sample":   # decimation can miss a 4 ms burst; max/mean cannot
        assert int(np.argmax(env)) == 12


def test_audio_envelope_matches_the_contract_by_hand():
    """|x| -> gaussian_filter1d(sigma=200 @ 44.1k) -> window max -> min-max, written out literally."""
    from scipy.ndimage import gaussian_filter1d
    rate = 48000
    x = impulse_audio(4.2, rate, IMPULSES)[0].astype(np.float64)
    s = gaussian_filter1d(np.abs(x), 200 * rate / 44100)
    ref = np.array([s[i * 4000:(i + 1) * 4000].max() for i in range(48)])
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    np.testing.assert_allclose(audio_envelope(x, rate), ref, atol=1e-6)
    assert np.abs(gaussian_smooth(np.abs(x), 217.7) - gaussian_filter1d(np.abs(x), 217.7)).max() < 1e-9


def test_short_clip_has_real_length_and_zero_padding(tmp_path):
    clip = load_clip(make_video(tmp_path / "short.webm", seconds=2.5, impulses=(1.04,)), size=32)
    assert clip.length == 30
    assert np.all(clip.envelope[30:] == 0) and clip.envelope[:30].max() == pytest.approx(1.0)
    # padding repeats the last real frame
    assert torch.equal(clip.frames[:, 30:], clip.frames[:, 29:30].expand(-1, 18, -1, -1))


@pytest.mark.parametrize("ext,fps", [(".webm", 12), (".webm", 25), (".mp4", 30), (".mkv", 25)])
def test_frames_are_picked_by_nearest_timestamp(tmp_path, ext, fps):
    path = make_video(tmp_path / f"idx{ext}", fps=fps, seconds=4.5, width=64, height=64)
    clip = load_clip(path, size=64, normalize=False)
    half = clip.frames.shape[-2] // 2
    for i in range(48):
        top = clip.frames[:, i, 4:half - 4].mean().item()
        bottom = clip.frames[:, i, half + 4:-4].mean().item()
        j = read_index(top, bottom)
        exact = i * fps / 12
        # nearest source frame; an exact tie (25 fps, i = 6, 18, ...) may go either way
        assert j in {int(np.floor(exact + 0.5)), int(np.ceil(exact - 0.5))}, (i, j, exact)


def test_frames_equal_the_contract_preprocessing(tmp_path):
    """Decoded frames -> resize shorter side to 224 (antialiased bilinear) -> centre crop -> ImageNet."""
    rng = np.random.RandomState(0)
    frames = (rng.rand(60, 120, 160, 3) * 255).astype(np.uint8)
    path = make_video(tmp_path / "rgb.mkv", frames=frames, seconds=5, width=160, height=120)
    clip = load_clip(path, size=96)
    with av.open(str(path)) as c:
        decoded = np.stack([f.to_ndarray(format="rgb24") for _, f in zip(range(48), c.decode(video=0))])
    expected = preprocess_frames(decoded, size=96)
    assert clip.frames.shape == expected.shape == (3, 48, 96, 96)
    assert torch.allclose(clip.frames, expected, atol=1e-5)
    # and by hand: the normalisation is (x/255 - mean) / std with ImageNet statistics
    x = resize_short_side(decoded[0], 96) / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(clip.frames[:, 0], (x - mean) / std, atol=1e-5)


def test_resize_short_side_portrait_and_landscape():
    assert resize_short_side(np.zeros((240, 320, 3), np.uint8), 224).shape == (3, 224, 224)
    assert resize_short_side(np.zeros((320, 240, 3), np.uint8), 224).shape == (3, 224, 224)
    big = np.zeros((720, 1280, 3), np.uint8)
    big[:, 640:] = 255
    out = resize_short_side(big, 32)
    assert out[:, :, 0].max() < 1e-3 and out[:, :, -1].min() > 255 - 1e-3   # centre crop keeps the middle


# ---- faulty files: every reason from a real file -------------------------------------------

def _faulty(path):
    with pytest.raises(FaultyVideo) as e:
        load_clip(path, size=32)
    return e.value.reason


def test_missing(tmp_path):
    assert _faulty(tmp_path / "nope.webm") == "missing"


def test_zero_byte_and_random_bytes_are_unreadable(tmp_path):
    (tmp_path / "zero.webm").write_bytes(b"")
    (tmp_path / "rand.webm").write_bytes(np.random.RandomState(0).bytes(20000))
    assert _faulty(tmp_path / "zero.webm") == "unreadable"
    assert _faulty(tmp_path / "rand.webm") == "unreadable"


def test_video_only_and_audio_only(tmp_path):
    assert _faulty(make_video(tmp_path / "v.webm", with_audio=False)) == "no_audio_stream"
    assert _faulty(make_video(tmp_path / "a.webm", video=False)) == "no_video_stream"


def test_silent_audio(tmp_path):
    silent = np.zeros((1, 48000 * 4), np.float32)
    assert _faulty(make_video(tmp_path / "s.webm", audio=silent)) == "silent_audio"


def test_six_frames_is_too_short(tmp_path):
    assert _faulty(make_video(tmp_path / "six.webm", n_frames=6, seconds=0.5)) == "too_short"


@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_truncated_file_is_a_decode_error(tmp_path, fraction):
    path = make_video(tmp_path / "t.webm", seconds=6)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    assert _faulty(path) in {"decode_error", "unreadable"}
    assert _faulty(path) == "decode_error"


def test_unreadable_permissions(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = make_video(tmp_path / "p.webm")
    path.chmod(0)
    assert _faulty(path) == "unreadable"


def test_faulty_video_carries_reason_and_detail(tmp_path):
    with pytest.raises(FaultyVideo) as e:
        load_clip(tmp_path / "x.webm")
    assert e.value.reason == "missing" and "x.webm" in e.value.detail


@pytest.mark.parametrize("kwargs, message", [({"reduce": "maximum"}, "reduce must be one of"),
                                             ({"fps": 0}, "fps > 0"), ({"frames": 0}, "frames and size"),
                                             ({"start": -1.0}, "start must be")])
def test_bad_arguments_are_value_errors_never_faulty_videos(tmp_path, kwargs, message):
    """A caller's mistake surfaces as ValueError, even for a good file and for a missing one, and is
    never recorded as a faulty video (load_clip maps decode ValueErrors to decode_error)."""
    good = make_video(tmp_path / "v.webm", seconds=1.5, width=32, height=24)
    for path in (good, tmp_path / "missing.webm"):
        with pytest.raises(ValueError, match=message):
            load_clip(path, size=32, **kwargs)


def test_faulty_video_refuses_an_unknown_reason():
    with pytest.raises(ValueError, match="reason must be one of"):
        FaultyVideo("broken")
    assert FaultyVideo("too_short", "3 frames").reason == "too_short"
