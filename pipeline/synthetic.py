"""Synthetic Something-Something-shaped dataset with sound: the embedded default data.

`make_synthetic(out)` writes, into OUT:

    videos/{id}.webm                       VP9 + Opus (`fmt="mp4"`: H.264 + AAC)
    something-something-v2-train.json      SSv2 annotation lists: {"id", "label", "template", "placeholders"}
    something-something-v2-validation.json
    something-something-v2-labels.json     {"Dropping something onto something": "3", ...}
    events.json                            {id: [impact times, seconds]}: the ground truth of every sound
    dataset.json                           seed, look, counts, faulty ids with the reason a decoder gives,
                                           per-clip facts (variety drawn from the look, sound used)

Each clip is a small 2-D physics scene (side view) for one of the 12 sound templates of the seed,
simulated at 500 Hz: falls with bounces, throws against a wall, hits, collisions that deflect or halt,
stack collapses, drops into / behind / in front of something. The picture carries the sound
(FINDINGS.md, "Make impacts visible"): every impact stops or bounces the object, squashes it for
~2 frames at 12 fps and raises a dust puff at the contact point, all scaled by the impact speed; a
hidden impact (behind an occluder, inside a container) shows as dust rising above the occluder.

How a clip looks is drawn from a *look* (LOOKS; DEFAULT_LOOK is broad, HELDOUT_LOOK shares none of
its walls, floors, objects or palettes): wall and floor (textures, gradients, bundled photographs),
object shapes, sizes and colours, light, camera zoom / framing / shake, motion trails, sensor
noise, a partial occluder near the camera and silent distractor motion. A head trained on one
renderer's look learns the look (FINDINGS.md, "Pretrained features"); training on one look and
validating on another measures that. The look draws from a random stream of its own, so the
physics, and with it when the clip sounds, does not depend on it.

The audio is one sound per impact with peak amplitude proportional to the impact speed: a
procedural material per clip (click, thud, wood, glass, plastic, clap; partials and decay times
vary) or, with `sounds=DIR`, recorded samples (load_sounds); then a room (reverb tail) and room
tone (brown noise, sometimes mains hum), with distractors kept clearly quieter than the impacts
inside the 4 s the model sees (a camera click near the end, sometimes a soft rustle or hum).

Everything about a clip follows from its spec (incl. a per-clip seed), so `render_clip` is pure and
the dataset does not depend on the number of parallel jobs. WebM (VP9 + Opus) files are bit-exact
for a seed (muxers run with `fflags=+bitexact`, encoders single-threaded); with --format mp4,
libx264 occasionally takes other, equally good decisions on a loaded machine (even single-threaded,
with jobs=1), so an mp4 file may differ in its bytes by compression noise while its rendered
frames, audio, JSONs and events are identical.

Faulty files (~5% of the sound clips per split, at least one per split), recorded in dataset.json:
  - no_audio_stream: the file has no audio stream;
  - silent_audio: the audio stream is all zeros;
  - truncated: the file's bytes are cut in half. The reason recorded is what PyAV reports when the
    result is probed: `unreadable` (cannot be opened; mp4, whose index sits at the end) or
    `too_short` (opens, but fewer than 12 frames decode; WebM loses its only cluster).

Scene coordinates are pixels of a 240-pixel-high frame (y down); other frame sizes are drawn by
scaling, so the physics and the event times do not depend on `size`.
"""
from __future__ import annotations

import json
import math
import time
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.data import SOUND12
from pipeline.errors import FoleyError

# --- Templates ---------------------------------------------------------------------------------
TEMPLATES_12 = list(SOUND12)     # the seed's 12 sound templates (pipeline.data owns the list)
# Templates without a distinct sound: a few clips use them so that the class filter has work to do.
OTHER_TEMPLATES = [
    "Pushing [something] from left to right",
    "Lifting [something] up completely without letting it drop down",
]

# --- Output ------------------------------------------------------------------------------------
TRAIN_JSON = "something-something-v2-train.json"
VAL_JSON = "something-something-v2-validation.json"
LABELS_JSON = "something-something-v2-labels.json"
EVENTS_JSON = "events.json"
DATASET_JSON = "dataset.json"
DATASET_VERSION = 2          # 2: looks, per-clip variety and sound facts
FORMATS = {  # fmt -> (container suffix, video codec, default audio codec)
    "webm": ("webm", "libvpx-vp9", "libopus"),
    "mkv": ("mkv", "libvpx-vp9", "libopus"),
    "mp4": ("mp4", "libx264", "aac"),
}
OPUS_RATE = 48000  # Opus only runs at 48 kHz (and lower); PyAV resamples 44.1 kHz input to it

# --- Clip variety ------------------------------------------------------------------------------
DURATION_S = (2.0, 6.0)
FPS_CHOICES = (12, 25, 30)
RATE_CHOICES = (44100, 48000)
WINDOW_S = 4.0              # the model sees 48 frames at 12 fps from the start
LATE_FIRST_IMPACT_P = 0.05  # long clips whose first impact falls after the window (as in real data)
FAULT_FRACTION = 0.05
FAULT_KINDS = ("no_audio_stream", "silent_audio", "truncated")
OTHER_PER_SOUND_CLIPS = 25  # one non-sound clip per 25 sound clips, at least one per split
MIN_FRAMES = 12             # DESIGN.md: fewer real frames than this is a faulty video

# --- Scene and physics (pixels of a 240-pixel-high frame, seconds) ------------------------------
SCENE_H = 240.0
SIM_DT = 1 / 500            # 2 ms steps: < 2 px per step at the fastest speeds, events within 2 ms
GRAVITY = (1400.0, 2200.0)  # px/s^2; slower than real scale (~4000) so falls span a few frames at 12 fps
V_REF = 800.0               # impact speed (px/s) that gives full loudness, full squash, biggest puff
V_MIN_EVENT = 70.0          # slower contacts are resting contacts: no bounce, no sound, no event
EVENT_MERGE_S = 0.02        # contacts closer than this are one sound
SQUASH_MAX = {"ball": 0.45, "box": 0.3}
SQUASH_TAU_S = 0.07         # squash decays over ~2 frames at 12 fps (0.17 s)
DUST_LIFE_S = (0.3, 0.6)
DUST_DRAG_S = 0.15

# --- Audio -------------------------------------------------------------------------------------
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

# --- Vocabulary --------------------------------------------------------------------------------
BALLS = ["a ball", "a tennis ball", "an orange", "an apple", "a ping pong ball", "a rubber ball", "a plum"]
BOXES = ["a book", "a box", "a wooden block", "a phone", "a remote control", "a wallet", "a toy car"]
STACKS = ["blocks", "books", "boxes", "coasters", "cassettes"]
CONTAINERS = ["a bowl", "a cup", "a box", "a basket", "a pot", "a bucket"]
OCCLUDERS = ["a box", "a pillow", "a laptop", "a bag", "a folder"]
SURFACES = ["a table", "a book", "a plate", "a box", "a chair"]
WALLS = ["a wall", "a door", "a cupboard", "a fridge"]
TOOLS = ["a spoon", "a stick", "a pen", "a ruler", "a hammer"]
BACKDROPS = ["a bottle", "a vase", "a lamp", "a mug", "a jar"]
PALETTE = np.array([
    [220, 40, 40], [40, 150, 60], [40, 80, 210], [235, 200, 30], [230, 120, 20], [150, 50, 180],
    [20, 170, 180], [240, 240, 240], [30, 30, 30], [200, 60, 140], [120, 200, 60], [140, 90, 50],
], dtype=np.float32)
SKIN = np.array([[224, 172, 105], [198, 134, 66], [141, 85, 36], [255, 219, 172], [241, 194, 125]], np.float32)

# --- Looks: families of appearance settings, drawn per clip (FINDINGS.md: a head trained on one
# renderer's look learns the look, not the event; so the look varies, and a held-out look tests it) ---
# Object names per look; the name also picks how the object is drawn (VISUALS).
VISUALS = {
    "a ball": "ball", "a rubber ball": "ball", "a ping pong ball": "ball", "a tennis ball": "striped",
    "a beach ball": "striped", "an orange": "fruit", "an apple": "fruit", "a plum": "fruit",
    "a lemon": "egg", "an egg": "egg", "a potato": "egg",
    "a book": "book", "a box": "box", "a wooden block": "box", "a phone": "box", "a remote control": "box",
    "a wallet": "box", "a toy car": "box", "a can": "can", "a bottle": "bottle", "a jar": "can",
    "a crate": "crate", "a brick": "box", "a carton": "crate",
}
ASPECT = {"bottle": (0.55, 1.7), "can": (0.75, 1.35), "book": (1.25, 0.6)}  # (hx, hy) factors of a box
PHOTO_WALLS = ("coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "astronaut.png",
               "brick.png", "page.png", "camera.png", "text.png")   # scikit-image's bundled photographs
PHOTO_FLOORS = ("gravel.png", "grass.png", "brick.png")
LOOK_FAMILIES = {
    # The default: a broad family of indoor scenes (rooms, tables, hand-held phones).
    "home": {
        "walls": ("plain", "stripes", "tiles", "wallpaper", "gradient", "clutter", "wood"),
        "floors": ("grain", "plain", "tiles"), "palettes": ("saturated", "muted", "wood"),
        "balls": ("a ball", "a rubber ball", "a ping pong ball", "a tennis ball", "a beach ball"),
        "boxes": ("a book", "a box", "a wooden block", "a phone", "a remote control", "a wallet", "a can"),
        "scale": (0.8, 1.25), "brightness": (0.65, 1.2), "tint": 0.08, "contrast": (0.8, 1.2),
        "vignette": (0.0, 0.35), "zoom": (1.0, 1.3), "pan": 0.08, "floor_at": (0.72, 0.9),
        "shake": (0.3, 1.5), "shake_p": 0.5, "blur_p": 0.4, "occluder_p": 0.25, "distractor_p": 0.35,
        "noise": (0.0, 0.0)},   # VP9 at crf 32 smooths faint sensor noise away: the looks below carry it
    # The held-out look: photographed backdrops and outdoor floors, fruit, bottles and crates in
    # pastel / dark / metal colours, a closer, shakier camera, stronger coloured light.
    "workshop": {
        "walls": ("photo", "photo", "photo", "brick", "fabric", "checker"), "floors": ("photo", "cloth", "concrete"),
        "palettes": ("pastel", "dark", "metal"),
        "balls": ("an orange", "an apple", "a plum", "a lemon", "an egg", "a potato"),
        "boxes": ("a bottle", "a crate", "a jar", "a brick", "a carton"),
        "scale": (0.85, 1.3), "brightness": (0.7, 1.25), "tint": 0.15, "contrast": (0.75, 1.35),
        "vignette": (0.2, 0.55), "zoom": (1.25, 1.55), "pan": 0.1, "floor_at": (0.6, 0.8),
        "shake": (1.0, 3.5), "shake_p": 0.8, "blur_p": 0.7, "occluder_p": 0.4, "distractor_p": 0.5,
        "noise": (2.0, 5.0)},
    # Dim light: dark walls, high sensor noise, a spot of light.
    "night": {
        "walls": ("plain", "gradient", "clutter", "fabric"), "floors": ("plain", "grain", "cloth"),
        "palettes": ("saturated", "pastel", "metal"), "balls": BALLS, "boxes": BOXES + ["a can", "a bottle"],
        "scale": (0.8, 1.25), "brightness": (0.35, 0.6), "tint": 0.1, "contrast": (0.9, 1.2),
        "vignette": (0.4, 0.7), "zoom": (1.0, 1.3), "pan": 0.08, "floor_at": (0.7, 0.88),
        "shake": (0.5, 2.0), "shake_p": 0.5, "blur_p": 0.6, "occluder_p": 0.2, "distractor_p": 0.3,
        "noise": (4.0, 8.0)},
    # make-synthetic before looks existed: one textured wall, a wooden table, a fixed side camera.
    "classic": {
        "walls": ("plain", "stripes", "tiles", "wallpaper"), "floors": ("grain",),
        "palettes": ("saturated",), "balls": BALLS, "boxes": BOXES, "scale": (1.0, 1.0),
        "brightness": (1.0, 1.0), "tint": 0.0, "contrast": (1.0, 1.0), "vignette": (0.0, 0.0),
        "zoom": (1.0, 1.0), "pan": 0.0, "floor_at": None, "shake": (0.0, 0.0), "shake_p": 0.0,
        "blur_p": 0.0, "occluder_p": 0.0, "distractor_p": 0.0, "noise": (0.0, 0.0)},
}
LOOKS = tuple(LOOK_FAMILIES)
DEFAULT_LOOK = "home"       # what --look defaults to: broad on purpose
HELDOUT_LOOK = "workshop"   # the demo's unseen look: other walls, floors, objects, colours and camera
LOOK_ID_BASE = 1_000_000    # look k's clip ids lie in [k * 1e6 + 100000, k * 1e6 + 999999]: disjoint
SHAKE_HZ = (0.4, 2.5)       # hand-held sway (scene px at 240 px height), plus per-frame jitter
BLUR_TRAIL = (0.35, 0.55, 0.85)  # motion blur: a moving body is drawn at 3 times in the exposure, oldest
                                 # faintest (a trail; a body at rest stays opaque where the copies overlap)
