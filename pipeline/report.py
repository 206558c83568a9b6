"""What a researcher looks at: per-clip plots, GIF renders, report.md and a self-contained report.html.

Pure rendering: everything here takes arrays and dicts already computed by `pipeline.export`
(predictions, `pipeline.metrics.evaluate` blocks, `seed_table` rows) and writes files. Onsets are
marked with `pipeline.metrics.onsets`, the same peak picker the metrics use, so what a plot shows
is what was scored.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.metrics import onsets

# --- the metric table: (name, better direction) in the order a reader wants them ---------------
# "+" higher is better, "-" lower is better. seed_score and onset_f1 come first: the acceptance
# pair (DESIGN.md: the seed's own score, and onsets within ±1 frame ≈ ±83 ms).
METRIC_ROWS = [
    ("seed_score", "+"), ("onset_f1", "+"), ("onset_precision", "+"), ("onset_recall", "+"),
    ("onset_ap", "+"), ("onset_f1_tol2", "+"), ("onset_ap_tol2", "+"), ("onset_count_acc", "+"),
    ("pearson", "+"), ("peak_within_1", "+"), ("peak_error_frames", "-"), ("mae", "-"), ("bce", "-"),
]
HEADLINE = ("seed_score", "onset_f1")   # "beats the baselines" means on both of these
BASELINES = ("mean_envelope", "shuffled")

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


# ----------------------------------------------------------------------------- per-clip plot

def plot_clip(path: str | Path, target: np.ndarray, pred: np.ndarray, length: int, fps: float,
              title: str = "", peak_params: dict | None = None) -> Path:
    """Write a PNG of one clip: target and prediction over time (s), onsets marked, padding shaded.

    target, pred: [T] in [0, 1]; length: real frames (frames >= length are padding, shaded grey);
    fps: clip frame rate (x axis in seconds). Onsets: `metrics.onsets` on the valid frames.
    """
    from matplotlib.figure import Figure     # OO API: no pyplot state, no GUI backend needed

    path = Path(path)
    t_all = np.arange(len(target)) / fps
    fig = Figure(figsize=PLOT_SIZE_IN, dpi=PLOT_DPI)
    ax = fig.add_axes((0.07, 0.2, 0.91, 0.66))
    if length < len(target):
        ax.axvspan(length / fps - 0.5 / fps, (len(target) - 0.5) / fps, color=PAD_COLOUR, alpha=0.6,
                   lw=0, label="padding")
    ax.plot(t_all[:length], target[:length], color=TARGET_COLOUR, lw=1.6, label="target (audio)")
    ax.plot(t_all[:length], pred[:length], color=PRED_COLOUR, lw=1.6, label="prediction")
    for curve, colour, marker in ((target, TARGET_COLOUR, "v"), (pred, PRED_COLOUR, "^")):
        frames, heights = onsets(np.asarray(curve[:length], np.float64), peak_params)
        ax.plot(frames / fps, heights, linestyle="none", marker=marker, ms=6, color=colour,
                markeredgecolor="white", markeredgewidth=0.5)
    ax.set_xlim(-0.5 / fps, (len(target) - 0.5) / fps)
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("time (s)", fontsize=8, labelpad=1)
    ax.tick_params(labelsize=7, length=2)
    ax.grid(alpha=0.25, lw=0.5)
    ax.legend(loc="upper right", fontsize=6.5, frameon=False, ncol=3)
    if title:
        ax.set_title(title, fontsize=8, loc="left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# ----------------------------------------------------------------------------- GIF render

def _curve_points(curve: np.ndarray, length: int, x_of, y0: int, y1: int) -> list[tuple[float, float]]:
    return [(x_of(i), y1 - float(np.clip(curve[i], 0, 1)) * (y1 - y0)) for i in range(length)]


def render_gif(path: str | Path, frames: np.ndarray, target: np.ndarray, pred: np.ndarray, length: int,
               fps: float, peak_params: dict | None = None) -> Path:
    """Write a GIF: the clip's frames with target and prediction drawn under them and a moving cursor.

    frames: uint8 [T, H, W, 3] (T = len(target); frames past `length` are the repeated last frame);
    target, pred: [T] in [0, 1]. One GIF frame per clip frame, each shown 1/fps s (GIF timing is in
    1/100 s, so 12 fps plays at 1/0.08 = 12.5 fps). The strip is drawn once; each frame only copies
    it and draws the cursor, which keeps a 48-frame render well under a second.
    """
    path = Path(path)
    n = len(target)
    if frames.shape[0] != n:
        raise ValueError(f"frames [{frames.shape[0]}, ...] and target [{n}] disagree on T")
    width = frames.shape[2]
    step = (width - 1) / max(n - 1, 1)

    def x_of(i):
        return i * step

    strip = Image.new("RGB", (width, STRIP_HEIGHT), RGB["bg"])
    draw = ImageDraw.Draw(strip)
    y0, y1 = STRIP_MARGIN, STRIP_HEIGHT - STRIP_MARGIN
    if length < n:
        draw.rectangle([x_of(length) - step / 2, 0, width, STRIP_HEIGHT], fill=RGB["pad"])
    for y in (y0, (y0 + y1) / 2, y1):
        draw.line([(0, y), (width, y)], fill=RGB["grid"])
    for name, curve in (("target", target), ("pred", pred)):
        pts = _curve_points(curve, length, x_of, y0, y1)
        if len(pts) > 1:
            draw.line(pts, fill=RGB[name], width=2)
        for f in onsets(np.asarray(curve[:length], np.float64), peak_params)[0]:
            x, y = pts[int(f)]
            draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], outline=RGB[name], width=1)
    draw.text((3, 1), "target", fill=RGB["target"])
    draw.text((45, 1), "prediction", fill=RGB["pred"])
    strip_arr = np.asarray(strip)

    images = []
    for i in range(n):
        canvas = np.concatenate([frames[i], strip_arr], axis=0)
        x = int(round(x_of(i)))
        canvas[frames.shape[1]:, max(0, x - 1):x + 1] = RGB["cursor"]     # the cursor in the strip
        canvas[frames.shape[1] - 3:frames.shape[1], :x + 1] = RGB["cursor"]  # progress bar on the frame
        images.append(Image.fromarray(canvas))
    path.parent.mkdir(parents=True, exist_ok=True)
    # one shared palette, from a montage of five frames across the clip: colours stay stable from
    # frame to frame (no flicker) and encoding is one quantize per frame against a fixed palette
    montage = np.concatenate([np.asarray(images[i]) for i in np.linspace(0, n - 1, 5).astype(int)], axis=0)
    palette = Image.fromarray(montage).quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    gif = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    gif[0].save(path, format="GIF", save_all=True, append_images=gif[1:], duration=int(round(1000 / fps)),
                loop=0, optimize=False, disposal=1)
    return path


# ----------------------------------------------------------------------------- tables

def _fmt(value) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.3f}"


def beats_baselines(blocks: dict, metrics=HEADLINE) -> dict[str, bool]:
    """For each headline metric: is the model strictly better than every baseline?"""
    return {m: all(blocks["model"][m] > blocks[b][m] for b in BASELINES if b in blocks) for m in metrics}


def verdict(blocks: dict, name: str = "The model") -> str:
    """One plain-words line: does the model beat both baselines on seed_score and onset_f1?"""
    wins = beats_baselines(blocks)
    m, me, sh = blocks["model"], blocks["mean_envelope"], blocks["shuffled"]
    numbers = ", ".join(f"{k} {m[k]:.3f} vs {me[k]:.3f} (mean_envelope) / {sh[k]:.3f} (shuffled)" for k in HEADLINE)
    if all(wins.values()):
        return f"{name} beats both baselines on seed_score and onset_f1: {numbers}."
    lost = [k for k, ok in wins.items() if not ok]
    return f"{name} does NOT beat both baselines on {' and '.join(lost)}: {numbers}."


def metric_rows(columns: dict[str, dict]) -> list[list[str]]:
    """Rows [metric, better, col1, col2, ...] for evaluate() blocks keyed by column name."""
    rows = []
    for name, better in METRIC_ROWS:
        rows.append([name, "higher" if better == "+" else "lower"] + [_fmt(c[name]) for c in columns.values()])
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def seed_table_rows(rows: list[dict]) -> list[list[str]]:
    """The seed's table: class, n, good, not so good, bad, score (= good - bad, as the seed wrote it)."""
    return [[r["label"], r["n"], r["good"], r["not_so_good"], r["bad"], f"{r['score']} ({r['mean_score']:+.2f})"]
            for r in rows]


