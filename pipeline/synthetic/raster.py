"""Raster primitives: soft-edged shapes and smooth noise on float32 images.

Owns how a shape becomes pixels: images are float32 [H, W, 3] in 0..255 (clipped only when a
frame is finished), edges are soft over 1 pixel so sub-pixel motion shows, and every shape is
blended in place with a coverage x alpha weight. Coordinates here are pixels, not scene units.
Must not know about scenes, looks or time: callers scale by their px-per-scene-unit `s`.
"""
from __future__ import annotations

import math

import numpy as np

ARM_LENGTH = 400            # scene units: an arm always leaves the frame


def fill_ellipse(img, cx, cy, rx, ry, colour, alpha=1.0):
    """Blend an axis-aligned ellipse (centre, radii in px) into img [H, W, 3] in place."""
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


def fill_rect(img, x0, y0, x1, y1, colour, alpha=1.0):
    """Blend the rectangle [x0, x1) x [y0, y1) (px, fractional edges soft) into img [H, W, 3] in place."""
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


def fill_capsule(img, x0, y0, x1, y1, r, colour):
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


def draw_hand(img, x, y, s, colour, arm_to=(0.0, -1.0)):
    """A hand at (x, y) (scene units, s px each) with an arm leaving the frame along arm_to (unit vector)."""
    ax, ay = arm_to
    fill_capsule(img, x * s, y * s, (x + ax * ARM_LENGTH) * s, (y + ay * ARM_LENGTH) * s, 7 * s, colour * 0.92)
    fill_ellipse(img, x * s, y * s, 11 * s, 9 * s, colour)


def _interp_matrix(n_out, n_in):
    """Linear interpolation from n_in cells to n_out pixels (cell centres aligned): [n_out, n_in]."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), i0] += 1 - (pos - i0)
    m[np.arange(n_out), i1] += pos - i0
    return m


def smooth_noise(rng, height, width, cells_y, cells_x, amp):
    """Low-frequency colour noise: [height, width, 3] float32, about N(0, amp)."""
    grid = rng.standard_normal((cells_y, cells_x, 3)).astype(np.float32) * amp
    rows = np.tensordot(_interp_matrix(height, cells_y), grid, axes=(1, 0))          # [H, cx, 3]
    return np.einsum("hjc,wj->hwc", rows, _interp_matrix(width, cells_x), optimize=True)
