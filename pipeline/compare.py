"""pretrain-compare: does learning from the sound make better video features? (the seed experiment's question)

Four arms, each over the same seeds and clips, starting from the same weights:

    imagenet           the backbone as it is: no pretraining (the reference)
    classes            pretrain on the labels (cross-entropy)
    classes+envelope   the labels + W x the envelope's BCE (`--aux-envelope W`: the sound as an auxiliary)
    envelope           the envelope alone (`--envelope-only`: no labels, the sound as the only teacher)

and each arm's backbone (pretrain's last epoch: nothing is selected on a held-out clip) is scored
the same way, with the pipeline's own commands:

    extract-features with it: the train clips, the held-out clips, every --eval set
    features for actions:      a linear probe (pipeline.probe) fitted on the train clips, top-1 held out
    features for sound timing: train-head's default recipe (seeded), its last checkpoint scored on the
                               held-out clips and every --eval set beside both baselines

OUT gets runs/ (pretrain), caches/ (features), heads/, rows.jsonl (one line per arm and seed),
compare.json and compare.md: mean ± standard error per arm, the paired differences (same seed)
against the reference and between the two classification arms, and the answer each row supports.
Every step is skipped when its output is complete and resumed when it is not, so re-running the same
command after a kill continues. Decoded frames and the frozen stages' maps are shared by all runs
(OUT/frames).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.errors import FoleyError
from pipeline.fsio import atomic_write_json, atomic_write_text, read_json, read_jsonl
from pipeline.metrics import BASELINES
from pipeline.options import COMPARE_DEFAULTS, PretrainOptions
from pipeline.recipes import mean_se

ARMS = ("imagenet", "classes", "classes+envelope", "envelope")
REFERENCE = "imagenet"
SAME_LOOK = "held-out"           # the held-out clips of the training list: always an evaluation set
HEADLINE = ("seed_score", "onset_f1")
CLEAR = 2.0                     # a paired difference is "clear" when |mean| > CLEAR standard errors
DEFAULTS = COMPARE_DEFAULTS
COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"
ROWS = "rows.jsonl"


def arm_options(arm: str, aux_weight: float) -> dict:
    """pretrain's options that make an arm (None for the reference: it is not pretrained)."""
    return {"imagenet": None, "classes": {}, "classes+envelope": {"aux_envelope": aux_weight},
            "envelope": {"aux_envelope": aux_weight, "envelope_only": True}}[arm]


def _pretrained(out: Path, arm: str, seed: int, recipe: dict, aux_weight: float, sets: dict, data: dict,
                run_args: dict) -> dict:
    """The arm's backbone for this seed: {"checkpoint", "val_top1", "seconds"} (pretrained, or resumed,
    unless the run is complete)."""
    from pipeline.pretrain import pretrain
    from pipeline.runs import read_metrics

    if arm == REFERENCE:
        return {"checkpoint": recipe["checkpoint"], "val_top1": None, "seconds": 0.0, "cache_key": "imagenet"}
    run = out / "runs" / f"{arm}-seed{seed}"
    history = read_metrics(run)
    if not ((run / "backbone.pth.tar").is_file() and len(history) >= recipe["epochs"]):
        pretrain(out=run, seed=seed, annotations=sets["train"][1], val_annotations=sets[SAME_LOOK][1],
                 frame_cache=out / "frames", resume=(run / "config.json").is_file(), **data, **run_args, **recipe,
                 **arm_options(arm, aux_weight))
        history = read_metrics(run)
    return {"checkpoint": str(run / "backbone.pth.tar"), "val_top1": history[-1].get("val_top1"),
            "seconds": round(sum(h["seconds"] for h in history), 1), "cache_key": f"{arm}-seed{seed}"}


