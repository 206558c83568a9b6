"""Clips that start late: seeking (pipeline.media.load_clip(start=...)) and windows over long videos
(pipeline.data.tile_windows), on long but tiny real videos the tests encode (64x48, a keyframe every 2 s)."""
import numpy as np
import pytest
import torch

from pipeline.data import Annotation, find_video, load_annotations, tile_windows
from pipeline.media import FRAMES, FPS, MIN_FRAMES, FaultyVideo, load_clip, video_duration
from benchmarks.seek import encode_long_video, run as run_seek_benchmark

W, H = 64, 48
GOP_S = 2.0                   # keyframe interval of the test videos: what a seek lands on
# Impulses 0.4 frame into a frame of the 12 fps grid, so each lands in one known frame of any window
# starting on a whole second; gaps between them leave windows with none (20-30 s, 32-42 s).
IMPULSE_FRAMES = (40, 59, 109, 212, 221, 372, 535, 626, 692)
IMPULSES = tuple((f + 0.4) / FPS for f in IMPULSE_FRAMES)


def grid_frame(j: int) -> np.ndarray:
    """Frame j of a test video: its index in three bands of brightness (readable after lossy coding)."""
    img = np.empty((H, W, 3), np.uint8)
    band = H // 3
    img[:band], img[band:2 * band], img[2 * band:] = (j % 20) * 12, (j // 20 % 20) * 12, (j // 400) * 12
    return img


def read_grid(frame: torch.Tensor) -> int:
    """Inverse of grid_frame for a [3, H, W] 0..255 frame (resized: bands keep their order)."""
    h = frame.shape[1]
    bands = [frame[:, a:b].mean().item() for a, b in ((2, h // 3 - 2), (h // 3 + 2, 2 * h // 3 - 2), (2 * h // 3 + 2, h - 2))]
    return int(round(bands[0] / 12)) + 20 * int(round(bands[1] / 12)) + 400 * int(round(bands[2] / 12))


def make_long_video(path, seconds: float, impulses=IMPULSES, video_start: float = 0.0, audio_delay: float = 0.0,
                    aac_pns: bool = False):
    """A long tiny video (.webm VP9 + Opus or .mp4 H.264 + AAC), frames from grid_frame, a keyframe
    every GOP_S s, clicks at `impulses` (benchmarks.seek.encode_long_video)."""
    return encode_long_video(path, seconds, width=W, height=H, frame=grid_frame, impulses=impulses,
                             video_start=video_start, audio_delay=audio_delay, gop_s=GOP_S, aac_pns=aac_pns)


@pytest.fixture(scope="module")
def minute(tmp_path_factory):
    """A 60 s WebM with impulses at IMPULSES."""
    return make_long_video(tmp_path_factory.mktemp("long") / "minute.webm", 60.0)


def test_windows_peak_at_their_impulses_and_nowhere_else(minute):
    """Stride 2 s: every window's envelope peaks within ±1 frame of each impulse it holds; a window
    with no impulse in or just before it has no peak standing out of the noise."""
    videos = minute.parent
    windows = tile_windows([Annotation("minute", "t", "t", None)], videos, 2.0)
    assert [w.start for w in windows] == [2.0 * k for k in range(30)]
    assert [w.id for w in windows][:3] == ["minute@0", "minute@2000", "minute@4000"]
    quiet = 0
    for w in windows:
        clip = load_clip(find_video(videos, w), size=32, start=w.start)
        env = clip.envelope[:clip.length]
        inside = [(t - w.start) * FPS for t in IMPULSES if w.start <= t < w.start + clip.length / FPS]
        if inside:
            for f in inside:
                near = env[max(0, int(f) - 1):int(f) + 2]
                assert near.max() > 0.5, (w.id, f, env.round(2))
            far = np.ones(clip.length, bool)
            for f in inside:
                far[max(0, int(f) - 2):int(f) + 3] = False
            assert env[far].max() < 0.2, (w.id, env.round(2))       # nothing else above the noise
        elif not any(w.start - 0.1 <= t < w.start for t in IMPULSES):
            quiet += 1
            # min-max scaled noise spreads over [0, 1]; a leaked impulse would squash it to ~0
            assert np.median(env) > 0.15, (w.id, env.round(2))
    assert quiet >= 8


@pytest.mark.parametrize("name,video_start,audio_delay", [
    ("plain.webm", 0.0, 0.0),
    ("late_audio.mp4", 0.0, 0.3),       # the audio stream starts 0.3 s after the video
    ("offset.webm", 1.5, 0.0),          # the container's start_time is 1.5 s
])
def test_seeking_equals_decoding_from_the_start(tmp_path, name, video_start, audio_delay):
    path = make_long_video(tmp_path / name, 30.0, video_start=video_start, audio_delay=audio_delay)
    for start in (0.3, 7.25, 21.9, 27.5):
        seek = load_clip(path, size=32, start=start, normalize=False)
        full = load_clip(path, size=32, start=start, normalize=False, seek=False)
        assert seek.length == full.length == min(FRAMES, round((30.0 - start) * FPS)), start
        assert torch.equal(seek.frames, full.frames), start
        np.testing.assert_array_equal(seek.envelope, full.envelope, err_msg=f"start {start}")
        # and they are the right frames: i-th = the source frame nearest to start + i / 12 s
        picked = [read_grid(seek.frames[:, i]) for i in range(0, seek.length, 7)]
        assert picked == [int(np.floor((start + i / FPS) * FPS + 0.5)) for i in range(0, seek.length, 7)], start


def test_late_audio_is_silent_before_it_starts(tmp_path):
    """Audio 0.3 s after the video: the first 0.3 s of a clip at 0 have an envelope of ~0, and an
    impulse keeps its place on the video's timeline."""
    path = make_long_video(tmp_path / "late.mp4", 6.0, impulses=(2.0 + 0.4 / FPS,), audio_delay=0.3)
    clip = load_clip(path, size=32)
    assert clip.envelope[:3].max() < 0.05
    assert int(np.argmax(clip.envelope)) == 24


def test_aac_noise_substitution_is_close_not_equal(tmp_path):
    """FFmpeg's AAC encoder substitutes noise (PNS) by default; the decoder draws it from a random
    generator whose state depends on where decoding began, so a seek and decoding from the start
    give two draws of the same noise: frames equal, envelopes equal to within the noise."""
    path = make_long_video(tmp_path / "pns.mp4", 20.0, aac_pns=True)
    seek = load_clip(path, size=32, start=13.0)
    full = load_clip(path, size=32, start=13.0, seek=False)
    assert torch.equal(seek.frames, full.frames)
    np.testing.assert_allclose(seek.envelope, full.envelope, atol=0.02)


def test_start_past_the_end_is_too_short(minute):
    with pytest.raises(FaultyVideo) as e:
        load_clip(minute, size=32, start=75.0)
    assert e.value.reason == "too_short" and "past the video's end" in e.value.detail
    with pytest.raises(FaultyVideo) as e:
        load_clip(minute, size=32, start=59.5)      # 6 frames left
    assert e.value.reason == "too_short"
    with pytest.raises(ValueError):
        load_clip(minute, size=32, start=-1.0)


@pytest.mark.parametrize("stride,count", [(2.0, 30), (4.0, 15), (3.5, 17)])
def test_window_count_keeps_the_last_only_with_enough_frames(minute, stride, count):
    """60 s: stride 3.5 s ends at 56 s (59.5 s would have 6 real frames < MIN_FRAMES)."""
    assert video_duration(minute) == pytest.approx(60.0, abs=0.01)
    windows = load_annotations(_csv(minute), videos=minute.parent,
                               window_stride=stride)
    assert len(windows) == count and len({w.id for w in windows}) == count
    last = windows[-1]
    clip = load_clip(find_video(minute.parent, last), size=32, start=last.start)
    assert clip.length >= MIN_FRAMES


def _csv(video):
    path = video.parent / "list.csv"
    path.write_text(f"video,label\n{video.name},hits\n")
    return path


def test_a_faulty_video_gives_one_window(tmp_path):
    """A video whose duration cannot be read is one clip at its start: its failure is recorded
    when it is decoded, like any other faulty video's."""
    (tmp_path / "broken.webm").write_bytes(b"not a video")
    ann = Annotation("broken", "t", "t", None)
    assert [w.id for w in tile_windows([ann], tmp_path, 2.0)] == ["broken@0"]
    assert [w.id for w in tile_windows([Annotation("gone", "t", "t", None)], tmp_path, 2.0)] == ["gone@0"]


def test_seek_benchmark_smoke(tmp_path):
    """benchmarks/seek.py's code path on a tiny video: its fields, never its timings."""
    video = make_long_video(tmp_path / "bench.webm", 12.0)
    result = run_seek_benchmark(video, start=7.0, repeats=1, size=32, from_start=True)
    assert set(result) >= {"cpu", "ratios", "seek_ratio", "decode_from_start_ratio"}
    assert len(result["ratios"]) == 1 and result["seek_ratio"] > 0


@pytest.mark.slow
def test_five_minutes_with_stride_4_give_75_windows(tmp_path):
    """The documented count: 300 s, stride 4 -> windows at 0, 4, ..., 296 s (the last has 4 s);
    the last one decodes whole."""
    video = make_long_video(tmp_path / "five.mp4", 300.0, impulses=(150.0,))
    windows = load_annotations(_csv(video), videos=tmp_path, window_stride=4.0)
    assert len(windows) == 75 and len({w.id for w in windows}) == 75
    assert windows[-1].id == "five@296000"
    assert load_clip(video, size=32, start=windows[-1].start).length == FRAMES


def test_a_seek_that_lands_late_falls_back_to_decoding_from_the_start(tmp_path, monkeypatch):
    """A negative pre-roll makes the seek land on the keyframe after start (8 s for 7.25 s): the
    clip is then decoded from the file's start, the same as seek=False."""
    import pipeline.media as media

    path = make_long_video(tmp_path / "late.webm", 12.0)
    monkeypatch.setattr(media, "SEEK_PREROLL_S", -1.0)
    seek = load_clip(path, size=32, start=7.25, normalize=False)
    full = load_clip(path, size=32, start=7.25, normalize=False, seek=False)
    assert torch.equal(seek.frames, full.frames)
    np.testing.assert_array_equal(seek.envelope, full.envelope)
    assert read_grid(seek.frames[:, 0]) == 87


def test_without_audio_a_late_window_decodes_the_same_frames(minute):
    """audio=False reads no audio stream: the same frames (same packets, same seek), envelope 0."""
    with_audio = load_clip(minute, size=32, start=40.0, normalize=False)
    without = load_clip(minute, size=32, start=40.0, normalize=False, audio=False)
    assert torch.equal(with_audio.frames, without.frames) and without.length == with_audio.length
    assert not without.envelope.any() and without.sample_rate == 0
    assert [read_grid(f) for f in without.frames.permute(1, 0, 2, 3)[:3]] == [480, 481, 482]
