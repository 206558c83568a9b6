"""Encoding: frames and audio into a video file with PyAV, bit-exact for the same input; faulty files.

Owns the container formats (FORMATS: WebM / MKV with VP9 + Opus, MP4 with H.264 + AAC), the
encoder settings that make a file the same bytes for the same input (muxer `fflags=+bitexact`,
single-threaded encoders), and the faults a dataset carries on purpose (`write_clip`): no audio
stream, all-zero audio, or the file's bytes cut in half. The reason recorded for a cut file is
the one `pipeline.media.load_clip` raises for it: WebM opens but its video stops well before the
header's duration (`decode_error`); MP4, whose index sits at the end, cannot be opened
(`unreadable`). Must not render: it takes arrays.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.errors import FoleyError

FORMATS = {  # fmt -> (container suffix, video codec, default audio codec)
    "webm": ("webm", "libvpx-vp9", "libopus"),
    "mkv": ("mkv", "libvpx-vp9", "libopus"),
    "mp4": ("mp4", "libx264", "aac"),
}
OPUS_RATE = 48000  # Opus only runs at 48 kHz (and lower); PyAV resamples 44.1 kHz input to it
FAULT_KINDS = ("no_audio_stream", "silent_audio", "truncated")
PROBE_SIZE = 32    # frame size load_clip decodes a cut file at (its reason does not depend on it)


def _add_video_stream(container, vcodec, rate, width, height):
    import av

    vs = container.add_stream(vcodec, rate=rate)
    vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
    if vcodec == "libvpx-vp9":
        # Realtime preset: fast enough for hundreds of clips; constant quality (crf with b=0).
        vs.options = {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0", "threads": "1",
                      "row-mt": "0"}
    else:
        vs.options = {"preset": "veryfast", "crf": "23", "threads": "1"}
    vs.codec_context.flags |= av.codec.context.Flags.bitexact
    # PyAV's own thread_count (0 = auto) overrides the "threads" option; x264's frame threads and
    # lookahead make its output depend on scheduling, so pin one thread here (this makes it rarer,
    # not impossible: see pipeline.synthetic's docstring).
    vs.codec_context.thread_count = 1
    vs.codec_context.thread_type = "SLICE"
    return vs


def _add_audio_stream(container, acodec, layout, sample_rate):
    import av

    stream_rate = OPUS_RATE if acodec in ("libopus", "opus") else int(sample_rate)
    astream = container.add_stream(acodec, rate=stream_rate, layout=layout)
    astream.codec_context.flags |= av.codec.context.Flags.bitexact
    astream.codec_context.thread_count = 1
    return astream


def _as_audio(audio, sample_rate):
    """audio as float32 [C, S] (C = 1 or 2), checked; a FoleyError names what is wrong."""
    audio = np.asarray(audio, np.float32)
    audio = audio[None] if audio.ndim == 1 else audio
    if audio.ndim != 2 or audio.shape[0] not in (1, 2):
        raise FoleyError(f"audio must be [C, S] with C = 1 or 2, got {list(audio.shape)}")
    if not sample_rate:
        raise FoleyError("write_video: audio needs a sample_rate")
    return audio


def write_video(path, frames, fps, audio=None, sample_rate=None, fmt=None, audio_codec=None):
    """Encode frames (+ audio) with PyAV, bit-exact for the same input.

    frames: uint8 [N, H, W, 3] RGB (H and W even for mp4); fps: int or float (stored as a fraction).
    audio: float32 [C, S] or [S] in [-1, 1] (C = 1 or 2), or None for a file without an audio stream;
    sample_rate: Hz of `audio`. fmt: "webm" (VP9 + Opus), "mkv" (VP9 + Opus), "mp4" (H.264 + AAC);
    None = from the path's suffix. audio_codec overrides the format's audio codec ("libopus", "aac",
    "flac" (mkv only), "pcm_s16le" (mkv only) ...). Opus runs at 48 kHz: other rates are resampled by
    PyAV, so a 44.1 kHz clip decodes at 48 kHz from webm; AAC and FLAC keep the rate.
    """
    import av

    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise FoleyError(f"unknown video format {fmt!r}: expected one of {sorted(FORMATS)}")
    _, vcodec, acodec = FORMATS[fmt]
    acodec = audio_codec or acodec
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise FoleyError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    n, height, width, _ = frames.shape
    if vcodec == "libx264" and (height % 2 or width % 2):
        raise FoleyError(f"H.264 needs an even frame size, got {width}x{height}")
    rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
    with av.open(str(path), "w", format={"mkv": "matroska"}.get(fmt, fmt),
                 options={"fflags": "+bitexact"}) as container:
        vs = _add_video_stream(container, vcodec, rate, width, height)
        astream = None
        if audio is not None:
            audio = _as_audio(audio, sample_rate)
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            astream = _add_audio_stream(container, acodec, layout, sample_rate)
        for i, image in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            vf.pts = i
            container.mux(vs.encode(vf))
        container.mux(vs.encode())
        if astream is not None:
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(np.clip(audio, -1, 1)), format="fltp",
                                            layout=layout)
            af.sample_rate, af.pts = int(sample_rate), 0
            container.mux(astream.encode(af))
            container.mux(astream.encode())


def _load_clip_reason(path):
    """The reason pipeline.media.load_clip gives for the file (None: it loads). media imports torch,
    so only a worker that cuts a file pays for it."""
    from pipeline.media import FaultyVideo, load_clip

    try:
        load_clip(path, size=PROBE_SIZE, threads=1)
    except FaultyVideo as e:
        return e.reason
    return None


def write_clip(path, frames, fps, audio, sample_rate, fmt, fault=None):
    """write_video, then the fault (one of FAULT_KINDS, None: a good file); returns the reason a
    decoder gives for the file (pipeline.media.REASONS; None for a good file)."""
    if fault == "no_audio_stream":
        audio = None
    elif fault == "silent_audio":
        audio = np.zeros_like(audio)
    write_video(path, frames, fps, audio, sample_rate, fmt)
    if fault != "truncated":
        return fault
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    reason = _load_clip_reason(path)
    if reason is None:  # cannot happen for files of 2-6 s; refuse to record a fault that is not one
        raise RuntimeError(f"truncating {path.name} left a decodable file")
    return reason
