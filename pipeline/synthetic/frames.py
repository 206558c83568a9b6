"""Frames: the simulated scene drawn over its look's backdrop, one uint8 picture per frame.

Owns what moves in the picture: bodies (squashed by their impacts, with motion trails), their
shadows, dust puffs raised by every impact (above the occluder when the impact is hidden), the
look's silent distractor motion and the occluder near the camera; then the camera's crop, the
lighting and the sensor noise of each frame (`render_frames`). Must not change the physics or the
events, and draws from the physics stream only for the dust, after the scene was built.
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.synthetic.looks import backdrop, camera, lighting
from pipeline.synthetic.objects import PALETTE, SKIN, VISUALS
from pipeline.synthetic.physics import SIM_DT, SQUASH_MAX, SQUASH_TAU_S, V_REF
from pipeline.synthetic.raster import draw_hand, fill_capsule, fill_ellipse, fill_rect

BLUR_TRAIL = (0.35, 0.55, 0.85)  # motion blur: a moving body is drawn at 3 times in the exposure, oldest
                                 # faintest (a trail; a body at rest stays opaque where the copies overlap)
NOISE_FIELDS = 6            # sensor noise: a few precomputed fields, one picked per frame (cheap)
DUST_LIFE_S = (0.3, 0.6)
DUST_DRAG_S = 0.15
STEM, LEAF = np.array([90, 60, 30], np.float32), np.array([60, 150, 50], np.float32)
PAGES = np.array([235, 230, 215], np.float32)
SHADOW = np.array([0, 0, 0], np.float32)


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
        fill_ellipse(img, x * s, y * s, rx * s, hy * s, c * 0.6, alpha)
        fill_ellipse(img, x * s, y * s, (rx - 1.2) * s, (hy - 1.2) * s, c, alpha)
        if visual == "striped":
            fill_ellipse(img, x * s, y * s, (rx - 1.2) * s, 0.3 * hy * s, np.minimum(255 - c * 0.7, 255), alpha)
        elif visual == "fruit":
            fill_rect(img, (x - 0.8) * s, (y - hy - 3.5) * s, (x + 0.8) * s, (y - hy + 1) * s, STEM, alpha)
            fill_ellipse(img, (x + 3) * s, (y - hy - 1.5) * s, 3 * s, 1.5 * s, LEAF, alpha)
        fill_ellipse(img, (x - 0.35 * rx) * s, (y - 0.35 * hy) * s, 0.3 * rx * s, 0.25 * hy * s,
                      np.minimum(c + 70, 255), alpha)
        return
    x0, y0, x1, y1 = x - hx, y - hy, x + hx, y + hy
    if visual == "bottle":      # a wide body and a narrow neck inside the hit box
        neck = y0 + 0.4 * (y1 - y0)
        fill_rect(img, (x - 0.4 * hx) * s, y0 * s, (x + 0.4 * hx) * s, neck * s, c * 0.7, alpha)
        fill_rect(img, (x - 0.45 * hx) * s, y0 * s, (x + 0.45 * hx) * s, (y0 + 3) * s, c * 0.35, alpha)
        fill_rect(img, x0 * s, neck * s, x1 * s, y1 * s, c * 0.6, alpha)
        fill_rect(img, (x0 + 1.5) * s, (neck + 1.5) * s, (x1 - 1.5) * s, (y1 - 1.5) * s, c, alpha)
        fill_rect(img, (x0 + 0.25 * hx) * s, (neck + 2) * s, (x0 + 0.45 * hx) * s, (y1 - 3) * s,
                   np.minimum(c + 80, 255), alpha)
        return
    fill_rect(img, x0 * s, y0 * s, x1 * s, y1 * s, c * 0.55, alpha)
    fill_rect(img, (x0 + 1.5) * s, (y0 + 1.5) * s, (x1 - 1.5) * s, (y1 - 1.5) * s, c, alpha)
    if visual == "can":
        fill_ellipse(img, x * s, (y0 + 1.5) * s, hx * s, 2.5 * s, np.minimum(c + 60, 255), alpha)
        fill_rect(img, (x0 + 1.5) * s, (y - 0.3 * hy) * s, (x1 - 1.5) * s, (y + 0.3 * hy) * s, 255 - c * 0.5, alpha)
    elif visual == "book":
        fill_rect(img, (x0 + 1.5) * s, (y0 + 1.5) * s, (x1 - 1.5) * s, (y0 + 0.45 * (y1 - y0)) * s, PAGES, alpha)
    elif visual == "crate":
        for f in (0.3, 0.65):
            fill_rect(img, x0 * s, (y0 + f * (y1 - y0)) * s, x1 * s, (y0 + f * (y1 - y0) + 1.5) * s, c * 0.45, alpha)
    else:
        fill_rect(img, (x0 + 1.5) * s, (y0 + 1.5) * s, (x1 - 1.5) * s, (y0 + 3.5) * s, np.minimum(c + 50, 255), alpha)


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
            fill_ellipse(img, x * s, (scene.floor_y + 1.5) * s, b.hx * (1 + h / 150) * s, 2.5 * s, SHADOW, a)


def _draw_occluder(img, occ):
    """Something close to the camera covering part of the frame (screen coordinates): img [H, W, 3]."""
    if occ is None:
        return
    height, width = img.shape[:2]
    col = np.asarray(occ["colour"], np.float32)
    x0, x1 = (occ["x"] - occ["width"] / 2) * width, (occ["x"] + occ["width"] / 2) * width
    if occ["kind"] == "post":       # out of focus: soft edges
        fill_rect(img, x0, -2, x1, height + 2, col * 0.8, 0.6)
        fill_rect(img, x0 + 2, -2, x1 - 2, height + 2, col, 0.95)
    elif occ["kind"] == "mug":
        top = height * (0.45 + 0.5 * occ["top"])
        fill_rect(img, x0, top, x1, height + 2, col * 0.75)
        fill_rect(img, x0 + 2, top + 2, x1 - 2, height + 2, col)
        fill_ellipse(img, (x0 + x1) / 2, top, (x1 - x0) / 2, 3, col * 0.5)
    else:                           # a glass pane or a bottle: the scene shows through it
        fill_rect(img, x0, height * occ["top"], x1, height + 2, col, 0.35)


def add_distractor(scene, variety):
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
                draw_hand(img, x_mid + sign * 30 * (u - 0.5), -40 + reach * (y_mid + 40), s, colour)
        scene.decor.append((3, draw))
    elif d["kind"] == "roller":     # far behind (small, high in the picture), constant speed
        y = scene.floor_y - 30 - 40 * d["y"]
        r = 6 * k

        def draw(img, t, s):
            x = x_mid + sign * 60 * (t - t0 - dur / 2)
            fill_rect(img, 0, (y + r) * s, scene.w * s, (y + r + 2) * s, obj_colour * 0.5)   # the shelf
            fill_ellipse(img, x * s, y * s, r * s, r * s, obj_colour)
        scene.decor.append((0, draw))
    else:                           # swing: a lamp or an ornament on a string
        length = (0.3 + 0.4 * d["y"]) * scene.floor_y
        omega = 2 * math.pi / (1.2 + dur * 0.5)

        def draw(img, t, s):
            a = 0.5 * k * math.sin(omega * (t - t0)) * math.exp(-max(t - t0, 0) / 6)
            bx, by = x_mid + length * math.sin(a), length * math.cos(a)
            fill_capsule(img, x_mid * s, -5 * s, bx * s, by * s, 0.8 * s, obj_colour * 0.4)
            fill_ellipse(img, bx * s, by * s, 9 * k * s, 7 * k * s, obj_colour)
        scene.decor.append((1, draw))


# =================================================================================================

def _dust(rng, events):
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


def _draw_dust(img, dust, dust_colour, t, s):
    """Dust [P, 8] (_dust) at time t: drifts out with drag and rises, grows and fades."""
    for t0, x0, y0, vx, vy, r0, life, a0 in dust:
        age = t - t0
        if 0 <= age < life:
            drift = DUST_DRAG_S * (1 - math.exp(-age / DUST_DRAG_S))
            u = age / life
            fill_ellipse(img, (x0 + vx * drift) * s, (y0 + vy * drift) * s, r0 * (1 + 1.5 * u) * s,
                         r0 * (1 + 1.5 * u) * s, dust_colour, a0 * (1 - u) ** 1.5)


def _draw_moving(img, body, t, s, exposure):
    """A body at time t; with an exposure (s) > 0, as a trail of BLUR_TRAIL copies over it."""
    if exposure > 0:
        for j, a in enumerate(BLUR_TRAIL):
            tj = t - exposure * (len(BLUR_TRAIL) - 1 - j) / (len(BLUR_TRAIL) - 1)
            x, y = body.track[min(max(int(round(tj / SIM_DT)), 0), len(body.track) - 1)]
            _draw_body(img, body, x, y, tj, s, a)
    else:
        x, y = body.track[min(max(int(round(t / SIM_DT)), 0), len(body.track) - 1)]
        _draw_body(img, body, x, y, t, s)


def _composer(rng, scene, events, background, s, variety, fps):
    """compose(t) -> the whole canvas at time t (float32 [ch, cw, 3], reused between calls): the
    background, shadows, bodies and decor by layer, then dust. Static scenery drawn first (walls,
    tables, shelves) is the same in every frame: it is painted into `background` once, here."""
    dust_colour = np.clip(rng.uniform(170, 230) + rng.normal(0, 10, 3), 0, 255).astype(np.float32)
    dust = _dust(rng, events)
    layered = sorted([(b.layer, i, "body", b) for i, b in enumerate(scene.bodies)] +
                     [(layer, i, "decor", fn) for i, (layer, fn) in enumerate(scene.decor)], key=lambda x: x[:2])
    while layered and layered[0][2] == "decor" and getattr(layered[0][3], "static", False):
        layered.pop(0)[3](background, 0.0, s)
    exposure = variety["blur"] / fps
    canvas = np.empty_like(background)

    def compose(t):
        np.copyto(canvas, background)
        _draw_shadows(canvas, scene, max(int(round(t / SIM_DT)), 0), s, variety["light"]["shadow"])
        for _, _, kind, obj in layered:
            if kind == "decor":
                obj(canvas, t, s)
            else:
                _draw_moving(canvas, obj, t, s, exposure)
        _draw_dust(canvas, dust, dust_colour, t, s)
        return canvas
    return compose


def render_frames(rng, vrng, scene, events, variety, size, n_frames, fps):
    """The clip's pictures: uint8 [n_frames, H, W, 3] for size (W, H), frame i at i / fps seconds.

    rng: the clip's physics stream (dust, after the scene was built); vrng: the look's stream
    (camera, backdrop, sensor noise). The scene is drawn on a canvas `zoom` times the frame; each
    frame is the camera's crop of it, then the occluder, the lighting and a sensor-noise field.
    """
    width, height = size
    s, (ch, cw), crops = camera(vrng, variety, width, height, scene.floor_y, n_frames, fps)
    background = backdrop(vrng, variety, ch, cw, scene.floor_y * s, s)
    gain, offset = lighting(variety, height, width)
    if variety["noise"] > 0:        # a few fields of sensor noise, the lighting offset folded in
        offset = offset + vrng.normal(0, variety["noise"], (NOISE_FIELDS, height, width, 1)).astype(np.float32)
    compose = _composer(rng, scene, events, background, s, variety, fps)
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
    return frames