SEED_HEADER = ["class", "n", "good (+1)", "not so good (0)", "bad (-1)", "score (mean)"]


def report_markdown(metrics: dict, seed_rows: list[dict]) -> str:
    """report.md: the seed's table, the metric table (model vs baselines), then the verdict."""
    blocks = {k: metrics[k] for k in ("model",) + BASELINES}
    run, cache = metrics["run"], metrics["cache"]
    lines = [
        "# foleycache predictions",
        "",
        f"- run: `{run['dir']}` (checkpoint `{run['checkpoint_name']}`, epoch {run.get('epoch')}, "
        f"input `{run.get('input')}`)",
        f"- clips: {metrics['counts']['clips']} from `{cache['path']}` (fingerprint `{cache['fingerprint'][:16]}`)",
        f"- onsets: `scipy.signal.find_peaks` {metrics['peak_params']}, matched within ±1 frame "
        f"(±83 ms at 12 fps; `_tol2`: ±2)",
        "",
        "## The seed's table (automatic good / not so good / bad)",
        "",
        "good = main peak within ±1 frame and Pearson r ≥ 0.5; bad = main peak more than 3 frames off "
        "or r < 0.2; otherwise not so good. Score = good − bad (mean per clip in brackets).",
        "",
        markdown_table(SEED_HEADER, seed_table_rows(seed_rows)),
        "",
        "## Metrics: model vs baselines",
        "",
        "Baselines are scored exactly like the model: `mean_envelope` predicts the train set's mean "
        "envelope for every clip; `shuffled` gives each clip another clip's prediction.",
        "",
        markdown_table(["metric", "better", "model", "mean_envelope", "shuffled"], metric_rows(blocks)),
        "",
        "**" + verdict(blocks) + "**",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- report.html

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 12px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:3px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}tr.total td{font-weight:600;background:#fafafa}
td.win{background:#e3f4e1}.verdict{font-weight:600;padding:8px 10px;border-radius:4px;margin:10px 0}
.yes{background:#e3f4e1}.no{background:#fbe4e1}code{background:#f4f4f4;padding:0 3px;border-radius:3px}
.grid{display:flex;flex-wrap:wrap;gap:14px}.card{border:1px solid #ddd;border-radius:6px;padding:8px;width:520px}
.card img{display:block;max-width:100%}.card .meta{font-size:12px;color:#444;margin:4px 0}
.good{color:#1b7a1b}.not_so_good{color:#a07000}.bad{color:#b3261e}.small{font-size:12px;color:#555}
"""


def data_uri(path: str | Path) -> str:
    """The file as a base64 data: URI (PNG or GIF), so the page needs nothing beside itself."""
    path = Path(path)
    mime = {".png": "image/png", ".gif": "image/gif"}[path.suffix.lower()]
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _html_table(header: list[str], rows: list[list[str]], row_classes: list[str] | None = None,
                cell_classes: list[list[str]] | None = None) -> str:
    e = html.escape
    out = ["<table><thead><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = []
        for j, c in enumerate(row):
            ccls = cell_classes[i][j] if cell_classes else ""
            cells.append(f'<td class="{ccls}">{e(str(c))}</td>' if ccls else f"<td>{e(str(c))}</td>")
        out.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _win_classes(columns: dict[str, dict]) -> list[list[str]]:
    """Highlight the best value of each metric row (ties: every best cell)."""
    classes = []
    for name, better in METRIC_ROWS:
        values = [c[name] for c in columns.values()]
        best = max(values) if better == "+" else min(values)
        classes.append(["", ""] + ["win" if v == best else "" for v in values])
    return classes


def report_html(metrics: dict, seed_rows: list[dict], clips: list[dict]) -> str:
    """report.html: one offline page (inline CSS, images as data URIs, no scripts).

    clips: one dict per shown clip: id, label, seed_category, pearson, peak_error, plot (path),
    render (path or None).
    """
    e = html.escape
    blocks = {k: metrics[k] for k in ("model",) + BASELINES}
    wins = beats_baselines(blocks)
    run, cache = metrics["run"], metrics["cache"]
    seed_classes = ["total" if r["label"] == "TOTAL" else "" for r in seed_rows]
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width,initial-scale=1'>",
        f"<title>foleycache report: {e(Path(run['dir']).name)}</title><style>{CSS}</style></head><body>",
        "<h1>foleycache predictions</h1>",
        f"<p class=small>run <code>{e(run['dir'])}</code> · checkpoint <code>{e(run['checkpoint_name'])}</code> "
        f"(epoch {e(str(run.get('epoch')))}) · input <code>{e(str(run.get('input')))}</code> · "
        f"{metrics['counts']['clips']} clips from <code>{e(cache['path'])}</code> · "
        f"cache fingerprint <code>{e(cache['fingerprint'][:16])}</code></p>",
        f"<p class='verdict {'yes' if all(wins.values()) else 'no'}'>{e(verdict(blocks))}</p>",
        "<h2>Metrics: model vs baselines</h2>",
        "<p class=small>Baselines are scored exactly like the model: <code>mean_envelope</code> predicts the "
        "train set's mean envelope for every clip; <code>shuffled</code> gives each clip another clip's "
        f"prediction. Onsets: <code>find_peaks</code> {e(str(metrics['peak_params']))}, matched within "
        "±1 frame (±83 ms); <code>_tol2</code>: ±2 frames. Best value per row in green.</p>",
        _html_table(["metric", "better", "model", "mean_envelope", "shuffled"], metric_rows(blocks),
                    cell_classes=_win_classes(blocks)),
        "<h2>The seed's table (automatic good / not so good / bad)</h2>",
        "<p class=small>good = main peak within ±1 frame and Pearson r ≥ 0.5; bad = main peak more than "
        "3 frames off or r &lt; 0.2; otherwise not so good. Score = good − bad.</p>",
        _html_table(SEED_HEADER, seed_table_rows(seed_rows), row_classes=seed_classes),
        f"<h2>Predictions ({len(clips)} clips{', with renders' if any(c.get('render') for c in clips) else ''})</h2>",
        "<p class=small>Black: target loudness envelope from the audio; orange: prediction from the video "
        "alone; triangles/circles: picked onsets; grey: padding (the video is shorter than 4 s).</p>",
        "<div class=grid>",
    ]
    for c in clips:
        cat = str(c["seed_category"])
        parts.append(
            f"<div class=card id='clip-{e(str(c['id']))}'><div class=meta><b>{e(str(c['id']))}</b> · "
            f"{e(str(c['label']))}<br><span class={e(cat)}>{e(cat.replace('_', ' '))}</span> · "
            f"r {c['pearson']:.2f} · main peak off by {int(c['peak_error'])} frame(s)</div>")
        if c.get("render"):
            parts.append(f"<img alt='render {e(str(c['id']))}' src='{data_uri(c['render'])}'>")
        parts.append(f"<img alt='plot {e(str(c['id']))}' src='{data_uri(c['plot'])}'></div>")
    parts.append("</div></body></html>")
    return "\n".join(parts)