BLUR_EXPOSURE = (0.3, 0.8)  # x the frame interval
LOOK_STREAM = 1             # the look's random stream: [clip seed, LOOK_STREAM]
NOISE_FIELDS = 6            # sensor noise: a few precomputed fields, one picked per frame (cheap)
STEM, LEAF = np.array([90, 60, 30], np.float32), np.array([60, 150, 50], np.float32)
PAGES = np.array([235, 230, 215], np.float32)
SHADOW = np.array([0, 0, 0], np.float32)
DISTRACTORS = ("hand", "roller", "swing")   # silent motion: never an event, never a sound


# =================================================================================================
# Physics
# =================================================================================================
class _Body:
    """An axis-aligned ball or box. Held (fixed) before `release`; `control(body, t)` makes it
    kinematic (infinite mass, velocity set by a script)."""

    def __init__(self, name, shape, x, y, hx, hy, colour, *, mass=1.0, release=0.0, vx=0.0, vy=0.0,
                 e=0.5, decel=None, gravity=True, control=None, layer=1):
        self.name, self.shape, self.colour, self.layer = name, shape, colour, layer
        self.x, self.y, self.hx, self.hy = float(x), float(y), float(hx), float(hy)
        self.vx, self.vy, self.mass, self.release, self.e = float(vx), float(vy), mass, release, e
        # Rolling balls lose little speed; sliding boxes stop within a few tens of pixels.
        self.decel = decel if decel is not None else (60.0 if shape == "ball" else 1500.0)
        self.gravity, self.control, self.on_contact = gravity, control, None
        self.colliders = []        # static boxes (x0, y0, x1, y1) this body bounces on
        self.impacts = []          # (t, speed, nx, ny): drives the squash
        self.state = {}
        self.track = []

    def held(self, t):
        return t < self.release

    def inv_mass(self, t):
        return 0.0 if (self.control is not None or self.held(t)) else 1.0 / self.mass


class _Scene:
    def __init__(self, width, floor_y, g, duration):
        self.w, self.h, self.floor_y, self.g, self.duration = width, SCENE_H, floor_y, g, duration
        self.bodies, self.pairs, self.events = [], [], []
        self.occluders = []        # (x0, y0, x1, y1): drawn over the bodies; impacts inside are hidden
        self.decor = []            # (layer, draw(img, t, s)) for scenery, hands, occluders
        self.placeholders = []
        self.pair_last = {}
        self.family, self.variety = None, None   # the look's family and this clip's draws (_render)

    def floor(self, y=None):
        y = self.floor_y if y is None else y
        return (-4000.0, y, 4000.0, y + 4000.0)

    def add(self, body, colliders=()):
        body.colliders = list(colliders)
        self.bodies.append(body)
        return body

    def event(self, t, x, y, speed, normal, bodies):
        hidden = None
        for (x0, y0, x1, y1) in self.occluders:
            if x0 - 2 <= x <= x1 + 2 and y0 + 1 < y <= y1 + 2:
                hidden = (x, y0)  # the dust shows above the occluder's top edge
        self.events.append({"t": t, "x": x, "y": y, "speed": speed, "normal": normal,
                            "bodies": bodies, "hidden": hidden})


def _simulate(scene):
    """Step all bodies at SIM_DT; fills body.track [n_steps, 2] and scene.events."""
    n_steps = int(math.ceil(scene.duration / SIM_DT)) + 2
    g = scene.g
    for k in range(n_steps):
        t = k * SIM_DT
        for b in scene.bodies:
            if b.control is not None:
                b.control(b, t)
            if b.held(t):
                b.track.append((b.x, b.y))
                continue
            if b.gravity and b.control is None:
                b.vy += g * SIM_DT
            px, py = b.x, b.y
            b.x += b.vx * SIM_DT
            b.y += b.vy * SIM_DT
            supported = False
            for box in b.colliders:
                supported |= _collide_static(scene, b, box, px, py, t)
            if supported and b.control is None:
                # Friction while resting on a surface (rolling balls barely, sliding boxes strongly).
                dv = b.decel * SIM_DT
                b.vx = 0.0 if abs(b.vx) <= dv else b.vx - math.copysign(dv, b.vx)
        for a, b, e, silent in scene.pairs:
            _collide_pair(scene, a, b, e, silent, t)
        for b in scene.bodies:
            if not b.held(t):
                b.track.append((b.x, b.y))
    for b in scene.bodies:
        b.track = np.asarray(b.track, dtype=np.float64)


def _collide_static(scene, b, box, px, py, t):
    """Resolve body b against a static box; returns True when b rests on its top."""
    x0, y0, x1, y1 = box
    if not (b.x + b.hx > x0 and b.x - b.hx < x1 and b.y + b.hy > y0 and b.y - b.hy < y1):
        return False
    # Candidate sides: those the body was outside of before this step (robust near corners).
    sides = []
    if py + b.hy <= y0 + 1e-6:
        sides.append((b.y + b.hy - y0, 0.0, -1.0))
    if py - b.hy >= y1 - 1e-6:
        sides.append((y1 - (b.y - b.hy), 0.0, 1.0))
    if px + b.hx <= x0 + 1e-6:
        sides.append((b.x + b.hx - x0, -1.0, 0.0))
    if px - b.hx >= x1 - 1e-6:
        sides.append((x1 - (b.x - b.hx), 1.0, 0.0))
    if not sides:
        sides = [(b.y + b.hy - y0, 0.0, -1.0), (y1 - (b.y - b.hy), 0.0, 1.0),
                 (b.x + b.hx - x0, -1.0, 0.0), (x1 - (b.x - b.hx), 1.0, 0.0)]
    pen, nx, ny = min(sides)
    b.x += nx * pen
    b.y += ny * pen
    vn = b.vx * nx + b.vy * ny
    if vn < 0:
        if -vn >= V_MIN_EVENT and b.control is None:
            cx = min(max(b.x, x0), x1) if nx == 0 else (x0 if nx < 0 else x1)
            cy = (y0 if ny < 0 else y1) if ny != 0 else min(max(b.y, y0), y1)
            scene.event(t, cx, cy, -vn, (nx, ny), [b])
            b.impacts.append((t, -vn, nx, ny))
            new_vn = -b.e * vn
            if nx == 0:
                b.vx *= 0.8   # a bounce takes some of the sliding speed
            else:
                b.vy *= 0.8
        else:
            new_vn = 0.0
        b.vx += (new_vn - vn) * nx
        b.vy += (new_vn - vn) * ny
    return ny < 0


def _collide_pair(scene, a, b, e, silent, t):
    """Resolve two bodies (ball-ball by centre distance, otherwise axis-aligned boxes)."""
    dx, dy = b.x - a.x, b.y - a.y
    if a.shape == "ball" and b.shape == "ball":
        d = math.hypot(dx, dy)
        pen = a.hx + b.hx - d
        if pen <= 0:
            return
        nx, ny = (dx / d, dy / d) if d > 1e-9 else (1.0, 0.0)
    else:
        ox = a.hx + b.hx - abs(dx)
        oy = a.hy + b.hy - abs(dy)
        if ox <= 0 or oy <= 0:
            return
        if ox < oy:
            pen, nx, ny = ox, math.copysign(1.0, dx), 0.0
        else:
            pen, nx, ny = oy, 0.0, math.copysign(1.0, dy)
    ia, ib = a.inv_mass(t), b.inv_mass(t)
    if ia + ib > 0:
        a.x -= nx * pen * ia / (ia + ib)
        a.y -= ny * pen * ia / (ia + ib)
        b.x += nx * pen * ib / (ia + ib)
        b.y += ny * pen * ib / (ia + ib)
    vrel = (b.vx - a.vx) * nx + (b.vy - a.vy) * ny
    if vrel >= 0:
        return
    speed = -vrel
    if ia + ib > 0:
        j = (1 + e) * speed / (ia + ib)
        a.vx -= j * ia * nx
        a.vy -= j * ia * ny
        b.vx += j * ib * nx
        b.vy += j * ib * ny
    key = (id(a), id(b))
    if t - scene.pair_last.get(key, -1.0) < 0.05:  # one touch, one sound
        return
    scene.pair_last[key] = t
    if speed >= V_MIN_EVENT and not silent:
        cx = a.x + nx * a.hx if nx else (max(a.x - a.hx, b.x - b.hx) + min(a.x + a.hx, b.x + b.hx)) / 2
        cy = a.y + ny * a.hy if ny else (max(a.y - a.hy, b.y - b.hy) + min(a.y + a.hy, b.y + b.hy)) / 2
        scene.event(t, cx, cy, speed, (0.0, -1.0), [a, b])
        a.impacts.append((t, speed, nx, ny))     # a is pushed along -n: its contact side faces +n
        b.impacts.append((t, speed, -nx, -ny))
    for me, other in ((a, b), (b, a)):
        if me.on_contact is not None:
            me.on_contact(me, t, other)


# =================================================================================================
# Drawing (float32 images, 0..255, soft 1-pixel edges so sub-pixel motion shows)
# =================================================================================================
def _fill_ellipse(img, cx, cy, rx, ry, colour, alpha=1.0):
    h, w = img.shape[:2]
    rx, ry = max(rx, 0.5), max(ry, 0.5)
    x0, x1 = max(int(cx - rx - 1), 0), min(int(cx + rx + 2), w)
    y0, y1 = max(int(cy - ry - 1), 0), min(int(cy + ry + 2), h)
    if x0 >= x1 or y0 >= y1:
        return
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :] / rx
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None] / ry
    cover = np.clip((1.0 - np.sqrt(xs * xs + ys * ys)) * min(rx, ry) + 0.5, 0.0, 1.0) * alpha
    region = img[y0:y1, x0:x1]
    region += cover[..., None] * (np.asarray(colour, np.float32) - region)


def _fill_rect(img, x0, y0, x1, y1, colour, alpha=1.0):
    h, w = img.shape[:2]
    ix0, ix1 = max(int(x0 - 1), 0), min(int(x1 + 2), w)
    iy0, iy1 = max(int(y0 - 1), 0), min(int(y1 + 2), h)
    if ix0 >= ix1 or iy0 >= iy1:
        return
    xs = np.arange(ix0, ix1, dtype=np.float32) + 0.5
    ys = np.arange(iy0, iy1, dtype=np.float32) + 0.5
    cx = np.clip(np.minimum(xs - x0, x1 - xs) + 0.5, 0.0, 1.0)
    cy = np.clip(np.minimum(ys - y0, y1 - ys) + 0.5, 0.0, 1.0)
    cover = cy[:, None] * cx[None, :] * alpha
    region = img[iy0:iy1, ix0:ix1]
    region += cover[..., None] * (np.asarray(colour, np.float32) - region)