def _features(out: Path, key: str, checkpoint: str, recipe: dict, sets: dict, data: dict, run_args: dict) -> dict:
    """Feature caches of every set with one backbone (extract-features resumes and skips by itself)."""
    from pipeline.extract import extract_features

    caches = {}
    for name, (videos, manifest) in sets.items():
        caches[name] = out / "caches" / key / name
        extract_features(videos=videos, annotations=manifest, out=caches[name], backbone=recipe["backbone"],
                         checkpoint=checkpoint, size=recipe["size"], frames=recipe["frames"], fps=recipe["fps"],
                         pool="global", fmt="hdf5", labels=data["labels"], classes=data["classes"],
                         limit=data["limit"], device=run_args["device"],
                         precision="fp32" if recipe["amp"] == "off" else "auto", progress=run_args["progress"])
    return caches


def _row(out: Path, arm: str, seed: int, recipe: dict, aux_weight: float, sets: dict, data: dict,
         run_args: dict) -> dict:
    """One arm and seed: pretrain, features, linear probe, head, scores."""
    import torch

    from pipeline.cache import FeatureCache
    from pipeline.probe import linear_probe
    from pipeline.recipes import score_run
    from pipeline.train import train_head

    backbone = _pretrained(out, arm, seed, recipe, aux_weight, sets, data, run_args)
    caches = _features(out, backbone["cache_key"], backbone["checkpoint"], recipe, sets, data, run_args)
    probe = linear_probe(FeatureCache(caches["train"]), FeatureCache(caches[SAME_LOOK]))
    head = out / "heads" / f"{arm}-seed{seed}"
    train_head(train_cache=caches["train"], val_cache=caches[SAME_LOOK], out=head, seed=seed, preload="ram",
               amp=recipe["amp"], overwrite=True, progress=False, device=run_args["device"])
    evals = {name: path for name, path in caches.items() if name != "train"}
    return {"arm": arm, "seed": seed, "pretrain_val_top1": backbone["val_top1"], "probe_top1": probe["top1"],
            "probe_chance": probe["chance"], "pretrain_seconds": backbone["seconds"],
            "sets": score_run(head, evals, torch.device(run_args["device"]))}


def compare(*, videos: Path, annotations: Path | str, val_annotations: Path | str, out: Path,
            evals: dict[str, tuple[Path, Path | str]] | None = None, labels: Path | None = None,
            classes: str | None = None, seeds=None, aux_weight: float | None = None, device: str = "auto",
            threads: int | None = None, limit: int | None = None, progress: bool = True, **recipe) -> dict:
    """Run (or continue) the four-arm comparison into `out`; returns the report (also OUT/compare.json;
    OUT/compare.md is the table). evals: more evaluation sets, name -> (videos folder, manifest)
    (an unseen look, recorded sounds). seeds: default 0, 1, 2 (at least 2). aux_weight: W of the
    envelope arms. recipe: pretrain's options (PretrainOptions), the same for every arm.
    """
    import torch
    from tqdm import tqdm

    t0 = time.perf_counter()
    out, videos = Path(out), Path(videos)
    seeds = tuple(DEFAULTS["seeds"] if seeds is None else seeds)
    aux_weight = DEFAULTS["aux_weight"] if aux_weight is None else float(aux_weight)
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise FoleyError(f"--seeds: give at least 2 different seeds (got {list(seeds)}); 3 or more for a spread "
                         "worth reading")
    if not aux_weight > 0:
        raise FoleyError(f"--aux-envelope must be > 0 for the envelope arms, got {aux_weight}")
    evals = dict(evals or {})
    for name, (folder, _) in evals.items():
        if name in ("train", SAME_LOOK) or not Path(folder).is_dir():
            raise FoleyError(f"--eval {name}: give a new name and an existing videos folder (got {folder})")
    given = {k: v for k, v in recipe.items() if v is not None}
    if {"seed", "aux_envelope", "envelope_only"} & set(given):
        raise FoleyError("pretrain-compare sets --seed, --aux-envelope and --envelope-only per arm itself")
    from pipeline.pretrain import resolve_weights
    opts = PretrainOptions.resolve(given)
    opts.checkpoint = resolve_weights(opts.backbone, opts.checkpoint)
    if opts.checkpoint == "none":
        raise FoleyError("pretrain-compare starts every arm from pretrained weights: give --checkpoint "
                         "(e.g. imagenet for mobilenet_v2)")
    settings = {"seeds": list(seeds), "aux_weight": aux_weight, "recipe": opts.to_dict(), "limit": limit,
                "videos": str(videos.resolve()), "annotations": str(annotations), "val_annotations": str(val_annotations),
                "classes": classes, "evals": {k: [str(v) for v in pair] for k, pair in evals.items()}}
    _claim(out, settings)
    if threads is not None:
        torch.set_num_threads(threads)
    recipe = {k: v for k, v in settings["recipe"].items() if k not in ("seed", "aux_envelope", "envelope_only")}
    data = dict(videos=videos, labels=labels, classes=classes, limit=limit)
    from pipeline.runtime import resolve_device
    run_args = dict(device=str(resolve_device(device)), progress=False)
    sets = {"train": (videos, annotations), SAME_LOOK: (videos, val_annotations), **evals}
    done = {(r["arm"], r["seed"]): r for r in read_jsonl(out / ROWS)}
    bar = tqdm([(s, a) for s in seeds for a in ARMS], desc="arms x seeds", unit="run", disable=not progress)
    for seed, arm in bar:
        bar.set_postfix_str(f"{arm}, seed {seed}")
        if (arm, seed) not in done:
            done[(arm, seed)] = _row(out, arm, seed, recipe, aux_weight, sets, data, run_args)
            atomic_write_text(out / ROWS, "".join(json.dumps(r) + "\n" for r in done.values()))
    report = summarise(list(done.values()), settings)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(out / COMPARE_JSON, report)
    atomic_write_text(out / COMPARE_MD, markdown(report))
    return report


