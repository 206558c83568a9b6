"""Seek benchmark: decoding a 4 s clip at second 540 of a 10-minute video vs at second 0.

    seek_ratio = median time of load_clip(start=540) / median time of load_clip(start=0)

Goal <= 1.5: a late clip seeks to the keyframe before start - SEEK_PREROLL_S and decodes forward
(pipeline.media.load_clip), so it costs the clip plus at most a keyframe interval and the pre-roll;
decoding from the file's start would cost ~135x the clip (540 s of video for 4 s). The two starts
alternate, so a change of the machine's load hits both; each ratio of a run is printed with the
CPU model (`lscpu` Model name). `--from-start` also times decoding from the file's start once.

    python -m benchmarks.seek [--minutes 10] [--start 540] [--repeats 7] [--format webm|mp4] [--json OUT]

The video is made here (gray frames with a moving bar, 12 fps, 426x240 like Something-Something v2,
a keyframe every GOP_S seconds, mono 48 kHz audio with clicks) and kept in --workdir for reuse.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

FPS = 12                     # frame rate of the made video and of the clips
WIDTH, HEIGHT = 426, 240     # 240p, as Something-Something v2
GOP_S = 2.0                  # keyframe interval (s) of the made video
RATE = 48000                 # audio sample rate (Hz)
CLICK_EVERY_S = 1.7          # a click in the audio this often, so the envelope is not flat noise


def encode_long_video(path, seconds: float, width: int = WIDTH, height: int = HEIGHT, fps: int = FPS,
                      frame=None, impulses=None, video_start: float = 0.0, audio_delay: float = 0.0,
                      gop_s: float = GOP_S, aac_pns: bool = False, seed: int = 0) -> Path:
    """Encode a long video fast: .webm (VP9 + Opus) or .mp4 (H.264 + AAC), `fps`, mono RATE audio.

    frame: j -> uint8 [height, width, 3] RGB (default: gray with a bar moving across).
    impulses: seconds of clicks in the audio (default: every CLICK_EVERY_S) over low noise.
    video_start: timestamp of the first frame (a container start_time that is not 0).
    audio_delay: the audio starts this many seconds after the video.
    gop_s: keyframe interval in seconds (what a seek lands on).
    aac_pns: FFmpeg's AAC perceptual noise substitution, off by default: its decoder draws noise
    from a generator whose state depends on where decoding began.
    """
    path = Path(path)
    webm = path.suffix == ".webm"
    if frame is None:
        def frame(j):
            img = np.full((height, width, 3), 96, np.uint8)
            x = (j * 4) % width
            img[:, x:x + 8] = 230
            return img
    if impulses is None:
        impulses = np.arange(0.5, seconds, CLICK_EVERY_S)
    container = av.open(str(path), "w")
    vs = container.add_stream("libvpx-vp9" if webm else "libx264", rate=Fraction(fps))
    vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
    vs.codec_context.gop_size = int(round(gop_s * fps))
    vs.options = {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0"} if webm else \
        {"preset": "ultrafast", "crf": "20"}
    aus = container.add_stream("libopus" if webm else "aac", rate=RATE)
    aus.layout = "mono"
    if not webm and not aac_pns:
        aus.options = {"aac_pns": "0"}
    audio = click_audio(seconds - audio_delay, [t - audio_delay for t in impulses], seed=seed)
    fmt = aus.codec_context.format.name
    step = aus.codec_context.frame_size or 1024
    first_video, first_audio = int(round(video_start * fps)), int(round((video_start + audio_delay) * RATE))

    def encode_audio(k: int):
        chunk = audio[None, k:k + step]
        data = np.round(chunk * 32767).astype(np.int16) if fmt.startswith("s16") else chunk.astype(np.float32)
        f = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout="mono")
        f.sample_rate, f.pts, f.time_base = RATE, first_audio + k, Fraction(1, RATE)
        for packet in aus.encode(f):
            container.mux(packet)

    k = 0
    for j in range(int(round(seconds * fps))):
        f = av.VideoFrame.from_ndarray(frame(j), format="rgb24")
        f.pts, f.time_base = first_video + j, Fraction(1, fps)
        for packet in vs.encode(f):
            container.mux(packet)
        # the audio up to this frame's end, so the file is interleaved as a camera's would be
        while k < audio.size and (k + audio_delay * RATE) / RATE < (j + 1) / fps:
            encode_audio(k)
            k += step
    for packet in vs.encode(None):
        container.mux(packet)
    while k < audio.size:
        encode_audio(k)
        k += step
    for packet in aus.encode(None):
        container.mux(packet)
    container.close()
    return path


def click_audio(seconds: float, clicks, noise: float = 0.005, amplitude: float = 0.8, seed: int = 0) -> np.ndarray:
    """float32 [samples] at RATE: low noise plus 4 ms decaying bursts starting at `clicks` (s)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(int(round(seconds * RATE))) * noise
    burst = np.exp(-np.arange(int(0.004 * RATE)) / (0.001 * RATE))
    for t in clicks:
        i = int(round(t * RATE))
        seg = burst[: max(0, x.size - i)]
        x[i:i + seg.size] += amplitude * seg * rng.choice((-1.0, 1.0), seg.size)
    return np.clip(x, -1, 1).astype(np.float32)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                "unknown")