def _interp_matrix(n_out, n_in):
    """Linear interpolation from n_in cells to n_out pixels (cell centres aligned): [n_out, n_in]."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), i0] += 1 - (pos - i0)
    m[np.arange(n_out), i1] += pos - i0
    return m


def _smooth_noise(rng, height, width, cells_y, cells_x, amp):
    """Low-frequency colour noise: [height, width, 3] float32, about N(0, amp)."""
    grid = rng.standard_normal((cells_y, cells_x, 3)).astype(np.float32) * amp
    rows = np.tensordot(_interp_matrix(height, cells_y), grid, axes=(1, 0))          # [H, cx, 3]
    return np.einsum("hjc,wj->hwc", rows, _interp_matrix(width, cells_x), optimize=True)


@lru_cache(maxsize=16)
def _photo_file(name):
    """A photograph bundled with scikit-image (uint8 [h, w, 3]), or None when it is not installed.
    Found by file, without importing scikit-image; only its bundled files are read, nothing is fetched."""
    from importlib.util import find_spec

    from PIL import Image

    try:
        spec = find_spec("skimage")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "data" / name
    if not path.is_file():
        return None
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _photo(rng, name, height, width):
    """A random crop of a bundled photograph resized to [height, width, 3] float32 (None: no photo)."""
    from PIL import Image

    src = _photo_file(name)
    if src is None:
        return None
    h, w = src.shape[:2]
    frac = rng.uniform(0.6, 1.0)
    ch = int(min(h, w * height / width) * frac)
    cw = int(ch * width / height)
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = Image.fromarray(src[y0:y0 + ch, x0:x0 + cw]).resize((width, height), Image.BILINEAR)
    img = np.asarray(crop, np.float32)
    if np.ptp(img.reshape(-1, 3).mean(0)) < 2:     # a grey photo: give it a colour cast
        img = img * (1 + rng.normal(0, 0.15, 3)).astype(np.float32)
    return img


def _wall(rng, kind, height, width, s, photo=None):
    """The wall behind the scene, [height, width, 3] float32 (0..255 before clipping). s: px per scene
    unit; photo: the file for kind "photo" (None: drawn here)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "photo":
        img = _photo(rng, photo or _pick(rng, PHOTO_WALLS), height, width)
        if img is not None:
            return img
        kind = "brick"      # scikit-image not installed: the look keeps a procedural wall of its own
    img = np.empty((height, width, 3), np.float32)
    img[:] = rng.uniform(90, 210) + rng.normal(0, 25, 3)
    img += _smooth_noise(rng, height, width, int(rng.integers(3, 8)), int(rng.integers(4, 10)), rng.uniform(5, 18))
    amp = rng.uniform(6, 16)
    if kind == "stripes":
        img += (amp * np.sign(np.sin(2 * np.pi * xx / (rng.uniform(8, 40) * s))))[..., None]
    elif kind == "tiles":
        period = rng.uniform(15, 45) * s
        img += (amp * ((np.floor(xx / period) + np.floor(yy / period)) % 2 * 2 - 1))[..., None]
    elif kind == "wallpaper":
        period = rng.uniform(10, 30) * s
        img += (amp * np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period))[..., None]
    elif kind == "gradient":
        other = np.clip(rng.uniform(40, 230) + rng.normal(0, 35, 3), 0, 255).astype(np.float32)
        a = rng.uniform(0, 2 * np.pi)
        u = (np.cos(a) * xx / width + np.sin(a) * yy / height)
        u = (u - u.min()) / max(np.ptp(u), 1e-6)
        img += u[..., None] * (other - img.mean((0, 1)))
    elif kind == "wood":
        period = rng.uniform(25, 60) * s
        plank = np.floor(xx / period)
        grain = np.sin(xx / (rng.uniform(1.5, 4) * s) + 4 * np.sin(yy / (rng.uniform(20, 60) * s) + plank))
        img[:] = np.array([150, 100, 55], np.float32) * rng.uniform(0.6, 1.3)
        img += (8 * grain + 10 * np.sin(plank * 2.3))[..., None] - 30 * (np.abs(xx / period - plank) < 0.03)[..., None]
    elif kind == "clutter":     # frames, posters and shelves on a plain wall
        for _ in range(int(rng.integers(3, 8))):
            w, h = rng.uniform(20, 90) * s, rng.uniform(15, 70) * s
            x0, y0 = rng.uniform(-10, width), rng.uniform(-10, height * 0.75)
            col = np.clip(rng.uniform(20, 240) + rng.normal(0, 40, 3), 0, 255)
            _fill_rect(img, x0, y0, x0 + w, y0 + h, col * 0.6)
            _fill_rect(img, x0 + 3 * s, y0 + 3 * s, x0 + w - 3 * s, y0 + h - 3 * s, col)
    elif kind == "brick":
        bh, bw = rng.uniform(8, 16) * s, rng.uniform(22, 40) * s
        row = np.floor(yy / bh)
        col = np.floor(xx / bw + 0.5 * (row % 2))
        base = np.array([150, 70, 50], np.float32) * rng.uniform(0.6, 1.3) + rng.normal(0, 15, 3)
        jitter = np.sin(row * 12.9898 + col * 78.233) * 43758.5453 % 1.0        # a colour per brick
        img[:] = base
        img += (30 * (jitter - 0.5))[..., None]
        mortar = (yy % bh < 1.5 * s) | ((xx / bw + 0.5 * (row % 2)) % 1.0 * bw < 1.5 * s)
        img[mortar] = rng.uniform(150, 210)
    elif kind == "fabric":
        f = rng.uniform(0.8, 2.0) / s
        img += (amp * 1.5 * np.sin(xx * f * 2.1) * np.sin(yy * f * 1.9))[..., None]
        img += rng.normal(0, amp * 0.6, (height, width, 1)).astype(np.float32)
    elif kind == "checker":
        period = rng.uniform(20, 60) * s
        other = np.clip(rng.uniform(20, 240) + rng.normal(0, 30, 3), 0, 255).astype(np.float32)
        mask = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(bool)
        img[mask] = other
    return img


