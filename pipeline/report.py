"""What a researcher reads: the seed's table, the metric table with a verdict, report.md and a
self-contained report.html (every plot and render inline).

Pure text: everything here takes dicts already computed (`pipeline.score.metrics_record`,
`pipeline.metrics.evaluate` blocks, `seed_table` rows, `pipeline.figures` cards) and returns strings.
It computes no metric and draws no figure; the demo's summary tables are built from the same
`metric_rows` / `markdown_table` / `verdict`.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from pipeline.metrics import BASELINES, HEADLINE, beats_baselines

# The metric table: (name, better direction) in the order a reader wants them; "+" higher is
# better, "-" lower is better. The HEADLINE pair (metrics.HEADLINE) comes first.
METRIC_ROWS = [
    ("seed_score", "+"), ("onset_f1", "+"), ("onset_precision", "+"), ("onset_recall", "+"),
    ("onset_ap", "+"), ("onset_f1_tol2", "+"), ("onset_ap_tol2", "+"), ("onset_count_acc", "+"),
    ("pearson", "+"), ("peak_within_1", "+"), ("peak_error_frames", "-"), ("mae", "-"), ("bce", "-"),
]
SEED_HEADER = ["class", "n", "good (+1)", "not so good (0)", "bad (-1)", "score (mean)"]
NO_METRICS = ("No metrics: the cache holds no targets (its videos were read without their audio), so there "
              "is nothing to score the predictions against, and no number is made up in its place.")
TIMELINE_VIDEOS = 20          # videos listed in the report's timeline table
ONSETS_LISTED = 8             # onset times shown per video in that table


# ----------------------------------------------------------------------------- tables

def _fmt(value) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.3f}"


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


def timeline_rows(timelines: list[dict]) -> list[list[str]]:
    """Rows [video, seconds, onsets, first onset times (s)] of the first TIMELINE_VIDEOS timelines.
    timelines: {video, seconds, onsets: [time_s, ...]} each."""
    rows = []
    for t in timelines[:TIMELINE_VIDEOS]:
        more = " …" if len(t["onsets"]) > ONSETS_LISTED else ""
        times = ", ".join(f"{x:.2f}" for x in t["onsets"][:ONSETS_LISTED]) + more
        rows.append([t["video"], f"{t['seconds']:.2f}", len(t["onsets"]), times])
    return rows


def predictions_markdown(record: dict, timelines: list[dict]) -> str:
    """report.md of a cache without targets: what was predicted, why there are no metrics, and
    each video's onsets. record: run, cache, counts (as in metrics.json), peak_params, join_rule."""
    run, cache, counts = record["run"], record["cache"], record["counts"]
    lines = [
        "# foleycache predictions (video only)",
        "",
        f"- run: `{run['dir']}` (checkpoint `{run['checkpoint_name']}`, epoch {run.get('epoch')}, "
        f"input `{run.get('input')}`)",
        f"- clips: {counts['clips']} of {counts['videos']} videos from `{cache['path']}` "
        f"(fingerprint `{cache['fingerprint'][:16]}`); {counts['failed']} faulty (`failures.jsonl` there)",
        f"- **{NO_METRICS}**",
        f"- timelines: one curve per video at {counts['fps']:g} fps from its first frame "
        f"(`timelines.h5`, `timelines.csv`); {record['join_rule']}",
        f"- onsets: {counts['onsets']} in `onsets.csv` / `onsets.json` (seconds from the video's first frame), "
        f"`scipy.signal.find_peaks` {record['peak_params']} on each timeline",
        "",
        f"## Onsets per video (first {TIMELINE_VIDEOS})",
        "",
        markdown_table(["video", "seconds", "onsets", "onset times (s)"], timeline_rows(timelines)),
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
    parts += [_card_html(c) for c in clips]
    parts.append("</div></body></html>")
    return "\n".join(parts)


def _card_html(c: dict) -> str:
    """One clip's card: id, label, its scores where it has them, the render and the plot."""
    e = html.escape
    meta = f"<b>{e(str(c['id']))}</b> · {e(str(c['label']))}"
    if "seed_category" in c:
        cat = str(c["seed_category"])
        meta += (f"<br><span class={e(cat)}>{e(cat.replace('_', ' '))}</span> · r {c['pearson']:.2f} · "
                 f"main peak off by {int(c['peak_error'])} frame(s)")
    parts = [f"<div class=card id='clip-{e(str(c['id']))}'><div class=meta>{meta}</div>"]
    if c.get("render"):
        parts.append(f"<img alt='render {e(str(c['id']))}' src='{data_uri(c['render'])}'>")
    parts.append(f"<img alt='plot {e(str(c['id']))}' src='{data_uri(c['plot'])}'></div>")
    return "".join(parts)


def predictions_html(record: dict, timelines: list[dict], clips: list[dict]) -> str:
    """report.html of a cache without targets: predictions_markdown's content, then the clips' cards
    (the prediction alone), in one offline page."""
    e = html.escape
    run, cache, counts = record["run"], record["cache"], record["counts"]
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width,initial-scale=1'>",
        f"<title>foleycache predictions: {e(Path(run['dir']).name)}</title><style>{CSS}</style></head><body>",
        "<h1>foleycache predictions (video only)</h1>",
        f"<p class=small>run <code>{e(run['dir'])}</code> · checkpoint <code>{e(run['checkpoint_name'])}</code> · "
        f"{counts['clips']} clips of {counts['videos']} videos from <code>{e(cache['path'])}</code> · "
        f"{counts['failed']} faulty</p>",
        f"<p class='verdict no'>{e(NO_METRICS)}</p>",
        f"<h2>Onsets per video (first {TIMELINE_VIDEOS})</h2>",
        f"<p class=small>{counts['onsets']} onsets in <code>onsets.csv</code> (seconds from the video's first "
        f"frame); timelines joined: {e(record['join_rule'])}.</p>",
        _html_table(["video", "seconds", "onsets", "onset times (s)"], timeline_rows(timelines)),
        f"<h2>Predictions ({len(clips)} clips)</h2>",
        "<p class=small>Orange: prediction from the video alone; circles/triangles: picked onsets; "
        "grey: padding.</p><div class=grid>",
        *[_card_html(c) for c in clips],
        "</div></body></html>",
    ]
    return "\n".join(parts)

