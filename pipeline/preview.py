"""See and hear where the sounds go: an MP4 per video with its frames, the predicted curve under them
(onsets circled, a moving cursor) and a sound track that plays a short impact at every predicted
onset, as loud as the onset is strong.

write_previews(OUT / "previews", timelines, videos, count)     # previews/{video}.mp4, the first `count`

Frames are decoded again at the clip frame rate with `pipeline.media.load_clip` (the frame picking
the model saw, no audio read), a chunk of CHUNK_FRAMES at a time, so an hour of video never sits in
memory. PyAV writes the file: H.264 video at the clip frame rate, AAC mono audio.

This module owns the preview files. It picks no onset (`pipeline.timeline` hands them over, found by
the metrics' peak picker) and predicts nothing.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from pipeline.figures import RGB, STRIP_HEIGHT, STRIP_MARGIN
from pipeline.fsio import atomic_write

log = logging.getLogger("foleycache")

PREVIEW_SIZE = 256            # frame side (px); even, as H.264's 4:2:0 chroma needs
CHUNK_FRAMES = 48             # frames decoded per load_clip call
PX_PER_FRAME = 4              # a timeline longer than PREVIEW_SIZE / PX_PER_FRAME frames (5.3 s at 12 fps)
                              # scrolls under a fixed cursor instead of being squeezed into the frame's width
SAMPLE_RATE = 48000           # Hz of the sound track
IMPACT_SECONDS = 0.04         # length of one impact sound
IMPACT_NOISE_DECAY_S = 0.004  # the click: a noise burst decaying this fast ...
IMPACT_TONE_HZ = 180.0        # ... over a short low thump, so it reads as a knock rather than a tick
IMPACT_TONE_DECAY_S = 0.012
IMPACT_GAIN = 0.9             # strength 1 peaks here (headroom for overlapping impacts)
IMPACT_SEED = 0
VIDEO_OPTIONS = {"preset": "veryfast", "crf": "23"}


def impact_sound(sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 [IMPACT_SECONDS * sample_rate]: one impact, peak 1 (seeded: every preview sounds alike)."""
    t = np.arange(int(IMPACT_SECONDS * sample_rate)) / sample_rate
    noise = np.random.default_rng(IMPACT_SEED).standard_normal(t.size) * np.exp(-t / IMPACT_NOISE_DECAY_S)
    tone = np.sin(2 * np.pi * IMPACT_TONE_HZ * t) * np.exp(-t / IMPACT_TONE_DECAY_S)
    x = 0.6 * noise / np.abs(noise).max() + 0.4 * tone
    return (x / np.abs(x).max()).astype(np.float32)