def _floor(rng, kind, img, fy, s, photo=None):
    """Paint the table / floor below pixel row fy of img [H, W, 3] in place (photo: as in _wall)."""
    height, width = img.shape[:2]
    if fy >= height:
        return
    part = img[fy:]
    yy, xx = np.mgrid[fy:height, 0:width].astype(np.float32)
    if kind == "photo":
        picture = _photo(rng, photo or _pick(rng, PHOTO_FLOORS), height - fy, width)
        if picture is not None:
            part[:] = picture
            part[:max(1, height // 120)] *= 0.7
            return
        kind = "concrete"
    part[:] = np.clip(rng.uniform(60, 190) + rng.normal(0, 30, 3), 20, 235)
    if kind == "grain":
        grain = np.sin(2 * np.pi * yy / (rng.uniform(3, 9) * s) + 3 * np.sin(xx / rng.uniform(20, 60)))
        part += (rng.uniform(4, 12) * grain)[..., None]
    elif kind == "tiles":
        period = rng.uniform(20, 50) * s
        part -= 25 * ((xx % period < 1.2 * s) | ((yy - fy) % (period * 0.4) < 1.0 * s))[..., None]
    elif kind == "cloth":
        f = rng.uniform(1.0, 2.5) / s
        part += (rng.uniform(6, 14) * np.sin(xx * f) * np.sin(yy * f * 1.3))[..., None]
    elif kind == "concrete":
        part += rng.normal(0, rng.uniform(4, 10), part.shape[:2] + (1,)).astype(np.float32)
        part += _smooth_noise(rng, height - fy, width, 3, 6, rng.uniform(5, 15))
    part[:max(1, height // 120)] *= 0.7   # the table edge


def _backdrop(rng, variety, height, width, floor_px, s):
    """Wall + floor (+ static speckle), the same every frame: [height, width, 3] float32."""
    img = _wall(rng, variety["wall"], height, width, s, variety.get("wall_photo"))
    _floor(rng, variety["floor"], img, int(round(floor_px)), s, variety.get("floor_photo"))
    img += rng.normal(0, 2.5, (height, width, 1)).astype(np.float32)   # static speckle
    return np.clip(img, 0, 255)


def _squash(body, t):
    """Squash amount q (0..~0.5) and the normal of the contact that caused it, at time t."""
    q, nx, ny = 0.0, 0.0, -1.0
    for te, speed, inx, iny in body.impacts:
        if te <= t < te + 4 * SQUASH_TAU_S:
            qi = SQUASH_MAX[body.shape] * min(speed / V_REF, 1.2) * math.exp(-(t - te) / SQUASH_TAU_S)
            if qi > q:
                q, nx, ny = qi, inx, iny
    return min(q, 0.5), nx, ny


def _draw_body(img, body, x, y, t, s, alpha=1.0):
    """Draw a body at (x, y) (scene units), squashed by its recent impacts; alpha < 1 for motion trails."""
    q, nx, ny = _squash(body, t)
    hx, hy = body.hx, body.hy
    if q > 0:
        # Shrink along the contact normal around the contact side, widen across it.
        if abs(ny) >= abs(nx):
            x, y, hx, hy = x, y - ny * hy * q, hx * (1 + 0.5 * q), hy * (1 - q)
        else:
            x, y, hx, hy = x - nx * hx * q, y, hx * (1 - q), hy * (1 + 0.5 * q)
    c = body.colour
    visual = VISUALS.get(body.name, body.shape)
    if body.shape == "ball":
        rx = hx * (0.82 if visual == "egg" else 1.0)     # an egg or a lemon: narrower than its hit circle
        _fill_ellipse(img, x * s, y * s, rx * s, hy * s, c * 0.6, alpha)
        _fill_ellipse(img, x * s, y * s, (rx - 1.2) * s, (hy - 1.2) * s, c, alpha)
        if visual == "striped":
            _fill_ellipse(img, x * s, y * s, (rx - 1.2) * s, 0.3 * hy * s, np.minimum(255 - c * 0.7, 255), alpha)
        elif visual == "fruit":
            _fill_rect(img, (x - 0.8) * s, (y - hy - 3.5) * s, (x + 0.8) * s, (y - hy + 1) * s, STEM, alpha)
            _fill_ellipse(img, (x + 3) * s, (y - hy - 1.5) * s, 3 * s, 1.5 * s, LEAF, alpha)
        _fill_ellipse(img, (x - 0.35 * rx) * s, (y - 0.35 * hy) * s, 0.3 * rx * s, 0.25 * hy * s,
                      np.minimum(c + 70, 255), alpha)
        return
    x0, y0, x1, y1 = x - hx, y - hy, x + hx, y + hy
    if visual == "bottle":      # a wide body and a narrow neck inside the hit box
        neck = y0 + 0.4 * (y1 - y0)
        _fill_rect(img, (x - 0.4 * hx) * s, y0 * s, (x + 0.4 * hx) * s, neck * s, c * 0.7, alpha)
        _fill_rect(img, (x - 0.45 * hx) * s, y0 * s, (x + 0.45 * hx) * s, (y0 + 3) * s, c * 0.35, alpha)
        _fill_rect(img, x0 * s, neck * s, x1 * s, y1 * s, c * 0.6, alpha)
        _fill_rect(img, (x0 + 1.5) * s, (neck + 1.5) * s, (x1 - 1.5) * s, (y1 - 1.5) * s, c, alpha)
        _fill_rect(img, (x0 + 0.25 * hx) * s, (neck + 2) * s, (x0 + 0.45 * hx) * s, (y1 - 3) * s,
                   np.minimum(c + 80, 255), alpha)
        return
    _fill_rect(img, x0 * s, y0 * s, x1 * s, y1 * s, c * 0.55, alpha)
    _fill_rect(img, (x0 + 1.5) * s, (y0 + 1.5) * s, (x1 - 1.5) * s, (y1 - 1.5) * s, c, alpha)
    if visual == "can":
        _fill_ellipse(img, x * s, (y0 + 1.5) * s, hx * s, 2.5 * s, np.minimum(c + 60, 255), alpha)
        _fill_rect(img, (x0 + 1.5) * s, (y - 0.3 * hy) * s, (x1 - 1.5) * s, (y + 0.3 * hy) * s, 255 - c * 0.5, alpha)
    elif visual == "book":
        _fill_rect(img, (x0 + 1.5) * s, (y0 + 1.5) * s, (x1 - 1.5) * s, (y0 + 0.45 * (y1 - y0)) * s, PAGES, alpha)
    elif visual == "crate":
        for f in (0.3, 0.65):
            _fill_rect(img, x0 * s, (y0 + f * (y1 - y0)) * s, x1 * s, (y0 + f * (y1 - y0) + 1.5) * s, c * 0.45, alpha)
    else:
        _fill_rect(img, (x0 + 1.5) * s, (y0 + 1.5) * s, (x1 - 1.5) * s, (y0 + 3.5) * s, np.minimum(c + 50, 255), alpha)


def _draw_shadows(img, scene, k, s, strength):
    """Soft shadows of the free bodies on the floor, fainter and wider the higher they are (k: step)."""
    if strength <= 0:
        return
    for b in scene.bodies:
        if b.control is not None:
            continue
        x, y = b.track[min(k, len(b.track) - 1)]
        h = scene.floor_y - (y + b.hy)
        if -2 <= h < 200:
            a = strength * math.exp(-max(h, 0) / 90)
            _fill_ellipse(img, x * s, (scene.floor_y + 1.5) * s, b.hx * (1 + h / 150) * s, 2.5 * s, SHADOW, a)


def _fill_capsule(img, x0, y0, x1, y1, r, colour):
    """A thick segment (an arm) from (x0, y0) to (x1, y1) with radius r, in pixels.

    Only a band around the segment is computed: per row (or per column, for a flat segment) the
    pixels within r + 1 of the line, gathered by index, so a long diagonal arm costs its own area.
    """
    h, w = img.shape[:2]
    steep = abs(y1 - y0) >= abs(x1 - x0)
    if not steep:       # work on the transposed picture: rows become columns
        img, (x0, y0, x1, y1), (h, w) = img.transpose(1, 0, 2), (y0, x0, y1, x1), (w, h)
    ya, yb = max(int(min(y0, y1) - r - 1), 0), min(int(max(y0, y1) + r + 2), h)
    if ya >= yb:
        return
    dx, dy = x1 - x0, y1 - y0
    slope = dx / dy if dy else 0.0
    half = int(math.ceil(r * math.hypot(1.0, slope))) + 2       # the band's half width along a row
    rows = np.arange(ya, yb)
    centre = x0 + (np.clip(rows + 0.5, min(y0, y1), max(y0, y1)) - y0) * slope
    cols = np.floor(centre).astype(int)[:, None] + np.arange(-half, half + 1)[None, :]
    inside = (cols >= 0) & (cols < w)
    cols = np.clip(cols, 0, w - 1)
    px = cols + 0.5 - x0
    py = (rows + 0.5 - y0)[:, None]
    u = np.clip((px * dx + py * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    dist = np.sqrt((px - u * dx) ** 2 + (py - u * dy) ** 2)
    cover = (np.clip(r - dist + 0.5, 0.0, 1.0) * inside).astype(np.float32)
    rr = np.broadcast_to(rows[:, None], cols.shape)
    region = img[rr, cols]
    img[rr, cols] = region + cover[..., None] * (np.asarray(colour, np.float32) - region)


def _draw_hand(img, x, y, s, colour, arm_to=(0.0, -1.0)):
    """A hand at (x, y) (scene units) with an arm leaving the frame along arm_to (unit vector)."""
    ax, ay = arm_to
    _fill_capsule(img, x * s, y * s, (x + ax * 400) * s, (y + ay * 400) * s, 7 * s, colour * 0.92)
    _fill_ellipse(img, x * s, y * s, 11 * s, 9 * s, colour)


# =================================================================================================
# Looks: per-clip appearance settings, camera, lighting, occluders and silent distractor motion
# =================================================================================================
def _family(look):
    if look not in LOOK_FAMILIES:
        raise FoleyError(f"unknown look {look!r}: expected one of {', '.join(LOOKS)}")
    return LOOK_FAMILIES[look]


def _pick(rng, options):
    return str(options[int(rng.integers(len(options)))])


def _draw_variety(rng, look):
    """Every appearance setting of one clip, drawn from its look's family: a JSON-serialisable dict.

    Units: zoom x the frame, pan x the frame width, floor_at x the frame height (where the table edge
    sits), shake px at 240 px height, blur x the frame interval (0 = sharp), noise (0..255 levels).
    """
    fam = _family(look)

    def u(bounds):      # a uniform draw, rounded so dataset.json stays readable
        return round(float(rng.uniform(*bounds)), 3)

    tint = 1 + rng.uniform(-fam["tint"], fam["tint"], 3)
    v = {
        "look": look, "wall": _pick(rng, fam["walls"]), "floor": _pick(rng, fam["floors"]),
        "palette": _pick(rng, fam["palettes"]), "object_scale": u(fam["scale"]),
        "light": {"brightness": u(fam["brightness"]), "tint": [round(float(c), 3) for c in tint / tint.mean()],
                  "contrast": u(fam["contrast"]), "vignette": u(fam["vignette"]),
                  "centre": [round(float(c), 3) for c in rng.uniform(-0.3, 0.3, 2)],
                  "shadow": round(float(rng.uniform(0.15, 0.45)) if fam["zoom"][1] > 1 else 0.0, 3)},
        "camera": {"zoom": u(fam["zoom"]), "pan": round(float(rng.uniform(-fam["pan"], fam["pan"])), 3),
                   "floor_at": u(fam["floor_at"]) if fam["floor_at"] else None,
                   "shake": u(fam["shake"]) if rng.random() < fam["shake_p"] else 0.0,
                   "shake_hz": [u(SHAKE_HZ), u(SHAKE_HZ)], "phase": [u((0, 6.283)) for _ in range(4)]},
        "blur": u(BLUR_EXPOSURE) if rng.random() < fam["blur_p"] else 0.0,
        "noise": u(fam["noise"]),
        "occluder": None, "distractor": None,
    }
    # Photographs come from scikit-image's bundled files: without it the look falls back to its
    # procedural bricks / concrete, and the record says so.
    for part, files, fallback in (("wall", PHOTO_WALLS, "brick"), ("floor", PHOTO_FLOORS, "concrete")):
        name = _pick(rng, files)
        if v[part] == "photo":
            v[part], v[f"{part}_photo"] = ("photo", name) if _photo_file(name) is not None else (fallback, None)
    if rng.random() < fam["occluder_p"]:
        side = 1 if rng.random() < 0.5 else -1
        v["occluder"] = {"kind": _pick(rng, ("post", "mug", "glass")),
                         "x": round(0.5 + side * float(rng.uniform(0.22, 0.45)), 3),
                         "width": u((0.06, 0.16)), "top": u((0.0, 0.55)),
                         "colour": [round(float(c), 1) for c in np.clip(rng.uniform(20, 220) + rng.normal(0, 30, 3), 0, 255)]}
    if rng.random() < fam["distractor_p"]:
        v["distractor"] = {"kind": _pick(rng, DISTRACTORS), "t0": u((0.0, 2.5)), "seconds": u((1.0, 2.5)),
                           "x": u((0.2, 0.8)), "y": u((0.2, 0.6)), "size": u((0.6, 1.1)),
                           "direction": 1 if rng.random() < 0.5 else -1}
    return v


def _colour(rng, scene=None):
    """An object colour from the clip's palette: float32 [3], 0..255."""
    c = PALETTE[rng.integers(len(PALETTE))] + rng.normal(0, 12, 3).astype(np.float32)
    palette = scene.variety["palette"] if scene is not None and scene.variety else "saturated"
    if palette == "muted":
        c = 0.5 * c + 0.5 * c.mean() - 15
    elif palette == "pastel":
        c = 0.45 * c + 135
    elif palette == "dark":
        c = 0.45 * c + 8
    elif palette == "metal":
        c = rng.uniform(80, 215) + np.array([0, 2, 8], np.float32) + rng.normal(0, 5, 3)
    elif palette == "wood":
        c = np.array([150, 100, 55], np.float32) * rng.uniform(0.55, 1.35) + rng.normal(0, 8, 3)
    return np.clip(c, 0, 255).astype(np.float32)


def _camera(rng, variety, width, height, floor_y, n_frames, fps):
    """Zoom, framing and shake: (px per scene unit, canvas (h, w), crop origins int [n_frames, 2] as (x, y)).

    The scene is drawn on a canvas `zoom` times the frame and each frame is a crop of it, so a zoom
    costs no resampling and a shake is a moving crop (clamped inside the canvas).
    """
    cam = variety["camera"]
    z = cam["zoom"]
    s = z * height / SCENE_H
    cw, ch = int(math.ceil(width * z)), int(math.ceil(height * z))
    ox = (cw - width) / 2 + cam["pan"] * width
    oy = floor_y * s - cam["floor_at"] * height if cam["floor_at"] else (ch - height) / 2
    t = np.arange(n_frames) / fps
    amp = cam["shake"] * height / SCENE_H
    f1, f2 = cam["shake_hz"]
    p = cam["phase"]
    dx = amp * (0.8 * np.sin(2 * np.pi * f1 * t + p[0]) + 0.4 * np.sin(2 * np.pi * f2 * t + p[1]))
    dy = amp * (0.6 * np.sin(2 * np.pi * f2 * t + p[2]) + 0.3 * np.sin(2 * np.pi * f1 * t + p[3]))
    jitter = rng.normal(0, 0.3 * amp, (n_frames, 2)) if amp > 0 else np.zeros((n_frames, 2))
    xs = np.clip(np.round(ox + dx + jitter[:, 0]), 0, cw - width)
    ys = np.clip(np.round(oy + dy + jitter[:, 1]), 0, ch - height)
    return s, (ch, cw), np.stack([xs, ys], 1).astype(int)


def _lighting(variety, height, width):
    """Per-pixel gain A and offset B [H, W, 3] float32: a frame is lit as frame * A + B."""
    li = variety["light"]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = li["centre"]
    r2 = ((xx / width - 0.5 - cx) ** 2 + (yy / height - 0.5 - cy) ** 2) / 0.5
    gain = li["brightness"] * np.clip(1 - li["vignette"] * r2, 0.15, None)[..., None] * np.asarray(li["tint"], np.float32)
    c = li["contrast"]
    return (c * gain).astype(np.float32), (128 * (1 - c) * gain).astype(np.float32)


def _draw_occluder(img, occ):
    """Something close to the camera covering part of the frame (screen coordinates): img [H, W, 3]."""
    if occ is None:
        return
    height, width = img.shape[:2]
    col = np.asarray(occ["colour"], np.float32)
    x0, x1 = (occ["x"] - occ["width"] / 2) * width, (occ["x"] + occ["width"] / 2) * width
    if occ["kind"] == "post":       # out of focus: soft edges
        _fill_rect(img, x0, -2, x1, height + 2, col * 0.8, 0.6)
        _fill_rect(img, x0 + 2, -2, x1 - 2, height + 2, col, 0.95)
    elif occ["kind"] == "mug":
        top = height * (0.45 + 0.5 * occ["top"])
        _fill_rect(img, x0, top, x1, height + 2, col * 0.75)
        _fill_rect(img, x0 + 2, top + 2, x1 - 2, height + 2, col)
        _fill_ellipse(img, (x0 + x1) / 2, top, (x1 - x0) / 2, 3, col * 0.5)
    else:                           # a glass pane or a bottle: the scene shows through it
        _fill_rect(img, x0, height * occ["top"], x1, height + 2, col, 0.35)


def _add_distractor(scene, variety):
    """Silent motion (variety["distractor"]) as decor: a hand passing, an object rolling along a
    shelf, or a hanging thing swinging. Smooth motion with no contact: never an event or a sound."""
    d = variety["distractor"]
    if d is None:
        return
    t0, dur, k = d["t0"], d["seconds"], d["size"]
    x_mid, y_mid, sign = d["x"] * scene.w, d["y"] * scene.floor_y, d["direction"]
    # Colours follow from the recorded settings (no extra draws), so dataset.json's entry replays it.
    colour = np.asarray(SKIN[int(d["x"] * 1000) % len(SKIN)], np.float32)
    obj_colour = np.asarray(PALETTE[int(d["y"] * 1000) % len(PALETTE)], np.float32) * 0.8

    if d["kind"] == "hand":         # reaches in from above, hovers, leaves: a cosine-smooth path
        def draw(img, t, s):
            u = (t - t0) / dur
            if 0 <= u <= 1:
                reach = math.sin(math.pi * u) ** 2
                _draw_hand(img, x_mid + sign * 30 * (u - 0.5), -40 + reach * (y_mid + 40), s, colour)
        scene.decor.append((3, draw))
    elif d["kind"] == "roller":     # far behind (small, high in the picture), constant speed
        y = scene.floor_y - 30 - 40 * d["y"]
        r = 6 * k

        def draw(img, t, s):
            x = x_mid + sign * 60 * (t - t0 - dur / 2)
            _fill_rect(img, 0, (y + r) * s, scene.w * s, (y + r + 2) * s, obj_colour * 0.5)   # the shelf
            _fill_ellipse(img, x * s, y * s, r * s, r * s, obj_colour)
        scene.decor.append((0, draw))
    else:                           # swing: a lamp or an ornament on a string
        length = (0.3 + 0.4 * d["y"]) * scene.floor_y
        omega = 2 * math.pi / (1.2 + dur * 0.5)

        def draw(img, t, s):
            a = 0.5 * k * math.sin(omega * (t - t0)) * math.exp(-max(t - t0, 0) / 6)
            bx, by = x_mid + length * math.sin(a), length * math.cos(a)
            _fill_capsule(img, x_mid * s, -5 * s, bx * s, by * s, 0.8 * s, obj_colour * 0.4)
            _fill_ellipse(img, bx * s, by * s, 9 * k * s, 7 * k * s, obj_colour)
        scene.decor.append((1, draw))


# =================================================================================================
# Scenes: one builder per template, all in scene coordinates
# =================================================================================================
def _object(rng, scene, kind=None, big=False):
    """A random movable object of the clip's look: (name, shape, hx, hy, colour, restitution).
    The name picks how it is drawn (VISUALS) and its proportions (a bottle is tall, a book flat)."""
    kind = kind or ("ball" if rng.random() < 0.5 else "box")
    scale = (1.25 if big else 1.0) * scene.variety["object_scale"]
    if kind == "ball":
        r = rng.uniform(10, 20) * scale
        return _pick(rng, scene.family["balls"]), "ball", r, r, _colour(rng, scene), rng.uniform(0.45, 0.7)
    name = _pick(rng, scene.family["boxes"])
    fx, fy = ASPECT.get(VISUALS.get(name, "box"), (1.0, 1.0))
    return (name, "box", rng.uniform(11, 24) * scale * fx, rng.uniform(8, 16) * scale * fy,
            _colour(rng, scene), rng.uniform(0.15, 0.35))


def _first_impact_time(rng, duration):
    """When the first sound should happen: mostly early, within the window the model sees."""
    if duration > 4.8 and rng.random() < LATE_FIRST_IMPACT_P:
        return rng.uniform(4.1, duration - 0.5)
    return rng.uniform(0.5, min(3.2, duration - 0.6))


def _held_hand(scene, body, colour, away=(0.0, -160.0)):
    """A hand holding `body` from above until its release, then drifting away at `away` px/s."""
    def draw(img, t, s):
        k = min(int(round(min(t, body.release) / SIM_DT)), len(body.track) - 1)
        x, y = body.track[k]
        y -= body.hy + 5
        if t > body.release:
            dt = t - body.release
            x, y = x + away[0] * dt, y + away[1] * dt
        _draw_hand(img, x, y, s, colour)
    scene.decor.append((3, draw))


def _attached_hand(scene, body, colour, dx, dy, arm_to):
    def draw(img, t, s):
        k = min(int(round(t / SIM_DT)), len(body.track) - 1)
        x, y = body.track[k]
        _draw_hand(img, x + dx, y + dy, s, colour, arm_to)
    scene.decor.append((3, draw))


def _static_box(scene, box, colour, layer=0, jolt_from=None):
    """Draw a static box; with jolt_from (a body), it shakes down briefly on that body's impacts."""
    x0, y0, x1, y1 = box

    def draw(img, t, s):
        off = 0.0
        if jolt_from is not None:
            for te, speed, _, _ in jolt_from.impacts:
                if te <= t < te + 0.3:
                    off += 3.0 * min(speed / V_REF, 1.2) * math.exp(-(t - te) / SQUASH_TAU_S)
        _fill_rect(img, x0 * s, (y0 + off) * s, x1 * s, (y1 + off) * s, colour * 0.7)
        _fill_rect(img, (x0 + 2) * s, (y0 + 2 + off) * s, (x1 - 2) * s, (y1 - 1 + off) * s, colour)
    draw.static = jolt_from is None     # the same every frame: _render paints it into the backdrop
    scene.decor.append((layer, draw))


def _drop_scene(rng, scene, duration, land_top, x_range, name_list=None):
    """A held object released above `land_top` (the y it lands on) within x_range."""
    name, shape, hx, hy, colour, e = _object(rng, scene)
    x = rng.uniform(*x_range)
    h = rng.uniform(45, max(50.0, min(130.0, land_top - 2 * hy - 12)))
    y = land_top - hy - h
    t_first = _first_impact_time(rng, duration)
    fall = math.sqrt(2 * h / scene.g)
    body = _Body(name, shape, x, y, hx, hy, colour, release=max(0.15, t_first - fall), e=e,
                 vx=rng.normal(0, 20))
    _held_hand(scene, body, SKIN[rng.integers(len(SKIN))])
    return body


def _scene_hitting(rng, scene, duration):
    tname, _, thx, thy, tcol, _ = _object(rng, scene, "box")
    F = scene.floor_y
    d = 1 if rng.random() < 0.5 else -1
    xc = scene.w / 2 + d * rng.uniform(-20, 50)
    target = scene.add(_Body(tname, "box", xc, F - thy, thx, thy, tcol, e=0.1,
                             decel=rng.uniform(1500, 2500)), [scene.floor()])
    tool_name = str(rng.choice(TOOLS))
    thx_tool, thy_tool = rng.uniform(28, 45), rng.uniform(3.5, 6)
    y_tool = F - thy * rng.uniform(0.5, 1.5)
    n_hits = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    v = rng.uniform(250, 550)
    t_start = rng.uniform(0.1, 0.5)
    t_first = max(_first_impact_time(rng, duration), t_start + 0.3)
    x_start = xc - d * (thx + thx_tool + v * (t_first - t_start))
    tool_col = np.array([120, 85, 50], np.float32) + rng.normal(0, 20, 3).astype(np.float32)
    phases = {"phase": "wait", "hits": 0, "since": 0.0, "v": v}
    rng_speeds = list(rng.uniform(0.7, 1.2, size=3))  # later hits: faster or slower than the first

    def control(b, t):
        st = b.state
        if st["phase"] == "wait" and t >= t_start:
            st["phase"] = "approach"
        if st["phase"] == "retract" and t - st["since"] > 0.3:
            st["phase"], st["since"] = "pause", t
        if st["phase"] == "pause" and t - st["since"] > 0.25:
            if st["hits"] < n_hits:
                st["phase"], st["v"] = "approach", st["v"] * rng_speeds.pop()
            else:
                st["phase"] = "rest"
        b.vx = {"approach": d * st["v"], "retract": -d * 0.35 * st["v"]}.get(st["phase"], 0.0)
        b.vy = 0.0

    def on_contact(b, t, other):
        if b.state["phase"] == "approach":
            b.state.update(phase="retract", since=t, hits=b.state["hits"] + 1)

    tool = scene.add(_Body(tool_name, "box", x_start, y_tool, thx_tool, thy_tool, tool_col, control=control))
    tool.state, tool.on_contact = phases, on_contact
    scene.pairs.append((tool, target, 0.15, False))
    _attached_hand(scene, tool, SKIN[rng.integers(len(SKIN))], -d * thx_tool, 0.0, (-d * 0.7, -0.7))
    scene.placeholders = [tname, tool_name]


def _scene_throw_against(rng, scene, duration):
    F = scene.floor_y
    name, shape, hx, hy, colour, e = _object(rng, scene, "ball" if rng.random() < 0.7 else "box")
    d = 1 if rng.random() < 0.5 else -1
    face = scene.w / 2 + d * rng.uniform(50, 100)   # inside the centre crop the model sees
    top = rng.uniform(-10, 40)   # above anything thrown: the ball never lands on top of it
    wall = (face, top, face + 4000, F) if d > 0 else (face - 4000, top, face, F)
    wall_name = str(rng.choice(WALLS))
    _static_box(scene, wall, np.clip(rng.uniform(80, 200) + rng.normal(0, 20, 3), 0, 255).astype(np.float32))
    dist = rng.uniform(110, 180)
    x0 = face - d * dist
    y0 = F - rng.uniform(50, 130)
    vx, vy = d * rng.uniform(350, 650), -rng.uniform(0, 200)
    t_first = _first_impact_time(rng, duration)
    body = scene.add(_Body(name, shape, x0, y0, hx, hy, colour, release=max(0.15, t_first - dist / abs(vx)),
                           vx=vx, vy=vy, e=e), [scene.floor(), wall])
    _held_hand(scene, body, SKIN[rng.integers(len(SKIN))], away=(vx * 0.15, -60.0))
    scene.placeholders = [name, wall_name]


def _scene_throw_onto(rng, scene, duration):
    F = scene.floor_y
    name, shape, hx, hy, colour, e = _object(rng, scene)
    d = 1 if rng.random() < 0.5 else -1
    x0 = scene.w / 2 - d * rng.uniform(60, 120)   # lands near the middle: the model sees a centre crop
    y0 = F - rng.uniform(70, 140)
    vx, vy = d * rng.uniform(100, 250), -rng.uniform(50, 300)
    h = F - hy - y0
    flight = (vy + math.sqrt(vy * vy + 2 * scene.g * h)) / scene.g
    t_first = _first_impact_time(rng, duration)
    body = scene.add(_Body(name, shape, x0, y0, hx, hy, colour, release=max(0.15, t_first - flight),
                           vx=vx, vy=vy, e=e), [scene.floor()])
    _held_hand(scene, body, SKIN[rng.integers(len(SKIN))], away=(vx * 0.15, -60.0))
    scene.placeholders = [name]


def _scene_drop_onto(rng, scene, duration):
    F = scene.floor_y
    surf = str(rng.choice(SURFACES))
    pw, ph = rng.uniform(60, 120), rng.uniform(15, 60)
    xc = scene.w / 2 + rng.uniform(-70, 70)
    top = F - ph
    slab = (xc - pw / 2, top, xc + pw / 2, top + min(ph, 10.0) if surf in ("a table", "a chair") else F)
    colour = np.clip(rng.uniform(60, 200) + rng.normal(0, 25, 3), 0, 255).astype(np.float32)
    if surf in ("a table", "a chair"):  # legs under a slab
        for lx in (xc - pw / 2 + 3, xc + pw / 2 - 9):
            _static_box(scene, (lx, slab[3], lx + 6, F), colour * 0.8)
    _static_box(scene, slab, colour)
    body = _drop_scene(rng, scene, duration, top, (xc - pw * 0.35, xc + pw * 0.35))
    scene.add(body, [slab, scene.floor()])
    scene.placeholders = [body.name, surf]


def _scene_drop_into(rng, scene, duration):
    F = scene.floor_y
    cname = str(rng.choice(CONTAINERS))
    name, shape, hx, hy, colour, e = _object(rng, scene)
    cw, ch, tw = rng.uniform(2 * hx + 14, 2 * hx + 40), rng.uniform(max(35, 2 * hy + 8), 75), 5.0
    xc = scene.w / 2 + rng.uniform(-70, 70)
    left = (xc - cw / 2 - tw, F - ch, xc - cw / 2, F)
    right = (xc + cw / 2, F - ch, xc + cw / 2 + tw, F)
    outer = (left[0], F - ch, right[2], F)
    ccol = np.clip(rng.uniform(60, 200) + rng.normal(0, 30, 3), 0, 255).astype(np.float32)
    # The inside (seen over the rim) behind the object, the front wall in front of it.
    scene.decor.append((0, lambda img, t, s: _fill_ellipse(
        img, xc * s, (F - ch) * s, (cw / 2 + tw) * s, 5 * s, ccol * 0.45)))
    h = rng.uniform(40, 110)
    t_first = _first_impact_time(rng, duration)
    fall = math.sqrt(2 * (h + ch) / scene.g)
    body = _Body(name, shape, xc + rng.uniform(-0.2, 0.2) * (cw / 2 - hx), F - ch - hy - h, hx, hy, colour,
                 release=max(0.15, t_first - fall), e=e * 0.6, vx=rng.normal(0, 10))
    _held_hand(scene, body, SKIN[rng.integers(len(SKIN))])
    scene.add(body, [scene.floor(), left, right])
    _static_box(scene, outer, ccol, layer=2, jolt_from=body)
    scene.occluders.append(outer)
    scene.placeholders = [name, cname]


def _scene_drop_behind(rng, scene, duration):
    F = scene.floor_y
    oname = str(rng.choice(OCCLUDERS))
    name, shape, hx, hy, colour, e = _object(rng, scene)
    ow, oh = rng.uniform(70, 130), rng.uniform(max(50, 2 * hy + 15), 110)
    xc = scene.w / 2 + rng.uniform(-60, 60)
    occ = (xc - ow / 2, F - oh, xc + ow / 2, F)
    _static_box(scene, occ, np.clip(rng.uniform(50, 210) + rng.normal(0, 30, 3), 0, 255).astype(np.float32),
                layer=2)
    scene.occluders.append(occ)
    h = rng.uniform(30, 90)
    t_first = _first_impact_time(rng, duration)
    fall = math.sqrt(2 * (h + oh) / scene.g)
    body = _Body(name, shape, xc + rng.uniform(-1, 1) * (ow / 2 - hx - 6), F - oh - hy - h, hx, hy, colour,
                 release=max(0.15, t_first - fall), e=e * 0.6)
    _held_hand(scene, body, SKIN[rng.integers(len(SKIN))])
    scene.add(body, [scene.floor()])
    scene.placeholders = [name, oname]


def _scene_drop_in_front(rng, scene, duration):
    F = scene.floor_y
    bname = str(rng.choice(BACKDROPS))
    bw, bh = rng.uniform(25, 60), rng.uniform(50, 120)
    xc = scene.w / 2 + rng.uniform(-60, 60)
    bcol = _colour(rng, scene) * 0.8
    back_floor = F - rng.uniform(6, 14)  # further from the camera: stands higher in the picture
    _static_box(scene, (xc - bw / 2, back_floor - bh, xc + bw / 2, back_floor), bcol)
    scene.decor.append((0, lambda img, t, s: _fill_ellipse(
        img, xc * s, (back_floor - bh) * s, bw / 2 * s, 4 * s, np.minimum(bcol + 40, 255))))
    body = _drop_scene(rng, scene, duration, F, (xc - bw / 2 - 25, xc + bw / 2 + 25))
    scene.add(body, [scene.floor()])
    scene.placeholders = [body.name, bname]


def _approach(rng, duration, xc, gap_a, gap_b, va, vb, decel):
    """Start positions of two bodies rolling/sliding at va, vb (decelerating) to meet at xc."""
    t_first = _first_impact_time(rng, duration)
    t0 = rng.uniform(0.0, 0.3)
    tau = t_first - t0
    da = va * tau - 0.5 * decel * tau * tau
    db = vb * tau - 0.5 * decel * tau * tau
    return xc - gap_a - da, xc + gap_b + db, t0


def _scene_collide_deflect(rng, scene, duration):
    F = scene.floor_y
    a_name, _, ra, _, ca, _ = _object(rng, scene, "ball")
    b_name, _, rb, _, cb, _ = _object(rng, scene, "ball")
    va, vb = rng.uniform(200, 450), rng.uniform(200, 450)
    xc = scene.w / 2 + rng.uniform(-50, 50)
    decel = 50.0
    xa, xb, t0 = _approach(rng, duration, xc, ra, rb, va, vb, decel)
    e = rng.uniform(0.7, 0.9)
    a = scene.add(_Body(a_name, "ball", xa, F - ra, ra, ra, ca, mass=ra * ra, release=t0, vx=va, decel=decel),
                  [scene.floor()])
    b = scene.add(_Body(b_name, "ball", xb, F - rb, rb, rb, cb, mass=rb * rb, release=t0, vx=-vb, decel=decel),
                  [scene.floor()])
    scene.pairs.append((a, b, e, False))
    scene.placeholders = [a_name, b_name]


def _scene_deflected_from(rng, scene, duration):
    F = scene.floor_y
    a_name, a_shape, ahx, ahy, ca, _ = _object(rng, scene, "ball")
    b_name, _, bhx, bhy, cb, _ = _object(rng, scene, "box", big=True)
    d = 1 if rng.random() < 0.5 else -1
    xb = scene.w / 2 + d * rng.uniform(20, 80)
    b = scene.add(_Body(b_name, "box", xb, F - bhy, bhx, bhy, cb, mass=8.0, e=0.1, decel=3000.0),
                  [scene.floor()])
    e = rng.uniform(0.5, 0.8)
    t_first = _first_impact_time(rng, duration)
    face = xb - d * (bhx + ahx)
    if rng.random() < 0.6:  # rolls into it
        v = rng.uniform(250, 500)
        t0 = rng.uniform(0.0, 0.3)
        tau = t_first - t0
        x0 = face - d * (v * tau - 0.5 * 60.0 * tau * tau)
        a = _Body(a_name, "ball", x0, F - ahy, ahx, ahy, ca, release=t0, vx=d * v, e=0.5)
    else:  # thrown at its face, aimed at mid-height
        v = rng.uniform(350, 600)
        x0 = face - d * rng.uniform(100, 170)
        y0 = F - 2 * bhy * rng.uniform(0.6, 1.0) - rng.uniform(20, 50)
        tb = abs(face - x0) / v
        vy = ((F - bhy) - y0 - 0.5 * scene.g * tb * tb) / tb
        a = _Body(a_name, "ball", x0, y0, ahx, ahy, ca, release=max(0.15, t_first - tb), vx=d * v, vy=vy, e=0.5)
        _held_hand(scene, a, SKIN[rng.integers(len(SKIN))], away=(d * 50.0, -60.0))
    scene.add(a, [scene.floor()])
    scene.pairs.append((a, b, e, False))
    scene.placeholders = [a_name, b_name]


def _scene_collide_halt(rng, scene, duration):
    F = scene.floor_y
    a_name, _, ahx, ahy, ca, _ = _object(rng, scene, "box")
    b_name, _, bhx, bhy, cb, _ = _object(rng, scene, "box")
    va, vb = rng.uniform(250, 500), rng.uniform(250, 500)
    xc = scene.w / 2 + rng.uniform(-50, 50)
    t_first_guess = 3.2
    decel = min(rng.uniform(100, 250), 0.6 * min(va, vb) / t_first_guess)
    xa, xb, t0 = _approach(rng, duration, xc, ahx, bhx, va, vb, decel)
    a = scene.add(_Body(a_name, "box", xa, F - ahy, ahx, ahy, ca, release=t0, vx=va, decel=decel, e=0.1),
                  [scene.floor()])
    b = scene.add(_Body(b_name, "box", xb, F - bhy, bhx, bhy, cb, release=t0, vx=-vb, decel=decel, e=0.1),
                  [scene.floor()])

    def stop(me, t, other):  # both come to a halt: the contact kills the sliding at once
        for body in (me, other):
            body.vx, body.decel = 0.0, 5000.0
    a.on_contact = stop
    scene.pairs.append((a, b, 0.0, False))
    scene.placeholders = [a_name, b_name]


def _scene_stack(rng, scene, duration):
    F = scene.floor_y
    stack_name = str(rng.choice(STACKS))
    n = int(rng.integers(3, 6))
    hx, hy = rng.uniform(13, 22), rng.uniform(6, 11)
    d = 1 if rng.random() < 0.5 else -1
    xc = scene.w / 2 - d * rng.uniform(0, 50)   # the blocks fly towards the middle
    base_col = _colour(rng, scene)
    bottom = (xc - hx, F - 2 * hy, xc + hx, F)
    _static_box(scene, bottom, base_col)
    v_poke = rng.uniform(120, 280)
    t_start = rng.uniform(0.1, 0.4)
    t_poke = rng.uniform(0.4, min(2.5, duration - 1.0))
    t_poke = max(t_poke, t_start + 0.2)
    blocks = []
    for i in range(1, n):
        col = np.clip(base_col + rng.normal(0, 35, 3), 0, 255).astype(np.float32)
        blk = _Body(stack_name, "box", xc + rng.normal(0, 1.5), F - (2 * i + 1) * hy, hx, hy, col,
                    release=math.inf, e=0.2, decel=1200.0)
        blocks.append(scene.add(blk, [scene.floor(), bottom]))
    top = blocks[-1]
    kicks = [(rng.uniform(0.8, 1.2), rng.uniform(0, 60)) for _ in blocks]
    fhx, fhy = 16.0, 5.0
    x_start = top.x - d * (hx + fhx + v_poke * (t_poke - t_start))

    def control(b, t):
        st = b.state.setdefault("phase", "wait")
        if st == "wait" and t >= t_start:
            b.state["phase"] = "approach"
        if st == "retract" and t - b.state["since"] > 0.4:
            b.state["phase"] = "rest"
        b.vx = {"approach": d * v_poke, "retract": -d * 0.5 * v_poke}.get(b.state["phase"], 0.0)
        b.vy = 0.0

    def on_contact(b, t, other):
        if b.state.get("phase") != "approach":
            return
        b.state.update(phase="retract", since=t)
        for i, (blk, (k, up)) in enumerate(zip(blocks, kicks), start=1):
            # The top goes first and furthest; lower blocks follow, pulled along.
            blk.release = t + (n - 1 - i) * 0.03
            blk.vx = d * v_poke * (0.3 + 0.8 * i / (n - 1)) * k
            blk.vy = -up

    skin = SKIN[rng.integers(len(SKIN))]
    finger = scene.add(_Body("finger", "box", x_start, top.y, fhx, fhy, skin, control=control, layer=3))
    finger.on_contact = on_contact
    scene.pairs.append((finger, top, 0.0, True))  # a fingertip touch is not a sound
    _attached_hand(scene, finger, skin, -d * fhx, 0.0, (-d * 0.8, -0.6))
    scene.placeholders = [stack_name]


def _scene_move_collide(rng, scene, duration):
    F = scene.floor_y
    a_name, a_shape, ahx, ahy, ca, _ = _object(rng, scene)
    b_name, b_shape, bhx, bhy, cb, _ = _object(rng, scene)
    y = F - max(ahy, bhy) - rng.uniform(10, 90)
    va, vb = rng.uniform(120, 300), rng.uniform(120, 300)
    xc = scene.w / 2 + rng.uniform(-50, 50)
    xa, xb, t0 = _approach(rng, duration, xc, ahx, bhx, va, vb, 0.0)
    n_hits = 1 if rng.random() < 0.6 else 2
    again = rng.uniform(0.6, 0.9)

    def make_control(v, sign):
        def control(b, t):
            st = b.state.setdefault("phase", "wait")
            if st == "wait" and t >= t0:
                b.state["phase"] = "approach"
            if st == "retract" and t - b.state["since"] > 0.25:
                b.state.update(phase="pause", since=t)
            if b.state["phase"] == "pause" and t - b.state["since"] > 0.3:
                b.state["phase"] = "approach" if b.state["hits"] < n_hits else "rest"
            speed = v * (again if b.state.get("hits", 0) else 1.0)
            b.vx = {"approach": sign * speed, "retract": -sign * 0.25 * v}.get(b.state["phase"], 0.0)
            b.vy = 0.0
        return control

    def on_contact(b, t, other):
        if b.state.get("phase") == "approach":
            b.state.update(phase="retract", since=t, hits=b.state.get("hits", 0) + 1)

    a = scene.add(_Body(a_name, a_shape, xa, y, ahx, ahy, ca, control=make_control(va, 1)))
    b = scene.add(_Body(b_name, b_shape, xb, y, bhx, bhy, cb, control=make_control(vb, -1)))
    for body in (a, b):
        body.state, body.on_contact = {"hits": 0}, on_contact
    scene.pairs.append((a, b, 0.0, False))
    _attached_hand(scene, a, SKIN[rng.integers(len(SKIN))], -ahx * 0.5, -ahy, (-0.5, -0.86))
    _attached_hand(scene, b, SKIN[rng.integers(len(SKIN))], bhx * 0.5, -bhy, (0.5, -0.86))
    scene.placeholders = [a_name, b_name]


def _scene_push(rng, scene, duration):
    F = scene.floor_y
    name, _, hx, hy, colour, _ = _object(rng, scene, "box")
    v = rng.uniform(50, 110)
    t0, t1 = rng.uniform(0.2, 0.8), duration - rng.uniform(0.2, 0.6)

    def control(b, t):
        b.vx, b.vy = (v if t0 <= t < t1 else 0.0), 0.0

    body = scene.add(_Body(name, "box", scene.w / 2 - v * (t1 - t0) / 2, F - hy, hx, hy, colour, control=control))
    _attached_hand(scene, body, SKIN[rng.integers(len(SKIN))], -hx - 6, 0.0, (-0.6, -0.8))
    scene.placeholders = [name]


def _scene_lift(rng, scene, duration):
    F = scene.floor_y
    name, shape, hx, hy, colour, _ = _object(rng, scene)
    v = rng.uniform(40, 90)
    t0 = rng.uniform(0.3, 1.0)
    t1 = min(duration - 0.2, t0 + rng.uniform(1.0, 2.0))

    def control(b, t):
        b.vx, b.vy = 0.0, (-v if t0 <= t < t1 else 0.0)

    body = scene.add(_Body(name, shape, scene.w / 2 + rng.uniform(-60, 60), F - hy, hx, hy, colour,
                           control=control))
    _attached_hand(scene, body, SKIN[rng.integers(len(SKIN))], 0.0, -hy - 4, (0.0, -1.0))
    scene.placeholders = [name]


SCENES = dict(zip(TEMPLATES_12 + OTHER_TEMPLATES, [
    _scene_hitting, _scene_throw_against, _scene_throw_onto, _scene_drop_onto, _scene_drop_into,
    _scene_drop_behind, _scene_drop_in_front, _scene_collide_deflect, _scene_deflected_from,
    _scene_collide_halt, _scene_stack, _scene_move_collide, _scene_push, _scene_lift,
]))


# =================================================================================================
# Audio
# =================================================================================================
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


def _render_audio(rng, scene, events, duration, sample_rate, channels, bank=None):
    """Room tone + one sound per impact (+ room reverb) + distractors: ([C, S] float32, distractors, facts).

    An impact's peak amplitude is proportional to its speed (recorded samples are peak-normalised
    first); bank (load_sounds) picks recorded samples instead of the procedural materials."""
    n = int(round(duration * sample_rate))
    gain = rng.uniform(*IMPACT_GAIN)
    if bank is None:
        mats = {"ball": _pick(rng, BALL_MATERIALS), "box": _pick(rng, BOX_MATERIALS)}
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
    impacts, facts["reverb"] = _reverb(rng, impacts, sample_rate)
    audio, tone = _room_tone(rng, n, sample_rate, channels)
    facts.update(tone)
    audio += impacts
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
    return np.clip(audio, -1.0, 1.0).astype(np.float32), distractors, facts


# --- recorded samples (--sounds DIR) -------------------------------------------------------------
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


# =================================================================================================
# One clip
# =================================================================================================
def _merge_events(events):
    """Sort by time; contacts within EVENT_MERGE_S of a louder one are the same sound."""
    out = []
    for ev in sorted(events, key=lambda e: e["t"]):
        if out and ev["t"] - out[-1]["t"] < EVENT_MERGE_S:
            if ev["speed"] > out[-1]["speed"]:
                out[-1] = dict(ev, t=out[-1]["t"])
            continue
        out.append(ev)
    return out


def _dust(rng, events, s):
    """Particles per impact: arrays of start time, start xy, velocity, size, life, alpha (scene units)."""
    parts = []
    for ev in events:
        k = min(ev["speed"] / V_REF, 1.2)
        n = int(6 + 16 * k)
        if ev["hidden"] is not None:
            x0, y0 = ev["hidden"]
            nx, ny = 0.0, -1.0
            y0 = y0 - 2
        else:
            x0, y0 = ev["x"], ev["y"]
            nx, ny = ev["normal"]
        for _ in range(n):
            vx = nx * rng.uniform(20, 80) * k + (ny != 0) * rng.normal(0, 60) * k
            vy = ny * rng.uniform(20, 80) * k + (nx != 0) * rng.normal(0, 40) * k - rng.uniform(5, 40) * k
            parts.append((ev["t"], x0 + rng.normal(0, 4), y0 + rng.normal(0, 2), vx, vy,
                          rng.uniform(2.0, 4.5) * (0.6 + 0.6 * k), rng.uniform(*DUST_LIFE_S), rng.uniform(0.5, 0.85)))
    return np.asarray(parts, np.float64).reshape(-1, 8)


def _render(spec, bank=None):
    """Everything about one clip, from its spec: frames, audio, events and facts for dataset.json.

    The physics and the sound draw from the clip's seed; the look (spec["look"], DEFAULT_LOOK when
    absent) draws from a stream of its own, so a look changes how a clip appears, not when it sounds.
    """
    rng = np.random.default_rng(int(spec["seed"]))
    look = spec.get("look", DEFAULT_LOOK)
    width, height = (int(v) for v in spec["size"])
    duration, fps = float(spec["duration"]), int(spec["fps"])
    sample_rate, channels = int(spec["sample_rate"]), int(spec["channels"])
    n_frames = int(round(duration * fps))
    vrng = np.random.default_rng([int(spec["seed"]), LOOK_STREAM])
    variety = _draw_variety(vrng, look)
    variety.update(spec.get("variety") or {})   # settings fixed by the caller (tests, ablations) win
    scene = _Scene(width * SCENE_H / height, rng.uniform(180, 215), rng.uniform(*GRAVITY), duration)
    scene.family, scene.variety = LOOK_FAMILIES[look], variety
    SCENES[spec["template"]](rng, scene, duration)
    _add_distractor(scene, variety)
    _simulate(scene)
    events = [ev for ev in _merge_events(scene.events) if ev["t"] < duration]

    s, (ch, cw), crops = _camera(vrng, variety, width, height, scene.floor_y, n_frames, fps)
    backdrop = _backdrop(vrng, variety, ch, cw, scene.floor_y * s, s)
    gain, offset = _lighting(variety, height, width)
    if variety["noise"] > 0:        # a few fields of sensor noise, the lighting offset folded in
        offset = offset + vrng.normal(0, variety["noise"], (NOISE_FIELDS, height, width, 1)).astype(np.float32)
    dust_colour = np.clip(rng.uniform(170, 230) + rng.normal(0, 10, 3), 0, 255).astype(np.float32)
    dust = _dust(rng, events, s)
    layered = sorted([(b.layer, i, "body", b) for i, b in enumerate(scene.bodies)] +
                     [(layer, i, "decor", fn) for i, (layer, fn) in enumerate(scene.decor)], key=lambda x: x[:2])
    # Scenery drawn first and the same in every frame (walls, tables, shelves) is painted once.
    while layered and layered[0][2] == "decor" and getattr(layered[0][3], "static", False):
        layered.pop(0)[3](backdrop, 0.0, s)
    exposure = variety["blur"] / fps
    canvas = np.empty_like(backdrop)

    def compose(t):
        img = canvas
        np.copyto(img, backdrop)
        k = max(int(round(t / SIM_DT)), 0)
        _draw_shadows(img, scene, k, s, variety["light"]["shadow"])
        for _, _, kind, obj in layered:
            if kind == "decor":
                obj(img, t, s)
            elif exposure > 0:
                for j, a in enumerate(BLUR_TRAIL):
                    tj = t - exposure * (len(BLUR_TRAIL) - 1 - j) / (len(BLUR_TRAIL) - 1)
                    x, y = obj.track[min(max(int(round(tj / SIM_DT)), 0), len(obj.track) - 1)]
                    _draw_body(img, obj, x, y, tj, s, a)
            else:
                x, y = obj.track[min(k, len(obj.track) - 1)]
                _draw_body(img, obj, x, y, t, s)
        # Dust: drifts out with drag and rises, grows and fades.
        for t0, x0, y0, vx, vy, r0, life, a0 in dust:
            age = t - t0
            if 0 <= age < life:
                drift = DUST_DRAG_S * (1 - math.exp(-age / DUST_DRAG_S))
                u = age / life
                _fill_ellipse(img, (x0 + vx * drift) * s, (y0 + vy * drift) * s, r0 * (1 + 1.5 * u) * s,
                              r0 * (1 + 1.5 * u) * s, dust_colour, a0 * (1 - u) ** 1.5)
        return img

    frames = np.empty((n_frames, height, width, 3), np.uint8)
    lit = np.empty((height, width, 3), np.float32)
    field = 0
    for i in range(n_frames):
        img = compose(i / fps)
        x0, y0 = crops[i]
        view = img[y0:y0 + height, x0:x0 + width]
        _draw_occluder(view, variety["occluder"])
        np.multiply(view, gain, out=lit)
        if offset.ndim == 4:        # another noise field than the last frame's: noise never freezes
            field = (field + 1 + int(vrng.integers(NOISE_FIELDS - 1))) % NOISE_FIELDS
            lit += offset[field]
        else:
            lit += offset
        np.clip(lit, 0, 255, out=frames[i], casting="unsafe")
    audio, distractors, sound = _render_audio(rng, scene, events, duration, sample_rate, channels, bank)
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
    out = _render(spec, sounds)
    return out["frames"], out["audio"], out["events"], out["fps"], out["sample_rate"]


# =================================================================================================
# Encoding
# =================================================================================================
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
        # not impossible: see the module docstring).
        vs.codec_context.thread_count = 1
        vs.codec_context.thread_type = "SLICE"
        astream = None
        if audio is not None:
            audio = np.asarray(audio, np.float32)
            audio = audio[None] if audio.ndim == 1 else audio
            if audio.ndim != 2 or audio.shape[0] not in (1, 2):
                raise FoleyError(f"audio must be [C, S] with C = 1 or 2, got {list(audio.shape)}")
            if not sample_rate:
                raise FoleyError("write_video: audio needs a sample_rate")
            layout = "mono" if audio.shape[0] == 1 else "stereo"
            stream_rate = OPUS_RATE if acodec in ("libopus", "opus") else int(sample_rate)
            astream = container.add_stream(acodec, rate=stream_rate, layout=layout)
            astream.codec_context.flags |= av.codec.context.Flags.bitexact
            astream.codec_context.thread_count = 1
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


def _probe_reason(path):
    """What a decoder makes of a damaged file, in DESIGN.md's words (None: it looks fine).

    Mirrors pipeline.media.load_clip's checks: cannot open -> unreadable; no frame, or video ending
    well before the duration in the header (a cut file) -> decode_error; < 12 frames -> too_short.
    """
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError):
        return "unreadable"
    with container:
        if not container.streams.video:
            return "no_video_stream"
        stream = container.streams.video[0]
        header_s = container.duration / 1e6 if container.duration else None
        times = []
        try:
            for frame in container.decode(stream):
                times.append(float(frame.time))
        except av.FFmpegError:
            return "decode_error"
    if not times:
        return "decode_error"
    step = (times[-1] - times[0]) / max(len(times) - 1, 1) or 1 / 12
    if header_s is not None and times[-1] + step < header_s - 2 * step:
        return "decode_error"
    return "too_short" if len(times) < MIN_FRAMES else None


def _make_clip(spec, videos_dir, fmt, bank=None):
    """Render, encode and (for faulty clips) damage one clip. Runs in a worker; returns its facts."""
    out = _render(spec, bank)
    path = Path(videos_dir) / f"{spec['id']}.{FORMATS[fmt][0]}"
    fault = spec.get("fault")
    audio = out["audio"]
    if fault == "no_audio_stream":
        audio = None
    elif fault == "silent_audio":
        audio = np.zeros_like(audio)
    write_video(path, out["frames"], out["fps"], audio, out["sample_rate"], fmt)
    reason = fault
    if fault == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
        reason = _probe_reason(path)
        if reason is None:  # cannot happen for files of 2-6 s; refuse to record a fault that is not one
            raise RuntimeError(f"truncating {path.name} left a decodable file")
    return {
        "id": spec["id"], "events": out["events"], "placeholders": out["placeholders"],
        "info": {
            "split": spec["split"], "template": spec["template"], "duration": spec["duration"],
            "fps": spec["fps"], "frames": len(out["frames"]), "sample_rate": spec["sample_rate"],
            "stream_sample_rate": (OPUS_RATE if FORMATS[fmt][2] == "libopus" else spec["sample_rate"]),
            "channels": spec["channels"], "seed": spec["seed"], "impact_speeds": out["speeds"],
            "hidden_impacts": out["hidden"], "distractors": out["distractors"],
            "look": out["variety"]["look"], "variety": out["variety"], "sound": out["sound"],
            **({"fault": fault, "reason": reason} if fault else {}),
        },
    }


# =================================================================================================
# The dataset
# =================================================================================================
def _label(template, placeholders):
    """SSv2 label: the template with its placeholders filled in order, first letter capitalised."""
    parts = template.replace("[Something]", "[something]").split("[something]")
    text = parts[0] + "".join(p + rest for p, rest in zip(placeholders, parts[1:]))
    return text[:1].upper() + text[1:]


def labels_map():
    """{"Dropping something onto something": "3", ...}: every template used, brackets removed,
    indices in alphabetical order (as SSv2's labels file)."""
    names = sorted(t.replace("[", "").replace("]", "") for t in TEMPLATES_12 + OTHER_TEMPLATES)
    return {name: str(i) for i, name in enumerate(names)}


def _split_specs(rng, split, n_sound, ids, size, split_index, seed, look):
    n_other = max(1, -(-n_sound // OTHER_PER_SOUND_CLIPS)) if n_sound else 0
    templates = [TEMPLATES_12[i % len(TEMPLATES_12)] for i in range(n_sound)]
    templates = [templates[i] for i in rng.permutation(n_sound)]
    templates += [OTHER_TEMPLATES[i % len(OTHER_TEMPLATES)] for i in range(n_other)]
    order = rng.permutation(len(templates))       # non-sound clips mixed in, as in SSv2 lists
    templates = [templates[i] for i in order]
    sound_idx = [i for i, t in enumerate(templates) if t in TEMPLATES_12]
    n_faulty = max(1, int(round(FAULT_FRACTION * n_sound))) if n_sound else 0
    faulty = sorted(rng.choice(sound_idx, size=n_faulty, replace=False).tolist()) if n_faulty else []
    # Each split starts the cycle of fault kinds elsewhere, so two tiny splits show all three.
    kinds = {i: FAULT_KINDS[(j + 2 * split_index) % len(FAULT_KINDS)] for j, i in enumerate(faulty)}
    specs = []
    for i, template in enumerate(templates):
        clip_seed = int(np.random.SeedSequence([seed, split_index, i, _look_code(look)]).generate_state(1)[0])
        crng = np.random.default_rng(clip_seed)
        specs.append({
            "id": ids[i], "split": split, "template": template, "seed": clip_seed,
            "duration": round(float(crng.uniform(*DURATION_S)), 2),
            "fps": int(crng.choice(FPS_CHOICES)), "sample_rate": int(crng.choice(RATE_CHOICES)),
            "channels": int(crng.choice([1, 2])), "size": list(size), "fault": kinds.get(i), "look": look,
        })
    return specs


def _look_code(look):
    """A look's number: its index in LOOKS (stable: new looks are appended)."""
    _family(look)
    return LOOKS.index(look)


def make_specs(n_train=240, n_val=60, seed=0, size=(320, 240), look=DEFAULT_LOOK):
    """All clip specs of a dataset, in JSON order: list of dicts (see render_clip).

    Ids and clip seeds depend on (seed, look): two looks made with the same seed share no clip
    (ids of look k lie in k * LOOK_ID_BASE + [100000, 999999], so both sets can be used together).
    """
    code = _look_code(look)
    rng = np.random.default_rng([seed, code] if code else seed)   # the default look keeps seed-only streams
    n_other = [max(1, -(-n // OTHER_PER_SOUND_CLIPS)) if n else 0 for n in (n_train, n_val)]
    total = n_train + n_val + sum(n_other)
    ids = [str(v) for v in (rng.choice(900_000, size=total, replace=False) + 100_000 + code * LOOK_ID_BASE)]
    n_tr = n_train + n_other[0]
    return (_split_specs(rng, "train", n_train, ids[:n_tr], size, 0, seed, look)
            + _split_specs(rng, "validation", n_val, ids[n_tr:], size, 1, seed, look))


def _prepare_out(out: Path):
    """Create OUT; an earlier synthetic dataset there is replaced, anything else is refused."""
    if out.exists() and not out.is_dir():
        raise FoleyError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        manifest = out / DATASET_JSON
        if not manifest.is_file():
            raise FoleyError(f"{out} is not empty and holds no {DATASET_JSON}: refusing to write a dataset into it")
        try:
            old = json.loads(manifest.read_text())
            old_suffix = FORMATS[old["format"]][0]
            for clip_id in old["clips"]:
                (out / "videos" / f"{clip_id}.{old_suffix}").unlink(missing_ok=True)
        except (ValueError, KeyError, TypeError) as e:
            raise FoleyError(f"{manifest} is not a foleycache synthetic dataset manifest ({e})") from None
        manifest.unlink()
    (out / "videos").mkdir(parents=True, exist_ok=True)


def _write_json(path, obj):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    tmp.replace(path)


def make_synthetic(out: Path, n_train: int = 240, n_val: int = 60, seed: int = 0, fmt: str = "webm",
                   jobs: int = -1, progress: bool = True, size: tuple = (320, 240), look: str = DEFAULT_LOOK,
                   sounds: Path | str | None = None) -> dict:
    """Write a Something-Something-shaped dataset with sound into `out` (layout: module docstring).

    n_train / n_val: clips of the 12 sound templates per split (either may be 0, not both); each
    non-empty split also gets ceil(n / 25) clips of non-sound templates (the class filter removes
    them). size: (width, height). look: one of LOOKS, the family of appearance settings the clips
    are drawn from (same seed, other look: other clips, other ids). sounds: a folder of recorded
    impact samples (load_sounds) for the impact sounds; None = procedural sounds.
    jobs: joblib processes (-1 = all cores); the output does not depend on it.
    Returns a summary dict (JSON-serialisable); dataset.json holds the full record.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    if n_train < 0 or n_val < 0 or n_train + n_val < 1:
        raise FoleyError("make-synthetic needs at least one clip (--train/--val >= 0, not both 0)")
    if fmt not in FORMATS:
        raise FoleyError(f"unknown format {fmt!r}: expected one of {sorted(FORMATS)}")
    if jobs == 0:
        raise FoleyError("--jobs must be a number of processes (>= 1) or negative (-1 = all cores)")
    width, height = (int(v) for v in size)
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise FoleyError(f"frame size must be even and at least 16x16, got {width}x{height}")
    _family(look)
    bank = load_sounds(sounds) if sounds is not None else None
    out = Path(out)
    _prepare_out(out)
    started = time.perf_counter()
    specs = make_specs(n_train, n_val, seed, (width, height), look)
    results = Parallel(n_jobs=jobs, return_as="generator")(
        delayed(_make_clip)(spec, str(out / "videos"), fmt, bank) for spec in specs)
    results = list(tqdm(results, total=len(specs), desc="make-synthetic", unit="clip", disable=not progress))

    lists = {"train": [], "validation": []}
    events, clips, faulty = {}, {}, {}
    for spec, res in zip(specs, results):
        lists[spec["split"]].append({"id": spec["id"], "label": _label(spec["template"], res["placeholders"]),
                                     "template": spec["template"], "placeholders": res["placeholders"]})
        events[spec["id"]] = res["events"]
        clips[spec["id"]] = res["info"]
        if spec["fault"]:
            faulty[spec["id"]] = {"fault": spec["fault"], "reason": res["info"]["reason"]}
    _write_json(out / TRAIN_JSON, lists["train"])
    _write_json(out / VAL_JSON, lists["validation"])
    _write_json(out / LABELS_JSON, labels_map())
    _write_json(out / EVENTS_JSON, events)
    counts = {split: {"sound": sum(s["template"] in TEMPLATES_12 for s in specs if s["split"] == split),
                      "other": sum(s["template"] not in TEMPLATES_12 for s in specs if s["split"] == split),
                      "total": len(lists[split])} for split in lists}
    suffix = FORMATS[fmt][0]
    _write_json(out / DATASET_JSON, {
        "generator": "foleycache make-synthetic", "version": DATASET_VERSION, "seed": seed, "format": fmt,
        "look": look, "sounds": bank["folder"] if bank else None,
        "video_codec": FORMATS[fmt][1], "audio_codec": FORMATS[fmt][2], "size": [width, height],
        "videos": f"videos/{{id}}.{suffix}", "counts": counts, "faulty": faulty,
        "notes": [
            "events.json: true impact times (s) of every clip, faulty ones included; a sound follows each",
            "impact, with peak amplitude proportional to impact speed (clips[id].impact_speeds, px/s at 240 px height).",
            "faulty[id].fault is what was done to the file; .reason is what a decoder reports (DESIGN.md reasons):",
            "no_audio_stream, silent_audio (stream of zeros), truncated (bytes cut in half) -> unreadable (mp4) or decode_error (webm).",
            "Distractors (camera clicks, soft sounds) are not events; inside the first 4 s they stay below",
            f"{CLICK_IN_WINDOW[1]:.2f} x the loudest impact. Opus audio decodes at 48 kHz whatever the clip's sample_rate.",
            "Non-sound templates (OTHER_TEMPLATES) have no events and exist to exercise the class filter.",
            "clips[id].variety: the appearance drawn for the clip from its look (wall, floor, palette, object_scale,",
            "light, camera zoom/pan/floor_at/shake, blur, noise, occluder, distractor: silent motion, never an event);",
            "clips[id].sound: procedural materials or the recorded samples used, reverb and room tone.",
            f"Ids of look k (LOOKS = {list(LOOKS)}) lie in k * {LOOK_ID_BASE} + [100000, 999999]: looks never share ids.",
        ],
        "clips": clips,
    })
    return {
        "out": str(out), "seed": seed, "format": fmt, "look": look, "sounds": bank["folder"] if bank else None,
        "clips": len(specs), "train": counts["train"],
        "validation": counts["validation"], "faulty": faulty,
        "events": sum(len(v) for v in events.values()), "seconds": round(time.perf_counter() - started, 1),
    }
