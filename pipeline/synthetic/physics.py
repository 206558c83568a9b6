"""The 500 Hz 2-D simulation every clip is built on: bodies, collisions, impact events.

Owns the bodies (axis-aligned balls and boxes), the scene they live in, the integration step and
the contacts that become events (a sound and a visible impact each). Scene coordinates are pixels of
a SCENE_H-high frame (y down), so the physics, and with it when a clip sounds, does not depend on
the frame size. Must not draw, pick a look or make a sound: it only records where and how hard
things hit (`Scene.events`, `Body.impacts`) for the later stages.
"""
from __future__ import annotations

import math

import numpy as np

SCENE_H = 240.0
SIM_DT = 1 / 500            # 2 ms steps: < 2 px per step at the fastest speeds, events within 2 ms
GRAVITY = (1400.0, 2200.0)  # px/s^2; slower than real scale (~4000) so falls span a few frames at 12 fps
V_REF = 800.0               # impact speed (px/s) that gives full loudness, full squash, biggest puff
V_MIN_EVENT = 70.0          # slower contacts are resting contacts: no bounce, no sound, no event
EVENT_MERGE_S = 0.02        # contacts closer than this are one sound
PAIR_REPEAT_S = 0.05        # two bodies touching again within this: one touch, one sound
# How an impact shows (scenes' jolting containers, frames' squash): over ~2 frames at 12 fps (0.17 s).
SQUASH_MAX = {"ball": 0.45, "box": 0.3}
SQUASH_TAU_S = 0.07


class Body:
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
        self.track = []            # after simulate(): float64 [n_steps, 2], (x, y) every SIM_DT

    def held(self, t):
        return t < self.release

    def inv_mass(self, t):
        return 0.0 if (self.control is not None or self.held(t)) else 1.0 / self.mass


class Scene:
    """The bodies, the pairs that collide, and what the later stages draw and hear.

    width: scene units (px at SCENE_H height); floor_y: the table's top; g: gravity, px/s^2.
    """

    def __init__(self, width, floor_y, g, duration):
        self.w, self.h, self.floor_y, self.g, self.duration = width, SCENE_H, floor_y, g, duration
        self.bodies, self.pairs, self.events = [], [], []
        self.occluders = []        # (x0, y0, x1, y1): drawn over the bodies; impacts inside are hidden
        self.decor = []            # (layer, draw(img, t, s)) for scenery, hands, occluders
        self.placeholders = []
        self.pair_last = {}
        self.family, self.variety = None, None   # the look's family and this clip's draws (set by clip)

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


def simulate(scene):
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


def merge_events(events):
    """Sort by time; contacts within EVENT_MERGE_S of a louder one are the same sound."""
    out = []
    for ev in sorted(events, key=lambda e: e["t"]):
        if out and ev["t"] - out[-1]["t"] < EVENT_MERGE_S:
            if ev["speed"] > out[-1]["speed"]:
                out[-1] = dict(ev, t=out[-1]["t"])
            continue
        out.append(ev)
    return out


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
    if t - scene.pair_last.get(key, -1.0) < PAIR_REPEAT_S:
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