def _claim(out: Path, settings: dict):
    """OUT/settings.json: a re-run must ask for the same comparison (it continues it)."""
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "settings.json"
    if saved.is_file():
        before = read_json(saved, "comparison settings", hint="choose another --out")
        changed = [k for k in ("recipe", "aux_weight", "evals", "annotations", "val_annotations") if before.get(k) != settings[k]]
        if changed:
            raise FoleyError(f"{out} holds a comparison with other {', '.join(changed)} ({saved}); re-run it as it "
                             "was, or choose another --out")
    atomic_write_json(saved, settings)


# ----------------------------------------------------------------------------- the report

def _values(rows: list[dict], key) -> dict:
    """{seed: value} of one number of every row (key: a row -> value or None)."""
    return {r["seed"]: v for r in rows if (v := key(r)) is not None}


def _paired(a: dict, b: dict) -> dict | None:
    seeds = sorted(set(a) & set(b))
    return mean_se([a[s] - b[s] for s in seeds]) if seeds else None


def measures(sets: list[str]) -> list[tuple[str, object]]:
    """(label, row -> number) of everything the report compares."""
    out = [("pretrain val top-1", lambda r: r["pretrain_val_top1"]), ("linear probe top-1", lambda r: r["probe_top1"])]
    for s in sets:
        for m in HEADLINE:
            out.append((f"{s}: {m}", lambda r, s=s, m=m: r["sets"][s]["model"][m]))
    return out


def summarise(rows: list[dict], settings: dict) -> dict:
    """Per arm mean ± se of every measure; the baselines; paired differences against the reference and
    classes+envelope - classes."""
    sets = list(rows[0]["sets"]) if rows else []
    by_arm = {arm: [r for r in rows if r["arm"] == arm] for arm in ARMS}
    table, pairs = {}, {}
    for label, key in measures(sets):
        values = {arm: _values(by_arm[arm], key) for arm in ARMS}
        table[label] = {arm: mean_se(list(v.values())) if v else None for arm, v in values.items()}
        pairs[label] = {f"{arm} - {REFERENCE}": _paired(values[arm], values[REFERENCE]) for arm in ARMS[1:]}
        pairs[label]["classes+envelope - classes"] = _paired(values["classes+envelope"], values["classes"])
    baselines = {f"{s}: {m}": {b: mean_se([r["sets"][s][b][m] for r in by_arm[REFERENCE]]) for b in BASELINES}
                 for s in sets for m in HEADLINE if by_arm[REFERENCE]}
    chance = next((r["probe_chance"] for r in rows), None)
    return {"settings": settings, "rows": rows, "sets": sets, "table": table, "paired": pairs,
            "baselines": baselines, "chance": chance}


