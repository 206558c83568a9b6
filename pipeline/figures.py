"""What export draws: a PNG per shown clip (target vs prediction over time) and GIF renders of the
clip's frames with both curves and a moving cursor.

shown = select_clips(N, plots)                                   # a seeded sample, in cache order
cards = plot_cards(OUT / "plots", scores, shown)                 # plots/{id}.png, one card per clip
rendered = render_cards(OUT / "renders", cards, scores, cache, videos, count)   # renders/{id}.gif

Onsets are marked with `pipeline.metrics.onsets`, the same peak picker the metrics use, so what a
figure shows is what was scored. A cache without targets gets the prediction alone. Renders decode the clip's frames again with `pipeline.media.load_clip`
(the frame picking the model saw), from --videos or else the videos folder the cache's config records
under manifest.videos (extract-features writes it).

This module owns the figures and where their frames come from. It computes no metric (it is handed
`pipeline.score.Scores`) and writes no table (`pipeline.report`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from pipeline.errors import FoleyError
from pipeline.fsio import atomic_write
from pipeline.metrics import onsets

log = logging.getLogger("foleycache")

SELECTION_SEED = 0          # which clips get plots: a seeded random sample, like the seed's random 100

# --- plots (matplotlib Agg, small PNGs) --------------------------------------------------------
PLOT_SIZE_IN = (6.4, 2.2)
PLOT_DPI = 80                 # 512 x 176 px: readable, ~15-25 KB per PNG
TARGET_COLOUR = "#222222"
PRED_COLOUR = "#e4572e"
PAD_COLOUR = "#d9d9d9"

# --- GIF renders --------------------------------------------------------------------------------
RENDER_SIZE = 192             # video frame side in the GIF (px)
STRIP_HEIGHT = 72             # curve strip under the frame (px)
STRIP_MARGIN = 6              # px above/below the curves inside the strip
RGB = {"target": (40, 40, 40), "pred": (228, 87, 46), "pad": (217, 217, 217), "bg": (255, 255, 255),
       "cursor": (30, 110, 220), "grid": (235, 235, 235)}


def select_clips(n: int, plots: int | str, seed: int = SELECTION_SEED) -> np.ndarray:
    """Indices of the clips to plot: all, or a seeded random sample of `plots`, in cache order."""
    if plots == "all" or int(plots) >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=int(plots), replace=False))


# ----------------------------------------------------------------------------- per-clip plot

def plot_clip(path: str | Path, target: np.ndarray | None, pred: np.ndarray, length: int, fps: float,
              title: str = "", peak_params: dict | None = None) -> Path:
    """Write a PNG of one clip: target and prediction over time (s), onsets marked, padding shaded.

    target, pred: [T] in [0, 1] (target None: a clip without one, the prediction alone);
    length: real frames (frames >= length are padding, shaded grey);
    fps: clip frame rate (x axis in seconds). Onsets: `metrics.onsets` on the valid frames.
    """
    from matplotlib.figure import Figure     # OO API: no pyplot state, no GUI backend needed

    path = Path(path)
    n = len(pred)
    t_all = np.arange(n) / fps
    fig = Figure(figsize=PLOT_SIZE_IN, dpi=PLOT_DPI)
    ax = fig.add_axes((0.07, 0.2, 0.91, 0.66))
    if length < n:
        ax.axvspan(length / fps - 0.5 / fps, (n - 0.5) / fps, color=PAD_COLOUR, alpha=0.6, lw=0, label="padding")
    curves = [(pred, PRED_COLOUR, "^", "prediction")]
    if target is not None:
        curves.insert(0, (target, TARGET_COLOUR, "v", "target (audio)"))
    for curve, colour, marker, label in curves:
        ax.plot(t_all[:length], curve[:length], color=colour, lw=1.6, label=label)
        frames, heights = onsets(np.asarray(curve[:length], np.float64), peak_params)
        ax.plot(frames / fps, heights, linestyle="none", marker=marker, ms=6, color=colour,
                markeredgecolor="white", markeredgewidth=0.5)
    ax.set_xlim(-0.5 / fps, (n - 0.5) / fps)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("time (s)", fontsize=8, labelpad=1)
    ax.tick_params(labelsize=7, length=2)
    ax.grid(alpha=0.25, lw=0.5)
    ax.legend(loc="upper right", fontsize=6.5, frameon=False, ncol=3)
    if title:
        ax.set_title(title, fontsize=8, loc="left")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path


def plot_cards(folder: Path, scores, shown: np.ndarray, progress: bool = False) -> list[dict]:
    """A plot per shown clip in `folder` ({id}.png); returns the report's cards: id, label,
    seed_category, pearson, peak_error, plot (path), render (None until `render_cards`)."""
    ids, clip, cards = scores.ids, scores.clip, []
    for i in tqdm(shown, desc="plots", unit="plot", disable=not progress, leave=False):
        card = {"id": ids[i], "label": scores.labels[i], "plot": None, "render": None, "index": int(i)}
        title = f"{ids[i]} · {scores.labels[i]}"
        if scores.target is not None:
            card.update(seed_category=str(clip["seed_category"][i]), pearson=float(clip["pearson"][i]),
                        peak_error=int(clip["peak_error"][i]))
            title += f" · {card['seed_category'].replace('_', ' ')} · r {card['pearson']:.2f}"
        target = None if scores.target is None else scores.target[i]
        card["plot"] = plot_clip(folder / f"{ids[i]}.png", target, scores.pred[i], int(scores.length[i]),
                                 scores.fps, title)
        cards.append(card)
    return cards


# ----------------------------------------------------------------------------- GIF render

def _curve_points(curve: np.ndarray, length: int, x_of, y0: int, y1: int) -> list[tuple[float, float]]:
    return [(x_of(i), y1 - float(np.clip(curve[i], 0, 1)) * (y1 - y0)) for i in range(length)]


def _curve_strip(width: int, target: np.ndarray | None, pred: np.ndarray, length: int, step: float,
                 peak_params: dict | None) -> np.ndarray:
    """uint8 [STRIP_HEIGHT, width, 3]: both curves (the prediction alone where target is None) with
    their onsets circled, padding shaded."""
    def x_of(i):
        return i * step

    strip = Image.new("RGB", (width, STRIP_HEIGHT), RGB["bg"])
    draw = ImageDraw.Draw(strip)
    y0, y1 = STRIP_MARGIN, STRIP_HEIGHT - STRIP_MARGIN
    if length < len(pred):
        draw.rectangle([x_of(length) - step / 2, 0, width, STRIP_HEIGHT], fill=RGB["pad"])
    for y in (y0, (y0 + y1) / 2, y1):
        draw.line([(0, y), (width, y)], fill=RGB["grid"])
    for name, curve in (("target", target), ("pred", pred)):
        if curve is None:
            continue
        pts = _curve_points(curve, length, x_of, y0, y1)
        if len(pts) > 1:
            draw.line(pts, fill=RGB[name], width=2)
        for f in onsets(np.asarray(curve[:length], np.float64), peak_params)[0]:
            x, y = pts[int(f)]
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], outline=RGB[name], width=1)
    if target is not None:
        draw.text((3, 1), "target", fill=RGB["target"])
    draw.text((45 if target is not None else 3, 1), "prediction", fill=RGB["pred"])
    return np.asarray(strip)


def render_gif(path: str | Path, frames: np.ndarray, target: np.ndarray | None, pred: np.ndarray, length: int,
               fps: float, peak_params: dict | None = None) -> Path:
    """Write a GIF: the clip's frames with target and prediction drawn under them and a moving cursor.

    frames: uint8 [T, H, W, 3] (T = len(pred); frames past `length` are the repeated last frame);
    target, pred: [T] in [0, 1] (target None: the prediction alone). One GIF frame per clip frame,
    each shown 1/fps s (GIF timing is in 1/100 s, so 12 fps plays at 1/0.08 = 12.5 fps). The strip
    is drawn once; each frame only copies it and draws the cursor (drawing the curves again per
    frame would repeat the same work T times).
    """
    path = Path(path)
    n = len(pred)
    if frames.shape[0] != n:
        raise ValueError(f"frames [{frames.shape[0]}, ...] and pred [{n}] disagree on T")
    width, height = frames.shape[2], frames.shape[1]
    step = (width - 1) / max(n - 1, 1)
    strip = _curve_strip(width, target, pred, length, step, peak_params)
    images = []
    for i in range(n):
        canvas = np.concatenate([frames[i], strip], axis=0)
        x = int(round(i * step))
        canvas[height:, max(0, x - 1):x + 1] = RGB["cursor"]     # the cursor in the strip
        canvas[height - 3:height, :x + 1] = RGB["cursor"]        # progress bar on the frame
        images.append(Image.fromarray(canvas))
    path.parent.mkdir(parents=True, exist_ok=True)
    # one shared palette, from a montage of five frames across the clip: colours stay stable from
    # frame to frame (no flicker) and encoding is one quantize per frame against a fixed palette
    montage = np.concatenate([np.asarray(images[i]) for i in np.linspace(0, n - 1, 5).astype(int)], axis=0)
    palette = Image.fromarray(montage).quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    gif = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    atomic_write(path, lambda tmp: gif[0].save(tmp, format="GIF", save_all=True, append_images=gif[1:],
                                               duration=int(round(1000 / fps)), loop=0, optimize=False,
                                               disposal=1))
    return path


# ----------------------------------------------------------------------------- the frames of a render

def videos_for_renders(videos: Path | None, cache) -> Path:
    """Where renders decode frames from: `videos`, else the folder the cache's manifest records."""
    if videos is not None:
        return Path(videos)
    recorded = (cache.config.get("manifest") or {}).get("videos")
    if not recorded:
        raise FoleyError("--render needs the videos: pass --videos DIR (the cache does not record them)")
    if not Path(recorded).is_dir():
        raise FoleyError(f"--render needs the videos: the cache's videos folder {recorded} is gone; pass --videos DIR")
    return Path(recorded)


