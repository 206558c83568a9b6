"""Tiny real media for the tests, encoded with PyAV (independent of pipeline.synthetic).

Frames carry their source index in their brightness so frame picking can be checked after lossy
coding: the top half is (j % 50) * 5, the bottom half (j // 50) * 40.
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np

CODECS = {  # extension -> (video codec, audio codec)
    ".webm": ("libvpx-vp9", "libopus"),
    ".mp4": ("libx264", "aac"),
    ".mkv": ("libx264", "flac"),
    ".mov": ("libx264", "pcm_s16le"),
}


def index_frame(j: int, width: int, height: int) -> np.ndarray:
    img = np.empty((height, width, 3), np.uint8)
    img[: height // 2] = (j % 50) * 5
    img[height // 2:] = (j // 50) * 40
    return img


def read_index(top: float, bottom: float) -> int:
    """Inverse of index_frame from the mean brightness (0..255) of each half."""
    return int(round(top / 5.0)) + 50 * int(round(bottom / 40.0))


def impulse_audio(seconds: float, sample_rate: int, impulses=(), channels: int = 1, noise: float = 0.005,
                  amplitude: float = 0.8, seed: int = 0) -> np.ndarray:
    """float32 [channels, samples]: low noise plus short decaying bursts starting at `impulses` (s)."""
    rng = np.random.RandomState(seed)
    n = int(round(seconds * sample_rate))
    x = rng.randn(n) * noise
    burst = np.exp(-np.arange(int(0.004 * sample_rate)) / (0.001 * sample_rate))
    for t in impulses:
        i = int(round(t * sample_rate))
        seg = burst[: max(0, n - i)]
        x[i:i + seg.size] += amplitude * seg * np.sign(rng.randn(seg.size))
    x = np.clip(x, -1, 1).astype(np.float32)
    out = np.tile(x, (channels, 1))
    if channels > 1:  # other channels differ, so "first channel" matters
        out[1:] *= 0.3
    return out


def make_video(path, seconds: float = 4.5, fps: float = 12, width: int = 160, height: int = 120,
               sample_rate: int = 48000, channels: int = 1, impulses=(1.04,), audio: np.ndarray | None = None,
               video: bool = True, with_audio: bool = True, audio_codec: str | None = None,
               audio_format: str | None = None, video_codec: str | None = None, frames: np.ndarray | None = None,
               n_frames: int | None = None) -> Path:
    """Encode a small real video file. Container from the extension (.webm/.mp4/.mkv/.mov).

    audio: float32 [channels, samples] in [-1, 1] (default: impulse_audio at `impulses`).
    audio_format: sample format handed to the encoder (e.g. 's16', 's32', 'flt', 'u8').
    """
    path = Path(path)
    vcodec, acodec = CODECS[path.suffix]
    vcodec = video_codec or vcodec
    acodec = audio_codec or acodec
    container = av.open(str(path), "w")
    vs = None
    if video:
        vs = container.add_stream(vcodec, rate=_rate(fps))
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        if vcodec == "libx264":
            vs.options = {"preset": "ultrafast", "crf": "10"}
        elif vcodec == "libvpx-vp9":
            vs.options = {"deadline": "realtime", "cpu-used": "8", "crf": "10", "b": "0"}
    aus = None
    if with_audio:
        if audio is None:
            audio = impulse_audio(seconds, sample_rate, impulses, channels)
        channels = audio.shape[0]
        aus = container.add_stream(acodec, rate=sample_rate)
        aus.layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
        if audio_format:
            aus.format = audio_format
    n = n_frames if n_frames is not None else int(round(seconds * fps))
    if vs is not None:
        for j in range(n):
            img = frames[j] if frames is not None else index_frame(j, width, height)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in vs.encode(frame):
                container.mux(packet)
        for packet in vs.encode(None):
            container.mux(packet)
    if aus is not None:
        _encode_audio(container, aus, audio, sample_rate)
    container.close()
    return path


def _rate(fps):
    from fractions import Fraction
    return Fraction(fps).limit_denominator(1001)


def _encode_audio(container, stream, audio: np.ndarray, sample_rate: int):
    fmt = stream.codec_context.format
    name = fmt.name
    base = name.rstrip("p")
    channels = audio.shape[0]
    step = stream.codec_context.frame_size or 1024
    for start in range(0, audio.shape[1], step):
        chunk = audio[:, start:start + step]
        if base == "s16":
            data = np.round(chunk * 32767).astype(np.int16)
        elif base == "s32":
            data = np.round(chunk.astype(np.float64) * (2**31 - 1)).astype(np.int32)
        elif base == "u8":
            data = np.clip(np.round(chunk * 127 + 128), 0, 255).astype(np.uint8)
        elif base == "dbl":
            data = chunk.astype(np.float64)
        else:
            data = chunk.astype(np.float32)
        if not fmt.is_planar:
            data = data.T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=name, layout=stream.layout.name)
        frame.sample_rate = sample_rate
        frame.pts = start
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def ssv2_entry(video_id, template: str) -> dict:
    """One SSv2 annotation for a test video: its id and template (the label and placeholders are
    not read by the pipeline: "x" and none)."""
    return {"id": str(video_id), "template": template, "label": "x", "placeholders": []}
