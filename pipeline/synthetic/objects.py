"""The things in a scene: names, how each is drawn, proportions and colours by palette.

Owns the object vocabulary the looks draw from (BALLS, BOXES, VISUALS, ASPECT), the colours
(PALETTE, SKIN and the palettes' transforms) and `make_object`, which the scene builders call
for every movable object. Must not place, move or draw anything.
"""
from __future__ import annotations

import numpy as np

BALLS = ["a ball", "a tennis ball", "an orange", "an apple", "a ping pong ball", "a rubber ball", "a plum"]
BOXES = ["a book", "a box", "a wooden block", "a phone", "a remote control", "a wallet", "a toy car"]
PALETTE = np.array([
    [220, 40, 40], [40, 150, 60], [40, 80, 210], [235, 200, 30], [230, 120, 20], [150, 50, 180],
    [20, 170, 180], [240, 240, 240], [30, 30, 30], [200, 60, 140], [120, 200, 60], [140, 90, 50],
], dtype=np.float32)
SKIN = np.array([[224, 172, 105], [198, 134, 66], [141, 85, 36], [255, 219, 172], [241, 194, 125]], np.float32)
# Object names per look (looks.LOOK_FAMILIES); the name also picks how the object is drawn.
VISUALS = {
    "a ball": "ball", "a rubber ball": "ball", "a ping pong ball": "ball", "a tennis ball": "striped",
    "a beach ball": "striped", "an orange": "fruit", "an apple": "fruit", "a plum": "fruit",
    "a lemon": "egg", "an egg": "egg", "a potato": "egg",
    "a book": "book", "a box": "box", "a wooden block": "box", "a phone": "box", "a remote control": "box",
    "a wallet": "box", "a toy car": "box", "a can": "can", "a bottle": "bottle", "a jar": "can",
    "a crate": "crate", "a brick": "box", "a carton": "crate",
}
ASPECT = {"bottle": (0.55, 1.7), "can": (0.75, 1.35), "book": (1.25, 0.6)}  # (hx, hy) factors of a box


def pick(rng, options):
    """One of options, as a str (one integer draw)."""
    return str(options[int(rng.integers(len(options)))])


def colour(rng, scene=None):
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


def make_object(rng, scene, kind=None, big=False):
    """A random movable object of the clip's look: (name, shape, hx, hy, colour, restitution).
    The name picks how it is drawn (VISUALS) and its proportions (a bottle is tall, a book flat)."""
    kind = kind or ("ball" if rng.random() < 0.5 else "box")
    scale = (1.25 if big else 1.0) * scene.variety["object_scale"]
    if kind == "ball":
        r = rng.uniform(10, 20) * scale
        return pick(rng, scene.family["balls"]), "ball", r, r, colour(rng, scene), rng.uniform(0.45, 0.7)
    name = pick(rng, scene.family["boxes"])
    fx, fy = ASPECT.get(VISUALS.get(name, "box"), (1.0, 1.0))
    return (name, "box", rng.uniform(11, 24) * scale * fx, rng.uniform(8, 16) * scale * fy,
            colour(rng, scene), rng.uniform(0.15, 0.35))
