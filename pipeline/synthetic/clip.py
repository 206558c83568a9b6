"""One clip from its spec: the scene simulated, drawn and heard (`render_clip`).

Owns the two random streams of a clip and their order: the physics stream (seed) builds the scene,
then gives the frames' dust and the audio; the look's stream ([seed, LOOK_STREAM]) draws the
appearance, camera, backdrop and sensor noise, so a look changes how a clip appears, never when
it sounds. Everything follows from the spec, so rendering is pure and the dataset does not depend
on how many processes render it. Must not encode, write files or decide which clips exist.
"""
from __future__ import annotations

import numpy as np

from pipeline.synthetic.audio import render_audio
from pipeline.synthetic.frames import add_distractor, render_frames
from pipeline.synthetic.looks import DEFAULT_LOOK, LOOK_FAMILIES, LOOK_STREAM, draw_variety
from pipeline.synthetic.physics import GRAVITY, SCENE_H, Scene, merge_events, simulate
from pipeline.synthetic.scenes import SCENES

FLOOR_Y = (180.0, 215.0)    # where the table's top lies in the scene (px of SCENE_H)


def _simulated_scene(rng, template, look, variety, width, duration):
    """Build the template's scene (width: scene units) and simulate it: (scene, events < duration)."""
    scene = Scene(width, rng.uniform(*FLOOR_Y), rng.uniform(*GRAVITY), duration)
    scene.family, scene.variety = LOOK_FAMILIES[look], variety
    SCENES[template](rng, scene, duration)
    add_distractor(scene, variety)
    simulate(scene)
    return scene, [ev for ev in merge_events(scene.events) if ev["t"] < duration]


def render(spec, bank=None):
    """Everything about one clip, from its spec: frames, audio, events and facts for dataset.json.

    The physics and the sound draw from the clip's seed; the look (spec["look"], DEFAULT_LOOK when
    absent) draws from a stream of its own, so a look changes how a clip appears, not when it sounds.
    """
    rng = np.random.default_rng(int(spec["seed"]))
    look = spec.get("look", DEFAULT_LOOK)
    width, height = (int(v) for v in spec["size"])
    duration, fps = float(spec["duration"]), int(spec["fps"])
    sample_rate, channels = int(spec["sample_rate"]), int(spec["channels"])
    vrng = np.random.default_rng([int(spec["seed"]), LOOK_STREAM])
    variety = draw_variety(vrng, look)
    variety.update(spec.get("variety") or {})   # settings fixed by the caller (tests, ablations) win
    scene, events = _simulated_scene(rng, spec["template"], look, variety, width * SCENE_H / height, duration)
    frames = render_frames(rng, vrng, scene, events, variety, (width, height), int(round(duration * fps)), fps)
    audio, distractors, sound = render_audio(rng, scene, events, duration, sample_rate, channels, bank)
    return {
        "frames": frames, "audio": audio, "fps": fps, "sample_rate": sample_rate,
        "events": [round(float(ev["t"]), 3) for ev in events],
        "speeds": [round(float(ev["speed"]), 1) for ev in events],
        "hidden": [ev["hidden"] is not None for ev in events],
        "placeholders": scene.placeholders, "distractors": distractors,
        "variety": variety, "sound": sound,
    }


def render_clip(spec: dict, sounds: dict | None = None):
    """Render one clip from its spec; pure and deterministic (the spec carries the clip's seed).

    spec: {"template": one of TEMPLATES_12 / OTHER_TEMPLATES, "seed": int, "duration": s,
           "fps": int, "sample_rate": Hz, "channels": 1|2, "size": (width, height),
           optional "look": one of LOOKS (default DEFAULT_LOOK), optional "variety": settings that
           replace the drawn ones (keys as in dataset.json's clips[id].variety, sub-dicts whole)}
    sounds: a load_sounds() index to take impact sounds from recorded samples (None: procedural).
    Returns (frames uint8 [N, H, W, 3] with N = round(duration * fps),
             audio float32 [C, S] in [-1, 1] with S = round(duration * sample_rate),
             events: impact times in seconds (sorted), fps, sample_rate).
    """
    out = render(spec, sounds)
    return out["frames"], out["audio"], out["events"], out["fps"], out["sample_rate"]
