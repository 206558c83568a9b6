"""The scene builders: one per template, placing objects, hands and scenery in a Scene.

Owns the templates (TEMPLATES_12 from pipeline.data, OTHER_TEMPLATES), the props' names (stacks,
containers, occluders, surfaces, walls, tools) and each template's script: where
things start, how they are thrown, pushed or dropped so that the first impact falls at a drawn
time, and the hands and static scenery that go with them (as decor drawn later). A builder draws
from the clip's physics stream only, in a fixed order: that order is part of every seed's dataset,
so a change to it changes the data. Must not simulate, render frames or make sounds.
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.data import SOUND12
from pipeline.synthetic.objects import SKIN, colour, make_object
from pipeline.synthetic.physics import SIM_DT, SQUASH_TAU_S, V_REF, Body
from pipeline.synthetic.raster import draw_hand, fill_ellipse, fill_rect

TEMPLATES_12 = list(SOUND12)     # the seed's 12 sound templates (pipeline.data owns the list)
# Templates without a distinct sound: a few clips use them so that the class filter has work to do.
OTHER_TEMPLATES = [
    "Pushing [something] from left to right",
    "Lifting [something] up completely without letting it drop down",
]
LATE_FIRST_IMPACT_P = 0.05  # long clips whose first impact falls after the window (as in real data)
MIN_RELEASE_S = 0.15        # a held object is shown held for at least this long

# --- Props (the movable objects come from pipeline.synthetic.objects) --------------------------
STACKS = ["blocks", "books", "boxes", "coasters", "cassettes"]
CONTAINERS = ["a bowl", "a cup", "a box", "a basket", "a pot", "a bucket"]
OCCLUDERS = ["a box", "a pillow", "a laptop", "a bag", "a folder"]
SURFACES = ["a table", "a book", "a plate", "a box", "a chair"]
WALLS = ["a wall", "a door", "a cupboard", "a fridge"]
TOOLS = ["a spoon", "a stick", "a pen", "a ruler", "a hammer"]
BACKDROPS = ["a bottle", "a vase", "a lamp", "a mug", "a jar"]


# --- Hands and scenery -------------------------------------------------------------------------
def _scenery_colour(rng, lo, hi, spread):
    """A colour for scenery (walls, tables, containers): U(lo, hi) grey + N(0, spread) per channel."""
    return np.clip(rng.uniform(lo, hi) + rng.normal(0, spread, 3), 0, 255).astype(np.float32)


def _skin(rng):
    return SKIN[rng.integers(len(SKIN))]


def _side(rng):
    """+1 or -1 (one uniform draw): which way a scene faces."""
    return 1 if rng.random() < 0.5 else -1


def _first_impact_time(rng, duration):
    """When the first sound should happen: mostly early, within the window the model sees."""
    if duration > 4.8 and rng.random() < LATE_FIRST_IMPACT_P:
        return rng.uniform(4.1, duration - 0.5)
    return rng.uniform(0.5, min(3.2, duration - 0.6))


def _on_floor(scene, obj, x, *, release=0.0, vx=0.0, mass=1.0, e=0.5, decel=None):
    """A body of obj (make_object's tuple; its restitution is not used) resting on the floor at x."""
    name, shape, hx, hy, col, _ = obj
    return scene.add(Body(name, shape, x, scene.floor_y - hy, hx, hy, col, mass=mass, release=release, vx=vx,
                          e=e, decel=decel), [scene.floor()])


def _held_hand(scene, body, col, away=(0.0, -160.0)):
    """A hand holding `body` from above until its release, then drifting away at `away` px/s."""
    def draw(img, t, s):
        k = min(int(round(min(t, body.release) / SIM_DT)), len(body.track) - 1)
        x, y = body.track[k]
        y -= body.hy + 5
        if t > body.release:
            dt = t - body.release
            x, y = x + away[0] * dt, y + away[1] * dt
        draw_hand(img, x, y, s, col)
    scene.decor.append((3, draw))


def _attached_hand(scene, body, col, dx, dy, arm_to):
    """A hand that moves with `body`, at (dx, dy) from its centre, arm along arm_to."""
    def draw(img, t, s):
        k = min(int(round(t / SIM_DT)), len(body.track) - 1)
        x, y = body.track[k]
        draw_hand(img, x + dx, y + dy, s, col, arm_to)
    scene.decor.append((3, draw))


def _static_box(scene, box, col, layer=0, jolt_from=None):
    """Draw a static box; with jolt_from (a body), it shakes down briefly on that body's impacts."""
    x0, y0, x1, y1 = box

    def draw(img, t, s):
        off = 0.0
        if jolt_from is not None:
            for te, speed, _, _ in jolt_from.impacts:
                if te <= t < te + 0.3:
                    off += 3.0 * min(speed / V_REF, 1.2) * math.exp(-(t - te) / SQUASH_TAU_S)
        fill_rect(img, x0 * s, (y0 + off) * s, x1 * s, (y1 + off) * s, col * 0.7)
        fill_rect(img, (x0 + 2) * s, (y0 + 2 + off) * s, (x1 - 2) * s, (y1 - 1 + off) * s, col)
    draw.static = jolt_from is None     # the same every frame: the frames stage paints it into the backdrop
    scene.decor.append((layer, draw))


def _drop(rng, scene, duration, obj, top, *, height=None, x=None, around=None, depth=0.0, e_scale=1.0, vx_sd=0.0):
    """A held object released h ~ U(height) px above `top` so that it lands, `depth` px below top, at
    the clip's first impact time; a hand holds it until then. Returns the body (not yet added: the
    caller gives it its colliders).

    obj: make_object's tuple. height: (lo, hi); None = 45 px up to what fits above top (<= 130).
    Where it is released: x (drawn by the caller, before this), or around = (centre, fraction, half):
    centre + U(-fraction, fraction) * half, drawn after the timing. vx_sd: sideways drift at release
    (px/s, normal), 0 = none. Every draw here keeps its place in the clip's stream.
    """
    name, shape, hx, hy, col, e = obj
    if height is None:
        height = (45, max(50.0, min(130.0, top - 2 * hy - 12)))
    h = rng.uniform(*height)
    t_first = _first_impact_time(rng, duration)
    fall = math.sqrt(2 * (h + depth) / scene.g)
    if around is not None:
        centre, fraction, half = around
        x = centre + rng.uniform(-fraction, fraction) * half
    body = Body(name, shape, x, top - hy - h, hx, hy, col, release=max(MIN_RELEASE_S, t_first - fall),
                e=e * e_scale, vx=rng.normal(0, vx_sd) if vx_sd else 0.0)
    _held_hand(scene, body, _skin(rng))
    return body


def _approach(rng, duration, xc, gap_a, gap_b, va, vb, decel):
    """Start positions of two bodies rolling/sliding at va, vb (decelerating) to meet at xc."""
    t_first = _first_impact_time(rng, duration)
    t0 = rng.uniform(0.0, 0.3)
    tau = t_first - t0
    da = va * tau - 0.5 * decel * tau * tau
    db = vb * tau - 0.5 * decel * tau * tau
    return xc - gap_a - da, xc + gap_b + db, t0


# --- One builder per template (scene coordinates; F: the table's top) --------------------------
def _scene_hitting(rng, scene, duration):
    target_obj = make_object(rng, scene, "box")
    tname, _, thx, thy, _, _ = target_obj
    F = scene.floor_y
    d = _side(rng)
    xc = scene.w / 2 + d * rng.uniform(-20, 50)
    target = _on_floor(scene, target_obj, xc, e=0.1, decel=rng.uniform(1500, 2500))
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

    tool = scene.add(Body(tool_name, "box", x_start, y_tool, thx_tool, thy_tool, tool_col, control=control))
    tool.state, tool.on_contact = phases, on_contact
    scene.pairs.append((tool, target, 0.15, False))
    _attached_hand(scene, tool, _skin(rng), -d * thx_tool, 0.0, (-d * 0.7, -0.7))
    scene.placeholders = [tname, tool_name]


def _scene_throw_against(rng, scene, duration):
    F = scene.floor_y
    name, shape, hx, hy, col, e = make_object(rng, scene, "ball" if rng.random() < 0.7 else "box")
    d = _side(rng)
    face = scene.w / 2 + d * rng.uniform(50, 100)   # inside the centre crop the model sees
    top = rng.uniform(-10, 40)   # above anything thrown: the ball never lands on top of it
    wall = (face, top, face + 4000, F) if d > 0 else (face - 4000, top, face, F)
    wall_name = str(rng.choice(WALLS))
    _static_box(scene, wall, _scenery_colour(rng, 80, 200, 20))
    dist = rng.uniform(110, 180)
    x0 = face - d * dist
    y0 = F - rng.uniform(50, 130)
    vx, vy = d * rng.uniform(350, 650), -rng.uniform(0, 200)
    t_first = _first_impact_time(rng, duration)
    body = scene.add(Body(name, shape, x0, y0, hx, hy, col, release=max(MIN_RELEASE_S, t_first - dist / abs(vx)),
                          vx=vx, vy=vy, e=e), [scene.floor(), wall])
    _held_hand(scene, body, _skin(rng), away=(vx * 0.15, -60.0))
    scene.placeholders = [name, wall_name]


def _scene_throw_onto(rng, scene, duration):
    F = scene.floor_y
    name, shape, hx, hy, col, e = make_object(rng, scene)
    d = _side(rng)
    x0 = scene.w / 2 - d * rng.uniform(60, 120)   # lands near the middle: the model sees a centre crop
    y0 = F - rng.uniform(70, 140)
    vx, vy = d * rng.uniform(100, 250), -rng.uniform(50, 300)
    h = F - hy - y0
    flight = (vy + math.sqrt(vy * vy + 2 * scene.g * h)) / scene.g
    t_first = _first_impact_time(rng, duration)
    body = scene.add(Body(name, shape, x0, y0, hx, hy, col, release=max(MIN_RELEASE_S, t_first - flight),
                          vx=vx, vy=vy, e=e), [scene.floor()])
    _held_hand(scene, body, _skin(rng), away=(vx * 0.15, -60.0))
    scene.placeholders = [name]


def _scene_drop_onto(rng, scene, duration):
    F = scene.floor_y
    surf = str(rng.choice(SURFACES))
    pw, ph = rng.uniform(60, 120), rng.uniform(15, 60)
    xc = scene.w / 2 + rng.uniform(-70, 70)
    top = F - ph
    slab = (xc - pw / 2, top, xc + pw / 2, top + min(ph, 10.0) if surf in ("a table", "a chair") else F)
    col = _scenery_colour(rng, 60, 200, 25)
    if surf in ("a table", "a chair"):  # legs under a slab
        for lx in (xc - pw / 2 + 3, xc + pw / 2 - 9):
            _static_box(scene, (lx, slab[3], lx + 6, F), col * 0.8)
    _static_box(scene, slab, col)
    obj = make_object(rng, scene)
    body = _drop(rng, scene, duration, obj, top, x=rng.uniform(xc - pw * 0.35, xc + pw * 0.35), vx_sd=20.0)
    scene.add(body, [slab, scene.floor()])
    scene.placeholders = [body.name, surf]


def _scene_drop_into(rng, scene, duration):
    F = scene.floor_y
    cname = str(rng.choice(CONTAINERS))
    obj = make_object(rng, scene)
    _, _, hx, hy, _, _ = obj
    cw, ch, tw = rng.uniform(2 * hx + 14, 2 * hx + 40), rng.uniform(max(35, 2 * hy + 8), 75), 5.0
    xc = scene.w / 2 + rng.uniform(-70, 70)
    left = (xc - cw / 2 - tw, F - ch, xc - cw / 2, F)
    right = (xc + cw / 2, F - ch, xc + cw / 2 + tw, F)
    outer = (left[0], F - ch, right[2], F)
    ccol = _scenery_colour(rng, 60, 200, 30)
    # The inside (seen over the rim) behind the object, the front wall in front of it.
    scene.decor.append((0, lambda img, t, s: fill_ellipse(
        img, xc * s, (F - ch) * s, (cw / 2 + tw) * s, 5 * s, ccol * 0.45)))
    body = _drop(rng, scene, duration, obj, F - ch, height=(40, 110), depth=ch, around=(xc, 0.2, cw / 2 - hx),
                 e_scale=0.6, vx_sd=10.0)
    scene.add(body, [scene.floor(), left, right])
    _static_box(scene, outer, ccol, layer=2, jolt_from=body)
    scene.occluders.append(outer)
    scene.placeholders = [obj[0], cname]


def _scene_drop_behind(rng, scene, duration):
    F = scene.floor_y
    oname = str(rng.choice(OCCLUDERS))
    obj = make_object(rng, scene)
    _, _, hx, hy, _, _ = obj
    ow, oh = rng.uniform(70, 130), rng.uniform(max(50, 2 * hy + 15), 110)
    xc = scene.w / 2 + rng.uniform(-60, 60)
    occ = (xc - ow / 2, F - oh, xc + ow / 2, F)
    _static_box(scene, occ, _scenery_colour(rng, 50, 210, 30), layer=2)
    scene.occluders.append(occ)
    body = _drop(rng, scene, duration, obj, F - oh, height=(30, 90), depth=oh, around=(xc, 1, ow / 2 - hx - 6),
                 e_scale=0.6)
    scene.add(body, [scene.floor()])
    scene.placeholders = [obj[0], oname]


def _scene_drop_in_front(rng, scene, duration):
    F = scene.floor_y
    bname = str(rng.choice(BACKDROPS))
    bw, bh = rng.uniform(25, 60), rng.uniform(50, 120)
    xc = scene.w / 2 + rng.uniform(-60, 60)
    bcol = colour(rng, scene) * 0.8
    back_floor = F - rng.uniform(6, 14)  # further from the camera: stands higher in the picture
    _static_box(scene, (xc - bw / 2, back_floor - bh, xc + bw / 2, back_floor), bcol)
    scene.decor.append((0, lambda img, t, s: fill_ellipse(
        img, xc * s, (back_floor - bh) * s, bw / 2 * s, 4 * s, np.minimum(bcol + 40, 255))))
    obj = make_object(rng, scene)
    body = _drop(rng, scene, duration, obj, F, x=rng.uniform(xc - bw / 2 - 25, xc + bw / 2 + 25), vx_sd=20.0)
    scene.add(body, [scene.floor()])
    scene.placeholders = [body.name, bname]


def _scene_collide_deflect(rng, scene, duration):
    a_obj, b_obj = make_object(rng, scene, "ball"), make_object(rng, scene, "ball")
    ra, rb = a_obj[2], b_obj[2]
    va, vb = rng.uniform(200, 450), rng.uniform(200, 450)
    xc = scene.w / 2 + rng.uniform(-50, 50)
    decel = 50.0
    xa, xb, t0 = _approach(rng, duration, xc, ra, rb, va, vb, decel)
    e = rng.uniform(0.7, 0.9)
    a = _on_floor(scene, a_obj, xa, mass=ra * ra, release=t0, vx=va, decel=decel)
    b = _on_floor(scene, b_obj, xb, mass=rb * rb, release=t0, vx=-vb, decel=decel)
    scene.pairs.append((a, b, e, False))
    scene.placeholders = [a.name, b.name]


def _scene_deflected_from(rng, scene, duration):
    F = scene.floor_y
    a_name, _, ahx, ahy, ca, _ = make_object(rng, scene, "ball")
    b_obj = make_object(rng, scene, "box", big=True)
    d = _side(rng)
    xb = scene.w / 2 + d * rng.uniform(20, 80)
    b = _on_floor(scene, b_obj, xb, mass=8.0, e=0.1, decel=3000.0)
    e = rng.uniform(0.5, 0.8)
    t_first = _first_impact_time(rng, duration)
    face = xb - d * (b.hx + ahx)
    if rng.random() < 0.6:  # rolls into it
        v = rng.uniform(250, 500)
        t0 = rng.uniform(0.0, 0.3)
        tau = t_first - t0
        x0 = face - d * (v * tau - 0.5 * 60.0 * tau * tau)
        a = Body(a_name, "ball", x0, F - ahy, ahx, ahy, ca, release=t0, vx=d * v, e=0.5)
    else:  # thrown at its face, aimed at mid-height
        v = rng.uniform(350, 600)
        x0 = face - d * rng.uniform(100, 170)
        y0 = F - 2 * b.hy * rng.uniform(0.6, 1.0) - rng.uniform(20, 50)
        tb = abs(face - x0) / v
        vy = ((F - b.hy) - y0 - 0.5 * scene.g * tb * tb) / tb
        a = Body(a_name, "ball", x0, y0, ahx, ahy, ca, release=max(MIN_RELEASE_S, t_first - tb), vx=d * v, vy=vy,
                 e=0.5)
        _held_hand(scene, a, _skin(rng), away=(d * 50.0, -60.0))
    scene.add(a, [scene.floor()])
    scene.pairs.append((a, b, e, False))
    scene.placeholders = [a_name, b.name]


def _scene_collide_halt(rng, scene, duration):
    a_obj, b_obj = make_object(rng, scene, "box"), make_object(rng, scene, "box")
    va, vb = rng.uniform(250, 500), rng.uniform(250, 500)
    xc = scene.w / 2 + rng.uniform(-50, 50)
    t_first_guess = 3.2
    decel = min(rng.uniform(100, 250), 0.6 * min(va, vb) / t_first_guess)
    xa, xb, t0 = _approach(rng, duration, xc, a_obj[2], b_obj[2], va, vb, decel)
    a = _on_floor(scene, a_obj, xa, release=t0, vx=va, decel=decel, e=0.1)
    b = _on_floor(scene, b_obj, xb, release=t0, vx=-vb, decel=decel, e=0.1)

    def stop(me, t, other):  # both come to a halt: the contact kills the sliding at once
        for body in (me, other):
            body.vx, body.decel = 0.0, 5000.0
    a.on_contact = stop
    scene.pairs.append((a, b, 0.0, False))
    scene.placeholders = [a.name, b.name]


def _scene_stack(rng, scene, duration):
    F = scene.floor_y
    stack_name = str(rng.choice(STACKS))
    n = int(rng.integers(3, 6))
    hx, hy = rng.uniform(13, 22), rng.uniform(6, 11)
    d = _side(rng)
    xc = scene.w / 2 - d * rng.uniform(0, 50)   # the blocks fly towards the middle
    base_col = colour(rng, scene)
    bottom = (xc - hx, F - 2 * hy, xc + hx, F)
    _static_box(scene, bottom, base_col)
    v_poke = rng.uniform(120, 280)
    t_start = rng.uniform(0.1, 0.4)
    t_poke = rng.uniform(0.4, min(2.5, duration - 1.0))
    t_poke = max(t_poke, t_start + 0.2)
    blocks = []
    for i in range(1, n):
        col = np.clip(base_col + rng.normal(0, 35, 3), 0, 255).astype(np.float32)
        blk = Body(stack_name, "box", xc + rng.normal(0, 1.5), F - (2 * i + 1) * hy, hx, hy, col,
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

    skin = _skin(rng)
    finger = scene.add(Body("finger", "box", x_start, top.y, fhx, fhy, skin, control=control, layer=3))
    finger.on_contact = on_contact
    scene.pairs.append((finger, top, 0.0, True))  # a fingertip touch is not a sound
    _attached_hand(scene, finger, skin, -d * fhx, 0.0, (-d * 0.8, -0.6))
    scene.placeholders = [stack_name]


def _scene_move_collide(rng, scene, duration):
    F = scene.floor_y
    a_name, a_shape, ahx, ahy, ca, _ = make_object(rng, scene)
    b_name, b_shape, bhx, bhy, cb, _ = make_object(rng, scene)
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

    a = scene.add(Body(a_name, a_shape, xa, y, ahx, ahy, ca, control=make_control(va, 1)))
    b = scene.add(Body(b_name, b_shape, xb, y, bhx, bhy, cb, control=make_control(vb, -1)))
    for body in (a, b):
        body.state, body.on_contact = {"hits": 0}, on_contact
    scene.pairs.append((a, b, 0.0, False))
    _attached_hand(scene, a, _skin(rng), -ahx * 0.5, -ahy, (-0.5, -0.86))
    _attached_hand(scene, b, _skin(rng), bhx * 0.5, -bhy, (0.5, -0.86))
    scene.placeholders = [a_name, b_name]


def _scene_push(rng, scene, duration):
    F = scene.floor_y
    name, _, hx, hy, col, _ = make_object(rng, scene, "box")
    v = rng.uniform(50, 110)
    t0, t1 = rng.uniform(0.2, 0.8), duration - rng.uniform(0.2, 0.6)

    def control(b, t):
        b.vx, b.vy = (v if t0 <= t < t1 else 0.0), 0.0

    body = scene.add(Body(name, "box", scene.w / 2 - v * (t1 - t0) / 2, F - hy, hx, hy, col, control=control))
    _attached_hand(scene, body, _skin(rng), -hx - 6, 0.0, (-0.6, -0.8))
    scene.placeholders = [name]


def _scene_lift(rng, scene, duration):
    F = scene.floor_y
    name, shape, hx, hy, col, _ = make_object(rng, scene)
    v = rng.uniform(40, 90)
    t0 = rng.uniform(0.3, 1.0)
    t1 = min(duration - 0.2, t0 + rng.uniform(1.0, 2.0))

    def control(b, t):
        b.vx, b.vy = 0.0, (-v if t0 <= t < t1 else 0.0)

    body = scene.add(Body(name, shape, scene.w / 2 + rng.uniform(-60, 60), F - hy, hx, hy, col, control=control))
    _attached_hand(scene, body, _skin(rng), 0.0, -hy - 4, (0.0, -1.0))
    scene.placeholders = [name]


SCENES = dict(zip(TEMPLATES_12 + OTHER_TEMPLATES, [
    _scene_hitting, _scene_throw_against, _scene_throw_onto, _scene_drop_onto, _scene_drop_into,
    _scene_drop_behind, _scene_drop_in_front, _scene_collide_deflect, _scene_deflected_from,
    _scene_collide_halt, _scene_stack, _scene_move_collide, _scene_push, _scene_lift,
]))
