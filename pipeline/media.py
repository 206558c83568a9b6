"""Decoding, frame picking and the audio envelope: everything about the medium lives here.

A clip is T = 48 frames at 12 fps (4.0 s) of a video from `start` seconds on (0: the video's first
frame): frames resized, centre-cropped and normalised for the 3D CNN, and the loudness envelope of its
first audio channel over the same span (the target). A clip that starts late is reached by seeking to
the keyframe before it, so a window at minute 9 costs about what one at second 0 does.
Read top to bottom: constants, `load_clip` (path -> Clip), then the array-level steps it uses
(`_FramePicker`, `preprocess_frames`, `audio_envelope`); the last two are usable on
already-decoded data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter1d
from scipy.signal import oaconvolve

from pipeline.errors import REASONS, FaultyVideo  # noqa: F401  (re-exported: callers import them from here)
from pipeline.options import FPS, FRAMES     # the clip: 48 frames at 12 fps (4.0 s), torch-free for --help

# --- constants of the data contract (docs/design.md) --------------------------------------
SIZE = 224                    # shorter side resized to SIZE, then centre crop SIZE x SIZE
MIN_FRAMES = 12               # fewer real frames than this (1 s) is a faulty video
MEAN = (0.485, 0.456, 0.406)  # ImageNet normalisation, RGB (every registered backbone's, pipeline.backbones)
STD = (0.229, 0.224, 0.225)
SIGMA_SAMPLES = 200           # Gaussian smoothing sigma of the seed, in samples at ...
SIGMA_RATE = 44100            # ... 44.1 kHz: 200 / 44100 s = 4.54 ms, scaled to the real rate
REDUCES = ("max", "mean", "sample")  # per-frame window reduction; "sample" = the seed's decimation
SILENCE = 1e-4                # |x| peak below this (-80 dBFS) over the clip: silent_audio
AUDIO_MARGIN_S = 0.05         # decode this much audio past the clip so smoothing has no edge there
SEEK_PREROLL_S = 0.5          # seek this far before `start`: audio decoders (AAC's MDCT overlap, Opus's
                              # 80 ms pre-roll) need earlier packets to give the samples decoding from
                              # the file's start gives; seeking at all only pays beyond it

# Integer sample formats are scaled to [-1, 1] like torchaudio's old Scale() (int16 / 32768).
_INT_SCALE = {"u8": (128.0, 128.0), "s16": (0.0, 2.0**15), "s32": (0.0, 2.0**31), "s64": (0.0, 2.0**63)}


@dataclass
class Clip:
    frames: torch.Tensor     # float32 [3, T, size, size], normalised (or uint8-range floats if normalize=False)
    envelope: np.ndarray     # float32 [T] in [0, 1] on real frames, 0 on padding
    length: int              # real frames, <= T
    source_fps: float        # frame rate of the source video (median frame interval)
    sample_rate: int
    channels: int


def load_clip(path: str | os.PathLike, frames: int = FRAMES, fps: float = FPS, size: int = SIZE,
              reduce: str = "max", normalize: bool = True, threads: int = 0, start: float = 0.0,
              seek: bool = True, audio: bool = True) -> Clip:
    """Decode `frames / fps` seconds of a video from `start` seconds on into a Clip.

    start: seconds after the video stream's first frame (whatever the container's start_time).
    frames: picked by timestamp, for t_i = start + i / fps the decoded frame nearest to t_i, so
    25/30 fps and millisecond-rounded (WebM) sources work. Decoding stops after the last needed frame.
    envelope: `audio_envelope` of the first audio channel cut to [start, start + frames / fps) on the
    video's timeline (audio that starts later than the video is zero before it).
    seek: jump to the keyframe before start - SEEK_PREROLL_S (video and audio) instead of decoding
    from the file's start; both give the same clip. False exists to check exactly that.
    threads: PyAV decoder threads (0 = FFmpeg's choice); DataLoader workers pass 1.
    audio: False reads no audio at all (prediction needs no target): a file without an audio stream
    or with silent audio is then no fault; envelope is all 0, sample_rate and channels 0. The
    frames are the same either way (the same video packets, the same seeks).
    Raises FaultyVideo for any bad input (a start past the video's end is `too_short`); no other
    exception escapes for a bad file. Bad arguments (an unknown `reduce`, a negative or non-finite
    start, frames / fps / size below 1) are a ValueError raised before any decoding: a caller's
    mistake must surface as one, never be recorded as a faulty video.
    """
    start = float(start)
    _check_clip_arguments(frames, fps, size, reduce, start)
    path = Path(path)
    if not path.exists():
        raise FaultyVideo("missing", str(path))
    if not path.is_file():      # opening a named pipe would block forever; a directory or device is no video
        raise FaultyVideo("unreadable", f"{path} is not a regular file (a directory, pipe or device)")
    try:
        try:
            return _load_clip(path, frames, fps, size, reduce, normalize, threads, start, seek, audio)
        except _SeekMissed:         # the same clip, the slow way
            return _load_clip(path, frames, fps, size, reduce, normalize, threads, start, False, audio)
    except FaultyVideo:
        raise
    except PermissionError as e:
        raise FaultyVideo("unreadable", f"{type(e).__name__}: {e}") from None
    except (av.FFmpegError, ValueError, RuntimeError, OSError, EOFError, IndexError, ZeroDivisionError) as e:
        raise FaultyVideo("decode_error", f"{type(e).__name__}: {e}") from None


def _check_clip_arguments(frames: int, fps: float, size: int, reduce: str, start: float):
    """ValueError for arguments no video could satisfy (load_clip's decode errors are ValueErrors too,
    so these are checked before any decoding starts)."""
    if reduce not in REDUCES:
        raise ValueError(f"reduce must be one of {REDUCES}, got {reduce!r}")
    if not np.isfinite(start) or start < 0:
        raise ValueError(f"start must be a finite number of seconds >= 0, got {start}")
    if frames < 1 or size < 1 or not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"frames and size must be >= 1 and fps > 0, got {frames}, {size}, {fps}")


class _SeekMissed(Exception):
    """A seek that failed or landed after the clip's start (a file without an index, audio
    interleaved late): load_clip then decodes from the file's start."""


def _load_clip(path, frames, fps, size, reduce, normalize, threads, start, seek, use_audio=True) -> Clip:
    picker, audio, clip_origin, header_end = _decode(path, frames, fps, size, threads, start, seek, use_audio)
    length = _real_frames(picker, audio, frames, fps, start, clip_origin, header_end)
    video = picker.stack()                                      # [T, 3, size, size] float, 0..255
    if not use_audio:
        return Clip(frames=preprocess_frames(video, size=size, normalize=normalize, resized=True),
                    envelope=np.zeros(frames, np.float32), length=length, source_fps=picker.source_fps(),
                    sample_rate=0, channels=0)
    samples, sample_rate, channels = audio.first_channel()
    if samples.size == 0:
        raise FaultyVideo("decode_error", "no audio samples could be decoded")
    if not np.all(np.isfinite(samples)):
        raise FaultyVideo("decode_error", f"{int((~np.isfinite(samples)).sum())} non-finite audio samples")
    clip_samples = samples[: int(round(length / fps * sample_rate))]
    if clip_samples.size == 0 or np.abs(clip_samples).max() < SILENCE:
        raise FaultyVideo("silent_audio", f"peak |x| < {SILENCE} over the clip's {length / fps:.2f} s")
    envelope = audio_envelope(samples, sample_rate, frames=frames, fps=fps, reduce=reduce, length=length)
    return Clip(frames=preprocess_frames(video, size=size, normalize=normalize, resized=True),
                envelope=envelope, length=length, source_fps=picker.source_fps(),
                sample_rate=sample_rate, channels=channels)


def _decode(path, frames, fps, size, threads, start, seek, use_audio):
    """(the frames picked, the audio collected, the clip's t = 0 in container time, the header's end
    (None: unknown), whether that end is the whole file's): one pass over the file's packets."""
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except PermissionError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        raise FaultyVideo("unreadable", f"{type(e).__name__}: {e}") from None
    with container:
        if not container.streams.video:
            raise FaultyVideo("no_video_stream", f"streams: {[s.type for s in container.streams]}")
        if use_audio and not container.streams.audio:
            raise FaultyVideo("no_audio_stream", "the file has video but no audio stream")
        vstream = container.streams.video[0]
        astream = container.streams.audio[0] if use_audio else None
        vstream.thread_type = "AUTO"
        if threads:
            vstream.thread_count = threads
        origin = _stream_start(vstream)
        clip_origin = origin + start                            # container time (s) of the clip's t = 0
        seeking = seek and start > SEEK_PREROLL_S
        if seeking:
            # backward=True: the keyframe at or before the target, so every frame after it decodes
            try:
                container.seek(int(np.floor((clip_origin - SEEK_PREROLL_S) / vstream.time_base)),
                               stream=vstream, backward=True, any_frame=False)
            except av.FFmpegError:
                raise _SeekMissed from None
        targets = np.arange(frames) / fps                       # [T] seconds after the clip's start
        audio_end = frames / fps + AUDIO_MARGIN_S
        picker = _FramePicker(targets, size)
        # a late clip anchors its audio inside the pre-roll, where decoding from a seek has begun
        audio = _AudioCollector(clip_origin, anchor=-SEEK_PREROLL_S / 2 if start > SEEK_PREROLL_S else -np.inf)
        video_done, audio_done = False, not use_audio
        # demux yields an empty packet per stream at EOF: decoding it flushes held-back frames
        for packet in container.demux(*[s for s in (vstream, astream) if s is not None]):
            if packet.stream.type == "video" and not video_done:
                for frame in packet.decode():
                    t = _frame_time(frame, picker.count, vstream) - clip_origin
                    video_done = picker.offer(frame, t)
                    if video_done:
                        break
            elif packet.stream.type == "audio" and not audio_done:
                for frame in packet.decode():
                    audio_done = audio.add(frame) >= audio_end
            if video_done and audio_done:
                break
        audio_late = use_audio and audio.first is not None and audio.first > 0 and \
            _stream_start(astream) < clip_origin
        if seeking and ((picker.times and min(picker.times) > 0) or audio_late):
            raise _SeekMissed
        header_end, whole_file = _header_end(container, vstream)
        # a file-wide duration that may cover audio left unread says nothing about the video's end
        if whole_file and not use_audio and container.streams.audio:
            header_end = None
    return picker, audio, clip_origin, (header_end, whole_file)


def _real_frames(picker, audio, frames, fps, start, clip_origin, header) -> int:
    """The clip's real frames; FaultyVideo when the video ends before `start`, stops short of what
    its header says (a truncated file), or gives fewer than MIN_FRAMES."""
    header_end, whole_file = header
    if picker.count == 0:
        raise FaultyVideo("decode_error", "no video frame could be decoded")
    length = picker.real_frames()
    decoded_end = picker.last_time + 1.0 / max(picker.source_fps(), 1e-6)   # clip time (s)
    if start > 0 and decoded_end <= 0:
        raise FaultyVideo("too_short", f"start {start:.3f} s is past the video's end "
                                       f"({start + decoded_end:.2f} s)")
    # A container-wide duration also covers the audio: a short video whose audio runs on is not cut.
    reached = max(decoded_end, audio.end()) if whole_file else decoded_end
    expected_end = min(header_end - clip_origin, frames / fps) if header_end else None
    if expected_end is not None and reached < expected_end - 2.0 / max(picker.source_fps(), 1.0) \
            and length < frames:
        raise FaultyVideo("decode_error", f"video stops at {clip_origin + decoded_end:.2f} s but the header "
                                          f"says {header_end:.2f} s (truncated file?)")
    if length < MIN_FRAMES:
        at = f" from {start:.3f} s" if start else ""
        raise FaultyVideo("too_short", f"{length} real frames at {fps} fps{at} (< {MIN_FRAMES})")
    return length


def _stream_start(stream) -> float:
    """Time zero of the clip: the video stream's start (containers may not start at 0)."""
    if stream.start_time is not None and stream.time_base is not None:
        return float(stream.start_time * stream.time_base)
    return 0.0


def _frame_time(frame, index: int, stream) -> float:
    if frame.time is not None:
        return float(frame.time)
    rate = float(stream.average_rate or stream.guessed_rate or FPS)
    return index / rate


def _header_end(container, stream) -> tuple[float | None, bool]:
    """(container time in s at which the header says the video ends, whether that is the whole
    file's end rather than the video stream's own). A stream duration counts from the stream's
    start; Matroska/WebM's per-stream DURATION tag and the file's duration are end times there
    (a WebM whose video starts at 1.5 s and lasts 60 s says 61.5)."""
    if stream.duration is not None and stream.time_base is not None:
        return _stream_start(stream) + float(stream.duration * stream.time_base), False
    tag = next((v for k, v in stream.metadata.items() if k.upper() == "DURATION"), None)
    try:
        h, m, s = str(tag).split(":")
        return int(h) * 3600 + int(m) * 60 + float(s), False
    except ValueError:
        pass
    if container.duration is not None:
        return container.duration / av.time_base, True
    return None, True


def video_duration(path: str | os.PathLike) -> float:
    """Seconds from the video stream's first frame to its end, from the header (no decoding);
    what `--window-stride` tiles. Raises FaultyVideo when the file cannot say."""
    path = Path(path)
    if not path.is_file():
        raise FaultyVideo("missing" if not path.exists() else "unreadable", str(path))
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.video:
                raise FaultyVideo("no_video_stream", f"streams: {[s.type for s in container.streams]}")
            vstream = container.streams.video[0]
            end, _ = _header_end(container, vstream)
            if end is None:
                raise FaultyVideo("decode_error", "the header gives no duration")
            return max(0.0, end - _stream_start(vstream))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise FaultyVideo("unreadable", f"{type(e).__name__}: {e}") from None


class _FramePicker:
    """Keeps, for each target time, the nearest decoded frame, resized as soon as no later frame can
    replace it: never a full clip of full-resolution frames in memory, whatever the source size,
    and a 25/30 fps source converts only the ~48 frames it gives, not every frame it decodes."""

    def __init__(self, targets: np.ndarray, size: int):
        self.targets = targets
        self.size = size
        self.best_dist = np.full(len(targets), np.inf)
        self.best = [None] * len(targets)       # resized [3, size, size] tensor, or a decoded frame
        self.raw = np.zeros(len(targets), bool)  # best[i] is still a decoded frame
        self._last = (None, None)                # (decoded frame, its resized image)
        self.count = 0
        self.times: list[float] = []
        self.last_time = -np.inf                 # clip time (s) of the latest frame; frames before a late start are negative

    def offer(self, frame, t: float) -> bool:
        """Consider one decoded frame at clip time t (s). Returns True once no later frame can help."""
        self.count += 1
        self.times.append(t)
        self.last_time = max(self.last_time, t)
        dist = np.abs(self.targets - t)
        better = dist < self.best_dist
        if better.any():
            self.best_dist[better] = dist[better]
            for i in np.flatnonzero(better):
                self.best[i] = frame
            self.raw |= better
        # Targets up to the latest time seen are settled (frames come in time order); only the
        # latest decoded frame stays unconverted, for the targets after it.
        self._convert(self.raw & (self.targets <= self.last_time))
        # every later frame is farther from every target than this one
        return t >= self.targets[-1]

    def _convert(self, which: np.ndarray):
        for i in np.flatnonzero(which):
            frame = self.best[i]
            if frame is not self._last[0]:
                self._last = (frame, resize_short_side(frame.to_ndarray(format="rgb24"), self.size))
            self.best[i] = self._last[1]
        self.raw &= ~which

    def source_fps(self) -> float:
        if len(self.times) < 2:
            return float(FPS)
        steps = np.diff(np.sort(self.times))
        steps = steps[steps > 0]
        return float(1.0 / np.median(steps)) if steps.size else float(FPS)

    def real_frames(self) -> int:
        """Targets covered by the video: up to half a source frame past the last frame's time."""
        end = self.last_time + 0.5 / self.source_fps() + 1e-3
        return int(min(len(self.targets), np.count_nonzero(self.targets < end)))

    def stack(self) -> torch.Tensor:
        self._convert(self.raw.copy())
        return torch.stack(self.best)                           # padding repeats the last frame


def resize_short_side(image: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """[H, W, 3] uint8 RGB -> [3, size, size] float32 in 0..255.

    Shorter side to `size` with antialiased bilinear interpolation (torchvision's rounding:
    long side = int(size * long / short)), then the centre crop (torchvision's offsets).
    """
    x = torch.as_tensor(image).permute(2, 0, 1).float()[None]   # [1, 3, H, W]
    h, w = x.shape[-2:]
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return x[0, :, top:top + size, left:left + size].contiguous()


def preprocess_frames(frames: np.ndarray | torch.Tensor, size: int = SIZE, normalize: bool = True,
                      resized: bool = False) -> torch.Tensor:
    """Decoded frames -> the network's input [3, T, size, size] float32.

    frames: [T, H, W, 3] uint8 RGB (decoded), or [T, 3, size, size] 0..255 floats with resized=True.
    The same steps as load_clip, so a test can check a file and its decoded frames agree.
    """
    if not resized:
        frames = torch.stack([resize_short_side(f, size) for f in frames])
    x = torch.as_tensor(frames, dtype=torch.float32).permute(1, 0, 2, 3).contiguous()  # [3, T, S, S]
    return normalize_frames(x, channel_dim=0) if normalize else x


def normalize_frames(x: torch.Tensor, channel_dim: int = 1, mean: tuple = MEAN, std: tuple = STD) -> torch.Tensor:
    """0..255 frames -> normalised float32 (ImageNet's mean/std unless a backbone's own are given),
    on x's device (GPU-side when x is there).

    x: [3, T, S, S] (channel_dim=0) or [B, 3, T, S, S] (channel_dim=1).
    """
    shape = [1] * x.dim()
    shape[channel_dim] = 3
    mean = torch.tensor(mean, device=x.device).view(shape) * 255.0
    inv_std = 1.0 / (torch.tensor(std, device=x.device).view(shape) * 255.0)
    return x.float().sub(mean).mul_(inv_std)


class _AudioCollector:
    """Decoded audio as float32 [channels, samples] in [-1, 1], placed on the clip's timeline.

    Samples are placed by counting from one frame's timestamp, the anchor: the first frame at or
    after clip time `anchor` s. Counting is sample-exact where timestamps are rounded (to the
    millisecond in WebM, and the first frame after a seek is cut short by the decoder's pre-roll),
    and a fixed anchor puts the samples at the same places whether decoding began at the file's
    start or at a seek. Chunks that end well before the clip are counted and dropped, so decoding
    a long file from its start holds no minutes of audio."""

    def __init__(self, origin: float, anchor: float = -np.inf):
        self.origin = origin                     # container time (s) of the clip's t = 0
        self.anchor = anchor
        self.anchored = False
        self.chunks: list[np.ndarray] = []
        self.first: int | None = None            # clip-timeline index of the first decoded sample
        self.sample_rate = 0
        self.n = 0                               # samples counted, dropped ones included
        self.dropped = 0

    def add(self, frame) -> float:
        """Append one AudioFrame; returns the clip time (s) decoded so far."""
        data = audio_frame_to_float(frame)                      # [C, n]
        t = (float(frame.time) if frame.time is not None else 0.0) - self.origin
        if self.first is None:
            self.sample_rate = frame.sample_rate
            self.first = int(round(t * self.sample_rate))
        if not self.anchored and t >= self.anchor:
            self.anchored = True
            self.first = int(round(t * self.sample_rate)) - self.n
        self.n += data.shape[1]
        # before the anchor positions are provisional (off by rounding): keep a second's margin
        if not self.chunks and self.end() < -1.0:
            self.dropped = self.n
        else:
            self.chunks.append(data)
        return self.end()

    def end(self) -> float:
        """Clip time (s) up to which audio was decoded; 0 before any."""
        return (self.first + self.n) / self.sample_rate if self.first is not None else 0.0

    def first_channel(self) -> tuple[np.ndarray, int, int]:
        if not self.chunks:
            return np.zeros(0, np.float32), 0, 0
        channels = min(c.shape[0] for c in self.chunks)
        samples = np.concatenate([c[0] for c in self.chunks]).astype(np.float32)
        shift = self.first + self.dropped       # audio may start before/after the clip
        if shift > 0:
            samples = np.concatenate([np.zeros(shift, np.float32), samples])
        elif shift < 0:
            samples = samples[-shift:]
        return samples, self.sample_rate, channels


def audio_frame_to_float(frame) -> np.ndarray:
    """PyAV AudioFrame -> float32 [channels, samples]; integers scaled (int16 / 32768 etc.)."""
    fmt = frame.format
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not fmt.is_planar:                                      # packed: [1, samples * channels]
        data = data.reshape(-1, channels).T
    base = fmt.name.rstrip("p")
    if base in _INT_SCALE:
        offset, scale = _INT_SCALE[base]
        return ((data.astype(np.float64) - offset) / scale).astype(np.float32)
    return data.astype(np.float32)


def audio_envelope(samples: np.ndarray, sample_rate: int, frames: int = FRAMES, fps: float = FPS,
                   reduce: str = "max", length: int | None = None) -> np.ndarray:
    """Loudness envelope of a mono signal, one value per video frame: float32 [frames].

    samples: 1-D, the first channel, in [-1, 1] (integers already scaled). Steps (the seed's):
    |x| -> Gaussian smoothing, sigma = 200 samples at 44.1 kHz (4.54 ms, scaled to sample_rate)
    -> each frame's window [i/fps, (i+1)/fps) reduced by max | mean | sample (the window's first
    sample: the seed's literal decimation) -> min-max scaled to [0, 1] over the `length` real
    frames; the rest (padding) and windows with no audio are 0.
    """
    if reduce not in REDUCES:
        raise ValueError(f"reduce must be one of {REDUCES}, got {reduce!r}")
    length = frames if length is None else int(length)
    x = np.abs(np.asarray(samples, dtype=np.float64).reshape(-1))
    sigma = SIGMA_SAMPLES * sample_rate / SIGMA_RATE
    smooth = gaussian_smooth(x, sigma)
    bounds = np.round(np.arange(frames + 1) * sample_rate / fps).astype(np.int64)
    env = np.zeros(frames, np.float64)
    for i in range(min(length, frames)):
        lo, hi = bounds[i], min(bounds[i + 1], smooth.size)
        if lo >= hi:
            continue                                            # audio shorter than video
        window = smooth[lo:hi]
        env[i] = window.max() if reduce == "max" else window.mean() if reduce == "mean" else window[0]
    valid = env[:length]
    if valid.size:
        lo, hi = valid.min(), valid.max()
        env[:length] = (valid - lo) / (hi - lo) if hi > lo else 0.0
    env[length:] = 0.0
    return env.astype(np.float32)


def gaussian_smooth(x: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d(x, sigma) (mode 'reflect', same kernel), by FFT convolution:
    ~20x faster for sigma ~200 samples, equal to 1e-12."""
    radius = int(truncate * float(sigma) + 0.5)
    if x.size <= 2 * radius:
        return gaussian_filter1d(x, sigma=sigma, truncate=truncate)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    padded = np.pad(x, radius, mode="symmetric")                # ndimage 'reflect' == numpy 'symmetric'
    return oaconvolve(padded, k / k.sum(), mode="valid")


def envelope_params(reduce: str = "max", frames: int = FRAMES, fps: float = FPS) -> dict:
    """Every parameter of the envelope, for the cache's config and fingerprint."""
    return {"channel": 0, "int_scale": "int16/32768 (and u8, s32, s64 alike)", "abs": True,
            "sigma_samples": SIGMA_SAMPLES, "sigma_rate": SIGMA_RATE,
            "sigma_seconds": SIGMA_SAMPLES / SIGMA_RATE, "smoothing": "scipy.ndimage.gaussian_filter1d(mode=reflect, truncate=4)",
            "reduce": reduce, "window": "[i/fps, (i+1)/fps)", "scale": "min-max over real frames",
            "frames": frames, "fps": fps, "silence_threshold": SILENCE}


def preprocess_params(size: int = SIZE, mean: tuple = MEAN, std: tuple = STD) -> dict:
    """Every parameter of the frame preprocessing, for the cache's config and fingerprint."""
    return {"size": size, "resize": "shorter side, bilinear antialias (torch)", "crop": "centre",
            "mean": list(mean), "std": list(std), "frame_pick": "nearest timestamp"}