def time_clip(path: Path, start: float, size: int, seek: bool = True) -> float:
    """Seconds to load one clip (frames at `size`, envelope) from `start`, single-threaded decoding."""
    from pipeline.media import load_clip

    t0 = time.perf_counter()
    load_clip(path, size=size, start=start, threads=1, seek=seek)
    return time.perf_counter() - t0


def run(video: Path, start: float, repeats: int, size: int, from_start: bool) -> dict:
    import torch

    torch.set_num_threads(1)                     # as in extract-features' decode workers
    time_clip(video, 0.0, size)                  # warm the page cache and the libraries
    early, late = [], []
    for _ in range(repeats):                     # alternate: load drifts hit both sides
        early.append(time_clip(video, 0.0, size))
        late.append(time_clip(video, start, size))
    ratios = [b / a for a, b in zip(early, late)]
    result = {"cpu": cpu_model(), "video": str(video), "start_s": start, "size": size, "repeats": repeats,
              "clip_at_0_s": [round(t, 4) for t in early], "clip_at_start_s": [round(t, 4) for t in late],
              "ratios": [round(r, 3) for r in ratios],
              "seek_ratio": round(statistics.median(late) / statistics.median(early), 3), "goal": 1.5}
    if from_start:
        full = time_clip(video, start, size, seek=False)
        result.update(decode_from_start_s=round(full, 3),
                      decode_from_start_ratio=round(full / statistics.median(early), 1))
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--start", type=float, default=540.0)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--size", type=int, default=224, help="frame size of the clips (the model's input)")
    p.add_argument("--format", choices=("webm", "mp4"), default="webm")
    p.add_argument("--workdir", type=Path, default=None, help="keep / reuse the made video here")
    p.add_argument("--from-start", action="store_true", help="also time decoding from the file's start once")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="seek-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    video = workdir / f"long-{args.minutes:g}min.{args.format}"
    if not video.exists():
        t0 = time.perf_counter()
        encode_long_video(video, args.minutes * 60)
        print(f"made {video} ({video.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    result = run(video, args.start, args.repeats, args.size, args.from_start)
    print(f"CPU: {result['cpu']}")
    print(f"4 s clip at 0 s: median {statistics.median(result['clip_at_0_s']):.3f} s; at {args.start:g} s: "
          f"median {statistics.median(result['clip_at_start_s']):.3f} s")
    print(f"ratios of this run: {result['ratios']}")
    print(f"seek_ratio = {result['seek_ratio']} (goal <= {result['goal']})")
    if args.from_start:
        print(f"decoding from the start instead: {result['decode_from_start_s']} s "
              f"({result['decode_from_start_ratio']}x the clip at 0 s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
