"""Looks: families of appearance settings, and what a clip's drawn settings make of the picture.

A look (LOOK_FAMILIES) is a family of walls, floors, object names, palettes, light and camera
ranges; every clip draws its own settings from its look (`draw_variety`, a JSON-serialisable dict
that dataset.json records) on a random stream of its own, so a look changes how a clip appears,
never when it sounds (docs/learning.md: a head trained on one renderer's look learns the look, not the
event; so the look varies, and a held-out look tests it). Owns the static picture those settings
give: the wall and floor behind the scene (textures, gradients, scikit-image's bundled photos),
the camera's zoom / framing / shake and the lighting. Must not touch the physics stream, the
bodies or the sound.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.errors import FoleyError
from pipeline.synthetic.objects import BALLS, BOXES, pick
from pipeline.synthetic.physics import SCENE_H
from pipeline.synthetic.raster import fill_rect, smooth_noise

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
BLUR_EXPOSURE = (0.3, 0.8)  # x the frame interval
LOOK_STREAM = 1             # the look's random stream: [clip seed, LOOK_STREAM]
DISTRACTORS = ("hand", "roller", "swing")   # silent motion: never an event, never a sound
BACKDROP_SPECKLE = 2.5      # static per-pixel grain of wall and floor (0..255 levels)


def family(look):
    """The settings family of a look; an unknown name is a FoleyError listing LOOKS."""
    if look not in LOOK_FAMILIES:
        raise FoleyError(f"unknown look {look!r}: expected one of {', '.join(LOOKS)}")
    return LOOK_FAMILIES[look]


def look_code(look):
    """A look's number: its index in LOOKS (stable: new looks are appended)."""
    family(look)
    return LOOKS.index(look)


def draw_variety(rng, look):
    """Every appearance setting of one clip, drawn from its look's family: a JSON-serialisable dict.

    Units: zoom x the frame, pan x the frame width, floor_at x the frame height (where the table edge
    sits), shake px at 240 px height, blur x the frame interval (0 = sharp), noise (0..255 levels).
    """
    fam = family(look)

    def u(bounds):      # a uniform draw, rounded so dataset.json stays readable
        return round(float(rng.uniform(*bounds)), 3)

    tint = 1 + rng.uniform(-fam["tint"], fam["tint"], 3)
    v = {
        "look": look, "wall": pick(rng, fam["walls"]), "floor": pick(rng, fam["floors"]),
        "palette": pick(rng, fam["palettes"]), "object_scale": u(fam["scale"]),
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
        name = pick(rng, files)
        if v[part] == "photo":
            v[part], v[f"{part}_photo"] = ("photo", name) if photo_file(name) is not None else (fallback, None)
    if rng.random() < fam["occluder_p"]:
        side = 1 if rng.random() < 0.5 else -1
        v["occluder"] = {"kind": pick(rng, ("post", "mug", "glass")),
                         "x": round(0.5 + side * float(rng.uniform(0.22, 0.45)), 3),
                         "width": u((0.06, 0.16)), "top": u((0.0, 0.55)),
                         "colour": [round(float(c), 1) for c in np.clip(rng.uniform(20, 220) + rng.normal(0, 30, 3), 0, 255)]}
    if rng.random() < fam["distractor_p"]:
        v["distractor"] = {"kind": pick(rng, DISTRACTORS), "t0": u((0.0, 2.5)), "seconds": u((1.0, 2.5)),
                           "x": u((0.2, 0.8)), "y": u((0.2, 0.6)), "size": u((0.6, 1.1)),
                           "direction": 1 if rng.random() < 0.5 else -1}
    return v


def camera(rng, variety, width, height, floor_y, n_frames, fps):
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


def lighting(variety, height, width):
    """Per-pixel gain A and offset B [H, W, 3] float32: a frame is lit as frame * A + B."""
    li = variety["light"]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = li["centre"]
    r2 = ((xx / width - 0.5 - cx) ** 2 + (yy / height - 0.5 - cy) ** 2) / 0.5
    gain = li["brightness"] * np.clip(1 - li["vignette"] * r2, 0.15, None)[..., None] * np.asarray(li["tint"], np.float32)
    c = li["contrast"]
    return (c * gain).astype(np.float32), (128 * (1 - c) * gain).astype(np.float32)



# --- The static picture: wall, floor, photographs ---------------------------------------------
@lru_cache(maxsize=16)
def photo_file(name):
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

    src = photo_file(name)
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


def wall(rng, kind, height, width, s, photo=None):
    """The wall behind the scene, [height, width, 3] float32 (0..255 before clipping). s: px per scene
    unit; photo: the file for kind "photo" (None: drawn here)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "photo":
        img = _photo(rng, photo or pick(rng, PHOTO_WALLS), height, width)
        if img is not None:
            return img
        kind = "brick"      # scikit-image not installed: the look keeps a procedural wall of its own
    img = np.empty((height, width, 3), np.float32)
    img[:] = rng.uniform(90, 210) + rng.normal(0, 25, 3)
    img += smooth_noise(rng, height, width, int(rng.integers(3, 8)), int(rng.integers(4, 10)), rng.uniform(5, 18))
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
            fill_rect(img, x0, y0, x0 + w, y0 + h, col * 0.6)
            fill_rect(img, x0 + 3 * s, y0 + 3 * s, x0 + w - 3 * s, y0 + h - 3 * s, col)
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


def floor(rng, kind, img, fy, s, photo=None):
    """Paint the table / floor below pixel row fy of img [H, W, 3] in place (photo: as in wall)."""
    height, width = img.shape[:2]
    if fy >= height:
        return
    part = img[fy:]
    yy, xx = np.mgrid[fy:height, 0:width].astype(np.float32)
    if kind == "photo":
        picture = _photo(rng, photo or pick(rng, PHOTO_FLOORS), height - fy, width)
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
        part += smooth_noise(rng, height - fy, width, 3, 6, rng.uniform(5, 15))
    part[:max(1, height // 120)] *= 0.7   # the table edge


def backdrop(rng, variety, height, width, floor_px, s):
    """Wall + floor (+ static speckle), the same every frame: [height, width, 3] float32."""
    img = wall(rng, variety["wall"], height, width, s, variety.get("wall_photo"))
    floor(rng, variety["floor"], img, int(round(floor_px)), s, variety.get("floor_photo"))
    img += rng.normal(0, BACKDROP_SPECKLE, (height, width, 1)).astype(np.float32)   # static speckle
    return np.clip(img, 0, 255)