def onset_track(times: np.ndarray, strengths: np.ndarray, seconds: float,
                sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 [round(seconds * sample_rate)] in [-1, 1]: `impact_sound` starting at each time (s),
    scaled by IMPACT_GAIN * strength (strengths in [0, 1]); silence elsewhere."""
    track = np.zeros(int(round(seconds * sample_rate)), np.float32)
    impact = impact_sound(sample_rate)
    for t, s in zip(times, strengths):
        i = int(round(float(t) * sample_rate))
        seg = impact[:max(0, track.size - i)]
        track[i:i + seg.size] += IMPACT_GAIN * float(s) * seg
    return np.clip(track, -1.0, 1.0)


def timeline_strip(pred: np.ndarray, onset_frames: np.ndarray, width: int) -> np.ndarray:
    """uint8 [STRIP_HEIGHT, width, 3]: the timeline [L] (NaN: not covered, a gap in the line) with its
    onsets circled."""
    strip = Image.new("RGB", (width, STRIP_HEIGHT), RGB["bg"])
    draw = ImageDraw.Draw(strip)
    y0, y1 = STRIP_MARGIN, STRIP_HEIGHT - STRIP_MARGIN
    for y in (y0, (y0 + y1) / 2, y1):
        draw.line([(0, y), (width, y)], fill=RGB["grid"])
    step = (width - 1) / max(len(pred) - 1, 1)

    def point(j):
        return j * step, y1 - float(np.clip(pred[j], 0, 1)) * (y1 - y0)

    run: list = []
    for j in range(len(pred) + 1):
        if j < len(pred) and np.isfinite(pred[j]):
            run.append(point(j))
            continue
        if len(run) > 1:
            draw.line(run, fill=RGB["pred"], width=2)
        run = []
    for j in onset_frames:
        x, y = point(int(j))
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], outline=RGB["pred"], width=2)
    draw.text((3, 1), "prediction", fill=RGB["pred"])
    return np.asarray(strip)


def video_frames(path: Path, n: int, fps: float, size: int = PREVIEW_SIZE):
    """Yield uint8 [size, size, 3] frames 0..n-1 of the video at `fps` (frame j nearest to j / fps s),
    decoded CHUNK_FRAMES at a time by `load_clip` (the last chunk ends at frame n, overlapping the one
    before, so no chunk is too short to decode)."""
    from pipeline.media import load_clip

    chunk = min(CHUNK_FRAMES, n)
    j = 0
    while j < n:
        start = min(j, n - chunk)
        clip = load_clip(path, frames=chunk, fps=fps, size=size, normalize=False, start=start / fps, audio=False)
        frames = np.clip(clip.frames.permute(1, 2, 3, 0).numpy(), 0, 255).round().astype(np.uint8)
        for i in range(j - start, chunk):
            yield frames[i]
        j = start + chunk


def write_preview(path: str | Path, video: Path, timeline, peak_params: dict | None = None) -> Path:
    """previews/{video}.mp4 of one `pipeline.timeline.Timeline`: len(pred) frames at its fps, the
    curve strip under each, a cursor, and the onsets as impacts on the sound track."""
    path = Path(path)
    frames_at, strengths = timeline.onsets(peak_params)
    strip_at = _strip_frames(timeline.pred, frames_at)
    audio = onset_track(frames_at / timeline.fps, strengths, timeline.seconds)

    def write(tmp: Path):
        with av.open(str(tmp), "w", format="mp4") as container:
            vs = container.add_stream("libx264", rate=Fraction(timeline.fps).limit_denominator(1001))
            vs.width, vs.height, vs.pix_fmt = PREVIEW_SIZE, PREVIEW_SIZE + STRIP_HEIGHT, "yuv420p"
            vs.options = dict(VIDEO_OPTIONS)
            aus = container.add_stream("aac", rate=SAMPLE_RATE)
            aus.layout = "mono"
            for j, frame in enumerate(video_frames(video, len(timeline.pred), timeline.fps)):
                canvas = np.concatenate([frame, strip_at(j)], axis=0)
                container.mux(vs.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")))
            container.mux(vs.encode(None))
            _encode_audio(container, aus, audio)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)
    return path


def _strip_frames(pred: np.ndarray, onset_frames: np.ndarray):
    """j -> uint8 [STRIP_HEIGHT, PREVIEW_SIZE, 3], the strip under frame j with its cursor: the whole
    timeline with a moving cursor when it fits PX_PER_FRAME a frame, else a PREVIEW_SIZE-wide view of
    it that scrolls with the cursor held at the centre."""
    n, half = len(pred), PREVIEW_SIZE // 2
    if n * PX_PER_FRAME <= PREVIEW_SIZE:
        strip, step, pad = timeline_strip(pred, onset_frames, PREVIEW_SIZE), (PREVIEW_SIZE - 1) / max(n - 1, 1), 0
    else:
        wide = timeline_strip(pred, onset_frames, n * PX_PER_FRAME)
        side = np.broadcast_to(np.asarray(RGB["bg"], np.uint8), (STRIP_HEIGHT, half, 3))
        strip, step, pad = np.concatenate([side, wide, side], axis=1), (wide.shape[1] - 1) / max(n - 1, 1), half

    def at(j: int) -> np.ndarray:
        x = int(round(j * step))
        view = strip[:, x:x + PREVIEW_SIZE].copy() if pad else strip.copy()
        cursor = half if pad else x
        view[:, max(0, cursor - 1):cursor + 1] = RGB["cursor"]
        return view
    return at


def _encode_audio(container, stream, audio: np.ndarray):
    """Mono float32 samples [n] through the AAC encoder in its frame size."""
    step = stream.codec_context.frame_size or 1024
    for lo in range(0, audio.size, step):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None, lo:lo + step]), format="fltp",
                                           layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, lo
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def preview_name(video: str) -> str:
    """A file name for a video key (sub-folders become '__')."""
    return video.replace("/", "__") + ".mp4"


def write_previews(folder: Path, timelines: list, videos: Path, count: int, progress: bool = False) -> list[str]:
    """MP4 previews of the first `count` timelines in `folder`. A video that cannot be decoded again
    is skipped with a warning. Returns the paths written."""
    from pipeline.data import find_video
    from pipeline.media import FaultyVideo

    written = []
    for t in tqdm(timelines[:count], desc="previews", unit="video", disable=not progress, leave=False):
        try:
            source = find_video(videos, replace(t.source, start=0.0))
            written.append(str(write_preview(Path(folder) / preview_name(t.video), source, t)))
        except FaultyVideo as e:
            log.warning("preview of %s skipped: %s", t.video, e)
    return written
