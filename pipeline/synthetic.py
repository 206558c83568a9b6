"""Synthetic Something-Something-shaped dataset with sound: the embedded default data.

`make_synthetic(out)` writes, into OUT:

    videos/{id}.webm                       VP9 + Opus (`fmt="mp4"`: H.264 + AAC)
    something-something-v2-train.json      SSv2 annotation lists: {"id", "label", "template", "placeholders"}
    something-something-v2-validation.json
    something-something-v2-labels.json     {"Dropping something onto something": "3", ...}
    events.json                            {id: [impact times, seconds]}: the ground truth of every sound
    dataset.json                           seed, counts, faulty ids with the reason a decoder gives, per-clip facts

Each clip is a small 2-D physics scene (side view) for one of the 12 sound templates of the seed,
simulated at 500 Hz: falls with bounces, throws against a wall, hits, collisions that deflect or halt,
stack collapses, drops into / behind / in front of something. The picture carries the sound
(FINDINGS.md, "Make impacts visible"): every impact stops or bounces the object, squashes it for
~2 frames at 12 fps and raises a dust puff at the contact point, all scaled by the impact speed; a
hidden impact (behind an occluder, inside a container) shows as dust rising above the occluder. The
audio is a decaying noisy click/thud per impact (10-40 ms) with peak amplitude proportional to the
impact speed, over low background noise, with distractors kept clearly quieter than the impacts
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
DATASET_VERSION = 1
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
NOISE_RMS = (0.002, 0.008)
CAMERA_CLICK_P = 0.3
SOFT_SOUND_P = 0.15
CLICK_IN_WINDOW = (0.15, 0.35)  # x loudest impact in the window: never the envelope's peak
CLICK_LATE = (0.4, 0.8)         # after the window it may be as loud as in the seed's example
SOFT_SOUND = (0.05, 0.15)

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


def _background(rng, width, height, floor_y):
    """A textured wall above floor_y and a textured table/floor below it: [H, W, 3] float32."""
    from scipy.ndimage import zoom

    def smooth_noise(cells_y, cells_x, amp):
        grid = rng.standard_normal((cells_y, cells_x, 3)).astype(np.float32) * amp
        out = zoom(grid, (height / cells_y, width / cells_x, 1), order=1)
        return out[:height, :width]

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    wall = rng.uniform(90, 210) + rng.normal(0, 25, 3)
    img = np.empty((height, width, 3), np.float32)
    img[:] = wall
    img += smooth_noise(int(rng.integers(3, 8)), int(rng.integers(4, 10)), rng.uniform(5, 18))
    pattern = rng.choice(["plain", "stripes", "tiles", "wallpaper"])
    amp = rng.uniform(6, 16)
    if pattern == "stripes":
        period = rng.uniform(8, 40) * height / SCENE_H
        img += (amp * np.sign(np.sin(2 * np.pi * xx / period)))[..., None]
    elif pattern == "tiles":
        period = rng.uniform(15, 45) * height / SCENE_H
        img += (amp * ((np.floor(xx / period) + np.floor(yy / period)) % 2 * 2 - 1))[..., None]
    elif pattern == "wallpaper":
        period = rng.uniform(10, 30) * height / SCENE_H
        img += (amp * np.sin(2 * np.pi * xx / period) * np.sin(2 * np.pi * yy / period))[..., None]
    fy = int(round(floor_y * height / SCENE_H))
    floor = np.clip(rng.uniform(60, 190) + rng.normal(0, 30, 3), 20, 235)
    img[fy:] = floor
    grain_period = rng.uniform(3, 9) * height / SCENE_H
    grain = np.sin(2 * np.pi * yy[fy:] / grain_period + 3 * np.sin(xx[fy:] / rng.uniform(20, 60)))
    img[fy:] += (rng.uniform(4, 12) * grain)[..., None]
    img[fy:fy + max(1, height // 120)] *= 0.7   # the table edge
    img += rng.normal(0, 2.5, (height, width, 1)).astype(np.float32)  # static speckle, same every frame
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


def _draw_body(img, body, x, y, t, s):
    q, nx, ny = _squash(body, t)
    hx, hy = body.hx, body.hy
    if q > 0:
        # Shrink along the contact normal around the contact side, widen across it.
        if abs(ny) >= abs(nx):
            x, y, hx, hy = x, y - ny * hy * q, hx * (1 + 0.5 * q), hy * (1 - q)
        else:
            x, y, hx, hy = x - nx * hx * q, y, hx * (1 - q), hy * (1 + 0.5 * q)
    c = body.colour
    if body.shape == "ball":
        _fill_ellipse(img, x * s, y * s, hx * s, hy * s, c * 0.6)
        _fill_ellipse(img, x * s, y * s, (hx - 1.2) * s, (hy - 1.2) * s, c)
        _fill_ellipse(img, (x - 0.35 * hx) * s, (y - 0.35 * hy) * s, 0.3 * hx * s, 0.25 * hy * s,
                      np.minimum(c + 70, 255))
    else:
        _fill_rect(img, (x - hx) * s, (y - hy) * s, (x + hx) * s, (y + hy) * s, c * 0.55)
        _fill_rect(img, (x - hx + 1.5) * s, (y - hy + 1.5) * s, (x + hx - 1.5) * s, (y + hy - 1.5) * s, c)
        _fill_rect(img, (x - hx + 1.5) * s, (y - hy + 1.5) * s, (x + hx - 1.5) * s, (y - hy + 3.5) * s,
                   np.minimum(c + 50, 255))


def _fill_capsule(img, x0, y0, x1, y1, r, colour):
    """A thick segment (an arm) from (x0, y0) to (x1, y1) with radius r, in pixels."""
    h, w = img.shape[:2]
    bx0, bx1 = max(int(min(x0, x1) - r - 1), 0), min(int(max(x0, x1) + r + 2), w)
    by0, by1 = max(int(min(y0, y1) - r - 1), 0), min(int(max(y0, y1) + r + 2), h)
    if bx0 >= bx1 or by0 >= by1:
        return
    px = np.arange(bx0, bx1, dtype=np.float32)[None, :] + 0.5 - x0
    py = np.arange(by0, by1, dtype=np.float32)[:, None] + 0.5 - y0
    dx, dy = x1 - x0, y1 - y0
    u = np.clip((px * dx + py * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    dist = np.sqrt((px - u * dx) ** 2 + (py - u * dy) ** 2)
    cover = np.clip(r - dist + 0.5, 0.0, 1.0)
    region = img[by0:by1, bx0:bx1]
    region += cover[..., None] * (np.asarray(colour, np.float32) - region)


def _draw_hand(img, x, y, s, colour, arm_to=(0.0, -1.0)):
    """A hand at (x, y) (scene units) with an arm leaving the frame along arm_to (unit vector)."""
    ax, ay = arm_to
    _fill_capsule(img, x * s, y * s, (x + ax * 400) * s, (y + ay * 400) * s, 7 * s, colour * 0.92)
    _fill_ellipse(img, x * s, y * s, 11 * s, 9 * s, colour)


# =================================================================================================
# Scenes: one builder per template, all in scene coordinates
# =================================================================================================
def _colour(rng):
    return np.clip(PALETTE[rng.integers(len(PALETTE))] + rng.normal(0, 12, 3), 0, 255).astype(np.float32)


def _object(rng, kind=None, big=False):
    """A random movable object: (name, shape, hx, hy, colour, restitution)."""
    kind = kind or ("ball" if rng.random() < 0.5 else "box")
    scale = 1.25 if big else 1.0
    if kind == "ball":
        r = rng.uniform(10, 20) * scale
        return str(rng.choice(BALLS)), "ball", r, r, _colour(rng), rng.uniform(0.45, 0.7)
    return (str(rng.choice(BOXES)), "box", rng.uniform(11, 24) * scale, rng.uniform(8, 16) * scale,
            _colour(rng), rng.uniform(0.15, 0.35))


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
    scene.decor.append((layer, draw))


def _drop_scene(rng, scene, duration, land_top, x_range, name_list=None):
    """A held object released above `land_top` (the y it lands on) within x_range."""
    name, shape, hx, hy, colour, e = _object(rng)
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
    tname, _, thx, thy, tcol, _ = _object(rng, "box")
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
    name, shape, hx, hy, colour, e = _object(rng, "ball" if rng.random() < 0.7 else "box")
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
    name, shape, hx, hy, colour, e = _object(rng)
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
    name, shape, hx, hy, colour, e = _object(rng)
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
    name, shape, hx, hy, colour, e = _object(rng)
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
    bcol = _colour(rng) * 0.8
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
    a_name, _, ra, _, ca, _ = _object(rng, "ball")
    b_name, _, rb, _, cb, _ = _object(rng, "ball")
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
    a_name, a_shape, ahx, ahy, ca, _ = _object(rng, "ball")
    b_name, _, bhx, bhy, cb, _ = _object(rng, "box", big=True)
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
    a_name, _, ahx, ahy, ca, _ = _object(rng, "box")
    b_name, _, bhx, bhy, cb, _ = _object(rng, "box")
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
    base_col = _colour(rng)
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
    a_name, a_shape, ahx, ahy, ca, _ = _object(rng)
    b_name, b_shape, bhx, bhy, cb, _ = _object(rng)
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
    name, _, hx, hy, colour, _ = _object(rng, "box")
    v = rng.uniform(50, 110)
    t0, t1 = rng.uniform(0.2, 0.8), duration - rng.uniform(0.2, 0.6)

    def control(b, t):
        b.vx, b.vy = (v if t0 <= t < t1 else 0.0), 0.0

    body = scene.add(_Body(name, "box", scene.w / 2 - v * (t1 - t0) / 2, F - hy, hx, hy, colour, control=control))
    _attached_hand(scene, body, SKIN[rng.integers(len(SKIN))], -hx - 6, 0.0, (-0.6, -0.8))
    scene.placeholders = [name]


def _scene_lift(rng, scene, duration):
    F = scene.floor_y
    name, shape, hx, hy, colour, _ = _object(rng)
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
def _impact_sound(rng, sample_rate, amplitude, shape):
    """A decaying noisy click (balls) or thud (boxes), 10-40 ms, peak |x| = amplitude: [L]."""
    n = int(0.06 * sample_rate)
    t = np.arange(n) / sample_rate
    tau_noise = rng.uniform(0.003, 0.008)
    tau_tone = rng.uniform(0.006, 0.014)
    f = rng.uniform(500, 1800) if shape == "ball" else rng.uniform(120, 450)
    x = 0.6 * rng.standard_normal(n) * np.exp(-t / tau_noise) + np.sin(2 * np.pi * f * t) * np.exp(-t / tau_tone)
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


def _render_audio(rng, scene, events, duration, sample_rate, channels):
    """Background noise + one sound per impact + distractors: ([C, S] float32, distractor list)."""
    from scipy.signal import lfilter

    n = int(round(duration * sample_rate))
    gain = rng.uniform(*IMPACT_GAIN)
    rms = rng.uniform(*NOISE_RMS)
    noise = np.empty((channels, n), np.float32)
    common = lfilter([1.0], [1.0, -0.97], rng.standard_normal(n))  # brown-ish room noise
    for c in range(channels):
        own = lfilter([1.0], [1.0, -0.97], rng.standard_normal(n))
        mix = 0.7 * common + 0.3 * own + 0.3 * np.std(common) * rng.standard_normal(n)
        noise[c] = rms * mix / np.std(mix)
    audio = noise
    amps = []
    for ev in events:
        amp = gain * min(ev["speed"] / V_REF, 1.25) * (HIDDEN_GAIN if ev["hidden"] else 1.0)
        amps.append(amp)
        snd = _impact_sound(rng, sample_rate, amp, ev["bodies"][0].shape)
        # Stereo: a mild pan by where it happened (the first channel keeps >= 75% of the level).
        pan = np.clip(ev["x"] / scene.w - 0.5, -0.5, 0.5) * 0.5
        gains = [1.0] if channels == 1 else [1.0 - max(pan, 0.0), 1.0 - max(-pan, 0.0)]
        for c in range(channels):
            _add(audio[c], snd * gains[c], ev["t"] * sample_rate)
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
    return np.clip(audio, -1.0, 1.0).astype(np.float32), distractors


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


def _render(spec):
    """Everything about one clip, from its spec: frames, audio, events and facts for dataset.json."""
    rng = np.random.default_rng(int(spec["seed"]))
    width, height = (int(v) for v in spec["size"])
    duration, fps = float(spec["duration"]), int(spec["fps"])
    sample_rate, channels = int(spec["sample_rate"]), int(spec["channels"])
    s = height / SCENE_H
    scene = _Scene(width / s, rng.uniform(180, 215), rng.uniform(*GRAVITY), duration)
    SCENES[spec["template"]](rng, scene, duration)
    _simulate(scene)
    events = [ev for ev in _merge_events(scene.events) if ev["t"] < duration]

    background = _background(rng, width, height, scene.floor_y)
    dust_colour = np.clip(rng.uniform(170, 230) + rng.normal(0, 10, 3), 0, 255).astype(np.float32)
    dust = _dust(rng, events, s)
    n_frames = int(round(duration * fps))
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    layered = sorted([(b.layer, i, "body", b) for i, b in enumerate(scene.bodies)] +
                     [(layer, i, "decor", fn) for i, (layer, fn) in enumerate(scene.decor)], key=lambda x: x[:2])
    for i in range(n_frames):
        t = i / fps
        img = background.copy()
        k = int(round(t / SIM_DT))
        for layer, _, kind, obj in layered:
            if kind == "body":
                x, y = obj.track[min(k, len(obj.track) - 1)]
                _draw_body(img, obj, x, y, t, s)
            else:
                obj(img, t, s)
        # Dust: drifts out with drag and rises, grows and fades.
        for t0, x0, y0, vx, vy, r0, life, a0 in dust:
            age = t - t0
            if 0 <= age < life:
                drift = DUST_DRAG_S * (1 - math.exp(-age / DUST_DRAG_S))
                u = age / life
                _fill_ellipse(img, (x0 + vx * drift) * s, (y0 + vy * drift) * s, r0 * (1 + 1.5 * u) * s,
                              r0 * (1 + 1.5 * u) * s, dust_colour, a0 * (1 - u) ** 1.5)
        np.clip(img, 0, 255, out=img)
        np.copyto(frames[i], img, casting="unsafe")
    audio, distractors = _render_audio(rng, scene, events, duration, sample_rate, channels)
    return {
        "frames": frames, "audio": audio, "fps": fps, "sample_rate": sample_rate,
        "events": [round(float(ev["t"]), 3) for ev in events],
        "speeds": [round(float(ev["speed"]), 1) for ev in events],
        "hidden": [ev["hidden"] is not None for ev in events],
        "placeholders": scene.placeholders, "distractors": distractors,
    }


def render_clip(spec: dict):
    """Render one clip from its spec; pure and deterministic (the spec carries the clip's seed).

    spec: {"template": one of TEMPLATES_12 / OTHER_TEMPLATES, "seed": int, "duration": s,
           "fps": int, "sample_rate": Hz, "channels": 1|2, "size": (width, height)}
    Returns (frames uint8 [N, H, W, 3] with N = round(duration * fps),
             audio float32 [C, S] in [-1, 1] with S = round(duration * sample_rate),
             events: impact times in seconds (sorted), fps, sample_rate).
    """
    out = _render(spec)
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


def _make_clip(spec, videos_dir, fmt):
    """Render, encode and (for faulty clips) damage one clip. Runs in a worker; returns its facts."""
    out = _render(spec)
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


def _split_specs(rng, split, n_sound, ids, size, split_index, seed):
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
        clip_seed = int(np.random.SeedSequence([seed, split_index, i]).generate_state(1)[0])
        crng = np.random.default_rng(clip_seed)
        specs.append({
            "id": ids[i], "split": split, "template": template, "seed": clip_seed,
            "duration": round(float(crng.uniform(*DURATION_S)), 2),
            "fps": int(crng.choice(FPS_CHOICES)), "sample_rate": int(crng.choice(RATE_CHOICES)),
            "channels": int(crng.choice([1, 2])), "size": list(size), "fault": kinds.get(i),
        })
    return specs


def make_specs(n_train=240, n_val=60, seed=0, size=(320, 240)):
    """All clip specs of a dataset, in JSON order: list of dicts (see render_clip)."""
    rng = np.random.default_rng(seed)
    n_other = [max(1, -(-n // OTHER_PER_SOUND_CLIPS)) if n else 0 for n in (n_train, n_val)]
    total = n_train + n_val + sum(n_other)
    ids = [str(v) for v in (rng.choice(900_000, size=total, replace=False) + 100_000)]
    n_tr = n_train + n_other[0]
    return (_split_specs(rng, "train", n_train, ids[:n_tr], size, 0, seed)
            + _split_specs(rng, "validation", n_val, ids[n_tr:], size, 1, seed))


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
                   jobs: int = -1, progress: bool = True, size: tuple = (320, 240)) -> dict:
    """Write a Something-Something-shaped dataset with sound into `out` (layout: module docstring).

    n_train / n_val: clips of the 12 sound templates per split; each split also gets
    ceil(n / 25) clips of non-sound templates (the class filter removes them). size: (width, height).
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
    out = Path(out)
    _prepare_out(out)
    started = time.perf_counter()
    specs = make_specs(n_train, n_val, seed, (width, height))
    results = Parallel(n_jobs=jobs, return_as="generator")(
        delayed(_make_clip)(spec, str(out / "videos"), fmt) for spec in specs)
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
        ],
        "clips": clips,
    })
    return {
        "out": str(out), "seed": seed, "format": fmt, "clips": len(specs), "train": counts["train"],
        "validation": counts["validation"], "faulty": faulty,
        "events": sum(len(v) for v in events.values()), "seconds": round(time.perf_counter() - started, 1),
    }
