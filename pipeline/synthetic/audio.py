"""The soundtrack: one sound per impact, a room, room tone and quieter distractors.

Owns the materials (procedural impacts: partials, decays, noise), recorded samples (`load_sounds`
indexes a folder, `--sounds DIR`), the room (reverb tail, brown noise, mains hum) and the
distractors (a camera click, a soft rustle or hum), mixed into float32 [C, S] audio
(`render_audio`). An impact's peak amplitude is proportional to its speed; distractors stay
clearly quieter than the impacts inside the WINDOW_S the model sees. Must not change the scene or
its events; draws from the clip's physics stream, after the frames' dust.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.errors import FoleyError
from pipeline.synthetic.objects import pick
from pipeline.synthetic.physics import V_REF

WINDOW_S = 4.0              # the model sees 48 frames at 12 fps from the start
IMPACT_GAIN = (0.55, 0.75)  # peak amplitude of an impact at V_REF
HIDDEN_GAIN = 0.85          # a hidden impact sounds a little muffled
NOISE_RMS = (0.002, 0.010)  # room noise (brown-ish)
CAMERA_CLICK_P = 0.3
SOFT_SOUND_P = 0.15
CLICK_IN_WINDOW = (0.15, 0.35)  # x loudest impact in the window: never the envelope's peak
CLICK_LATE = (0.4, 0.8)         # after the window it may be as loud as in the seed's example
SOFT_SOUND = (0.05, 0.15)
# Procedural impact materials: partial frequencies (Hz), how many, ring and noise decay (s), noise weight.
MATERIALS = {
    "click":   {"freq": (900, 3000), "partials": (1, 2), "tau_tone": (0.003, 0.010), "tau_noise": (0.002, 0.006), "noise": 0.8},
    "thud":    {"freq": (60, 220), "partials": (1, 2), "tau_tone": (0.015, 0.045), "tau_noise": (0.004, 0.012), "noise": 0.4},
    "wood":    {"freq": (300, 1200), "partials": (2, 3), "tau_tone": (0.012, 0.05), "tau_noise": (0.002, 0.006), "noise": 0.3},
    "glass":   {"freq": (1500, 5000), "partials": (2, 4), "tau_tone": (0.03, 0.10), "tau_noise": (0.001, 0.003), "noise": 0.2},
    "plastic": {"freq": (500, 1800), "partials": (1, 2), "tau_tone": (0.006, 0.02), "tau_noise": (0.003, 0.008), "noise": 0.6},
    "clap":    {"freq": (700, 2500), "partials": (1, 1), "tau_tone": (0.002, 0.005), "tau_noise": (0.006, 0.015), "noise": 1.0},
}
BALL_MATERIALS = ("click", "plastic", "glass", "wood", "clap")
BOX_MATERIALS = ("thud", "wood", "plastic", "clap", "click")
REVERB_S = (0.08, 0.6)      # room decay (T60), s
REVERB_WET = (0.0, 0.8)     # wet gain of a unit-energy impulse response: a tail, never the peak
HUM_P = 0.4                 # mains hum (50/60 Hz and harmonics) in the room tone
HUM_RMS = (0.0005, 0.003)
SAMPLE_SUFFIXES = (".wav", ".flac", ".ogg", ".aif", ".aiff")
SAMPLE_MAX_S = 1.2          # recorded samples are cut (with a fade) so cymbal tails do not fill the clip
SAMPLE_ONSET = 0.1          # a sample starts where |x| first reaches this fraction of its peak
SAMPLE_PRE_S = 0.002        # ... minus this much, so the attack is kept whole
SAMPLE_OTHER_GROUP_P = 0.25 # per event: a sound from another group (material) of the folder


def _impact_sound(rng, sample_rate, amplitude, material):
    """One impact of a material (MATERIALS): a few decaying partials plus a noise burst, peak |x| =
    amplitude: [L]. Harder hits are not brighter here: loudness alone follows the speed."""
    m = MATERIALS[material]
    tau_tone, tau_noise = rng.uniform(*m["tau_tone"]), rng.uniform(*m["tau_noise"])
    n = int(min(6 * max(tau_tone, tau_noise) + 0.005, 0.6) * sample_rate)
    t = np.arange(n) / sample_rate
    f0 = rng.uniform(*m["freq"])
    x = m["noise"] * rng.standard_normal(n) * np.exp(-t / tau_noise)
    for k in range(int(rng.integers(m["partials"][0], m["partials"][1] + 1))):
        ratio = 1.0 if k == 0 else rng.uniform(1.4, 3.2)                # inharmonic modes
        x += np.sin(2 * np.pi * f0 * ratio * t + rng.uniform(0, 6.3)) * np.exp(-t / (tau_tone / (1 + 0.5 * k))) / (1 + k)
    if material == "clap":          # a clap is two or three bursts a few ms apart
        x += np.roll(x, int(rng.uniform(0.004, 0.012) * sample_rate)) * 0.6
    x *= np.minimum(t / 0.0005, 1.0)  # 0.5 ms attack, no discontinuity
    return (amplitude * x / np.abs(x).max()).astype(np.float32)


def _camera_click(rng, sample_rate, amplitude):
    """Shutter: two very short transients 30-60 ms apart: [L]."""
    gap = rng.uniform(0.03, 0.06)
    n = int((gap + 0.01) * sample_rate)
    t = np.arange(n) / sample_rate
    x = np.zeros(n)
    for start, a in ((0.0, 1.0), (gap, 0.7)):
        tt = t - start
        m = tt >= 0
        x[m] += a * rng.standard_normal(m.sum()) * np.exp(-tt[m] / 0.0012)
    return (amplitude * x / np.abs(x).max()).astype(np.float32)


def _soft_sound(rng, sample_rate, amplitude):
    """A rustle or a hum with a smooth envelope, 0.2-0.6 s: [L]."""
    n = int(rng.uniform(0.2, 0.6) * sample_rate)
    t = np.arange(n) / sample_rate
    env = np.sin(np.pi * t / t[-1]) ** 2
    if rng.random() < 0.5:
        x = np.convolve(rng.standard_normal(n), np.ones(8) / 8, mode="same") * env
    else:
        f = rng.uniform(90, 300)
        x = (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t)) * env
    return (amplitude * x / np.abs(x).max()).astype(np.float32)


def _add(track, sound, start):
    i0 = int(round(start))
    if i0 >= track.shape[-1]:
        return
    i1 = min(i0 + len(sound), track.shape[-1])
    track[..., max(i0, 0):i1] += sound[max(-i0, 0):i1 - i0]


def _room_tone(rng, n, sample_rate, channels):
    """Background noise (brown-ish, partly shared by the channels) and sometimes mains hum: ([C, S], facts)."""
    from scipy.signal import lfilter

    rms = rng.uniform(*NOISE_RMS)
    noise = np.empty((channels, n), np.float32)
    common = lfilter([1.0], [1.0, -0.97], rng.standard_normal(n))
    for c in range(channels):
        own = lfilter([1.0], [1.0, -0.97], rng.standard_normal(n))
        mix = 0.7 * common + 0.3 * own + 0.3 * np.std(common) * rng.standard_normal(n)
        noise[c] = rms * mix / np.std(mix)
    hum = 0.0
    if rng.random() < HUM_P:
        hum = rng.uniform(*HUM_RMS)
        f, t = (50.0 if rng.random() < 0.5 else 60.0), np.arange(n) / sample_rate
        wave = sum(np.sin(2 * np.pi * f * h * t + rng.uniform(0, 6.3)) / h for h in (1, 2, 3))
        noise += (hum * wave / np.std(wave)).astype(np.float32)
    return noise, {"noise_rms": round(float(rms), 4), "hum_rms": round(float(hum), 4)}


def _reverb(rng, dry, sample_rate):
    """A room: dry [C, S] plus an exponentially decaying noise tail (unit-energy impulse response
    times a wet gain, so the tail never holds the peak): ([C, S], facts)."""
    from scipy.signal import fftconvolve

    t60, wet = rng.uniform(*REVERB_S), rng.uniform(*REVERB_WET)
    n = int(t60 * sample_rate)
    ir = rng.standard_normal(n) * np.exp(-6.9 * np.arange(n) / n)   # -60 dB at t60
    ir[: int(0.003 * sample_rate)] = 0                               # the first reflection after 3 ms
    ir /= np.sqrt(np.sum(ir ** 2))
    tail = fftconvolve(dry, ir[None], axes=1)[:, :dry.shape[1]]
    return (dry + wet * tail).astype(np.float32), {"t60": round(float(t60), 3), "wet": round(float(wet), 3)}


def _impacts(rng, scene, events, n, sample_rate, channels, bank):
    """One sound per event, dry: ([C, n] float32, peak amplitudes [E], facts about the sounds used)."""
    gain = rng.uniform(*IMPACT_GAIN)
    if bank is None:
        mats = {"ball": pick(rng, BALL_MATERIALS), "box": pick(rng, BOX_MATERIALS)}
        facts = {"source": "procedural", "materials": mats}
    else:
        group = int(rng.integers(len(bank["groups"])))
        facts = {"source": "samples", "folder": bank["folder"], "group": bank["groups"][group]["name"], "samples": []}
    impacts = np.zeros((channels, n), np.float32)
    amps = []
    for ev in events:
        amp = gain * min(ev["speed"] / V_REF, 1.25) * (HIDDEN_GAIN if ev["hidden"] else 1.0)
        amps.append(amp)
        if bank is None:
            snd = _impact_sound(rng, sample_rate, amp, mats[ev["bodies"][0].shape])
        else:
            g = group if rng.random() >= SAMPLE_OTHER_GROUP_P else int(rng.integers(len(bank["groups"])))
            name, wave = _pick_sample(rng, bank, g, ev["speed"], sample_rate)
            snd = amp * wave
            facts["samples"].append(name)
        # Stereo: a mild pan by where it happened (the first channel keeps >= 75% of the level).
        pan = np.clip(ev["x"] / scene.w - 0.5, -0.5, 0.5) * 0.5
        gains = [1.0] if channels == 1 else [1.0 - max(pan, 0.0), 1.0 - max(-pan, 0.0)]
        for c in range(channels):
            _add(impacts[c], snd * gains[c], ev["t"] * sample_rate)
    return impacts, amps, facts


def _distractors(rng, audio, events, amps, duration, sample_rate):
    """Add a camera click and / or a soft sound to audio [C, S] in place, below the impacts inside
    the window (CLICK_IN_WINDOW, SOFT_SOUND x the loudest of them): [{"kind", "time", "amplitude"}]."""
    in_window = [a * 0.75 for a, ev in zip(amps, events) if ev["t"] < WINDOW_S]  # worst case after panning
    ref = max(in_window) if in_window else (max(amps) if amps else 0.1)
    distractors = []
    if rng.random() < CAMERA_CLICK_P:
        t_click = duration - rng.uniform(0.08, 0.35)
        late = t_click > WINDOW_S + 0.05
        amp = rng.uniform(*(CLICK_LATE if late else CLICK_IN_WINDOW)) * (max(amps) if late and amps else ref)
        _add(audio, _camera_click(rng, sample_rate, amp), t_click * sample_rate)
        distractors.append({"kind": "camera_click", "time": round(float(t_click), 3), "amplitude": round(float(amp), 4)})
    if rng.random() < SOFT_SOUND_P:
        t_soft = rng.uniform(0.0, duration - 0.3)
        amp = rng.uniform(*SOFT_SOUND) * ref
        _add(audio, _soft_sound(rng, sample_rate, amp), t_soft * sample_rate)
        distractors.append({"kind": "soft_sound", "time": round(float(t_soft), 3), "amplitude": round(float(amp), 4)})
    return distractors


def render_audio(rng, scene, events, duration, sample_rate, channels, bank=None):
    """Room tone + one sound per impact (+ room reverb) + distractors: ([C, S] float32, distractors, facts).

    An impact's peak amplitude is proportional to its speed (recorded samples are peak-normalised
    first); bank (load_sounds) picks recorded samples instead of the procedural materials."""
    n = int(round(duration * sample_rate))
    impacts, amps, facts = _impacts(rng, scene, events, n, sample_rate, channels, bank)
    impacts, facts["reverb"] = _reverb(rng, impacts, sample_rate)
    audio, tone = _room_tone(rng, n, sample_rate, channels)
    facts.update(tone)
    audio += impacts
    distractors = _distractors(rng, audio, events, amps, duration, sample_rate)
    return np.clip(audio, -1.0, 1.0).astype(np.float32), distractors, facts


# --- Recorded samples (--sounds DIR) -----------------------------------------------------------
def _decode_audio(path):
    """Decode a sound file with PyAV: (first-channels mean, float64 [S], sample rate). Raises FoleyError."""
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                raise FoleyError(f"--sounds: {path} has no audio stream")
            stream = c.streams.audio[0]
            planar = av.AudioResampler(format="fltp")
            parts = [g.to_ndarray() for f in c.decode(stream) for g in planar.resample(f)]
            rate = stream.rate
    except (av.FFmpegError, OSError, ValueError) as e:
        raise FoleyError(f"--sounds: {path} is not a readable audio file ({e})") from None
    if not parts or not rate:
        raise FoleyError(f"--sounds: {path} holds no audio samples")
    x = np.concatenate(parts, axis=1).astype(np.float64).mean(axis=0)
    if not np.isfinite(x).all() or np.abs(x).max() <= 1e-4:
        raise FoleyError(f"--sounds: {path} is silent (not an impact sound: remove it from the folder)")
    return x, int(rate)


@lru_cache(maxsize=256)
def _sample_wave(path, sample_rate):
    """A recorded impact ready to mix: mono, starting at its onset, at most SAMPLE_MAX_S with a fade,
    at `sample_rate`, peak 1: float32 [L]. Cached per worker process."""
    from scipy.signal import resample_poly

    x, rate = _decode_audio(path)
    start = max(int(np.argmax(np.abs(x) >= SAMPLE_ONSET * np.abs(x).max())) - int(SAMPLE_PRE_S * rate), 0)
    x = x[start:start + int(SAMPLE_MAX_S * rate)]
    fade = min(int(0.05 * rate), len(x))
    x[len(x) - fade:] *= np.linspace(1, 0, fade)
    if rate != sample_rate:
        g = math.gcd(rate, sample_rate)
        x = resample_poly(x, sample_rate // g, rate // g)
    return (x / np.abs(x).max()).astype(np.float32)


def load_sounds(folder) -> dict:
    """Index a folder of recorded impact samples for make_synthetic(sounds=...).

    Every folder (the root or any sub-folder) that directly holds audio files (SAMPLE_SUFFIXES) is a
    group: a material, an instrument or one velocity layer. Within a group the files are ordered by
    their recorded peak level, softest first, and an impact picks the file whose rank matches its
    speed (then plays it at a peak proportional to the speed). Every file is decoded once here, so
    a bad one fails now, naming the file. Returns {"folder", "groups": [{"name", "files": [...]}]}.
    """
    if not Path(folder).is_dir():
        raise FoleyError(f"--sounds {folder}: not a directory")
    root = Path(folder).resolve()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SAMPLE_SUFFIXES)
    if not files:
        raise FoleyError(f"--sounds {folder}: no audio files ({', '.join(SAMPLE_SUFFIXES)}) in it or its sub-folders")
    groups = {}
    for p in files:
        x, _ = _decode_audio(p)
        groups.setdefault(str(p.parent.relative_to(root)), []).append((float(np.abs(x).max()), str(p)))
    return {"folder": str(root),
            "groups": [{"name": name, "files": [path for _, path in sorted(entries)]}
                       for name, entries in sorted(groups.items())]}


def _pick_sample(rng, bank, group, speed, sample_rate):
    """The sample of `group` whose loudness rank matches the impact speed (with a little jitter):
    (path relative to the folder, wave [L] with peak 1)."""
    files = bank["groups"][group]["files"]
    q = min(speed / V_REF, 1.0) * (len(files) - 1) + rng.normal(0, 0.5)
    path = files[int(np.clip(round(q), 0, len(files) - 1))]
    return str(Path(path).relative_to(bank["folder"])), _sample_wave(path, sample_rate)