QUESTIONS = {"classes - imagenet": "does training on the labels change the features?",
             "classes+envelope - imagenet": "do the labels with the sound change them?",
             "envelope - imagenet": "does the sound alone, without labels, change them?",
             "classes+envelope - classes": "does the sound as an auxiliary task add to the labels?"}


def verdict(stat: dict | None, more: str, less: str) -> str:
    """A paired difference in words: clear (|mean| > CLEAR standard errors) or not."""
    if not stat or stat["n"] < 2:
        return "n/a"
    se = stat["se"]
    word = more if stat["mean"] > CLEAR * se else less if stat["mean"] < -CLEAR * se else "no clear difference"
    return f"{stat['mean']:+.3f} ± {se:.3f}: {word}"


def _cell(stat: dict | None, signed: bool = False) -> str:
    if not stat:
        return "–"
    return (f"{stat['mean']:+.3f}" if signed else f"{stat['mean']:.3f}") + f" ± {stat['se']:.3f}"


def markdown(report: dict) -> str:
    """compare.md: the arms side by side, the paired differences, and what they answer."""
    s, r = report["settings"], report["settings"]["recipe"]
    lines = ["# Does learning from the sound make better video features?", "",
             f"Seeds {', '.join(map(str, s['seeds']))}; every arm starts from the same weights ({Path(r['checkpoint']).name}): "
             f"{r['backbone']} at {r['size']} px, first {r['freeze_blocks']} of 5 stages frozen, {r['epochs']} epochs "
             f"of {r['batch_size']} clips, lr {r['lr']}; envelope arms: W = {s['aux_weight']:g}. Each arm's last "
             "epoch is scored: a linear probe of its features (train clips -> held-out top-1) and train-head's "
             "default head on its features (last checkpoint, held-out clips and every evaluation set). "
             f"Cells: mean ± standard error over seeds. Chance top-1: {report['chance'] or float('nan'):.3f}.", "",
             "| measure | " + " | ".join(ARMS) + " |", "|---" * (len(ARMS) + 1) + "|"]
    for label, stats in report["table"].items():
        lines.append(f"| {label} | " + " | ".join(_cell(stats[a]) for a in ARMS) + " |")
    baselines = list(next(iter(report["baselines"].values()), {}))
    lines += ["", "Baselines, on the reference's features (the same clips and targets for every arm):", "",
              "| measure | " + " | ".join(baselines) + " |", "|---" * (len(baselines) + 1) + "|"]
    for label, stats in report["baselines"].items():
        lines.append(f"| {label} | " + " | ".join(_cell(stats[b]) for b in baselines) + " |")
    names = list(next(iter(report["paired"].values()), {}))
    lines += ["", "Paired differences (same seed):", "", "| measure | " + " | ".join(names) + " |",
              "|---" * (len(names) + 1) + "|"]
    for label, stats in report["paired"].items():
        lines.append(f"| {label} | " + " | ".join(_cell(stats[n], signed=True) for n in names) + " |")
    lines += ["", f"What they answer ('clear': |mean| > {CLEAR:g} standard errors of the paired difference):", ""]
    for name in names:
        said = [f"{label} {verdict(stats[name], 'better', 'worse')}" for label, stats in report["paired"].items()
                if stats[name] is not None]
        lines.append(f"- **{name}** ({QUESTIONS[name]}): " + "; ".join(said))
    return "\n".join(lines) + "\n"