def _render_frames(videos: Path, clip, frames: int, fps: float) -> np.ndarray:
    """uint8 [T, S, S, 3] frames of a clip (a pipeline.data.Annotation) for a GIF (same frame picking
    as the model saw)."""
    from pipeline.data import find_video
    from pipeline.media import load_clip

    clip = load_clip(find_video(videos, clip), frames=frames, fps=fps, size=RENDER_SIZE, normalize=False,
                     start=clip.start, audio=False)     # a render shows frames only: silent videos render too
    return np.clip(clip.frames.permute(1, 2, 3, 0).numpy(), 0, 255).round().astype(np.uint8)


def render_cards(folder: Path, cards: list[dict], scores, cache, videos: Path | None, count: int,
                 progress: bool = False) -> list[str]:
    """GIFs ({id}.gif in `folder`) for the first `count` cards; sets each card's `render`.
    A clip whose video cannot be decoded is skipped with a warning. Returns the GIF paths."""
    from pipeline.data import clip_of_id
    from pipeline.media import FaultyVideo
    from pipeline.timeline import recorded_clips

    source = videos_for_renders(videos, cache)
    clips = recorded_clips(cache, source)
    rendered = []
    for card in tqdm(cards[:count], desc="renders", unit="gif", disable=not progress, leave=False):
        i, clip_id = card["index"], card["id"]
        try:
            frames = _render_frames(source, clips.get(clip_id) or clip_of_id(clip_id), cache.frames, scores.fps)
        except FaultyVideo as e:
            log.warning("render of %s skipped: %s", clip_id, e)
            continue
        target = None if scores.target is None else scores.target[i]
        card["render"] = render_gif(folder / f"{clip_id}.gif", frames, target, scores.pred[i],
                                    int(scores.length[i]), scores.fps)
        rendered.append(str(card["render"]))
    return rendered
