"""The dataset: which clips exist, rendering and writing them, and the JSON files that describe them.

Owns the layout of OUT (pipeline.synthetic's docstring), the clip specs (`make_specs`: ids,
templates, per-clip seeds, durations, frame and sample rates, which clips are faulty), the SSv2
annotation lists and labels file, events.json and dataset.json (`make_synthetic`). Clips render
in joblib worker processes; the output does not depend on how many. Must not draw or mix
anything itself: a clip is `clip.render` then `encode.write_clip`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from pipeline.errors import FoleyError
from pipeline.fsio import atomic_write_text
from pipeline.synthetic.audio import CLICK_IN_WINDOW, load_sounds
from pipeline.synthetic.clip import render
from pipeline.synthetic.encode import FAULT_KINDS, FORMATS, OPUS_RATE, write_clip
from pipeline.synthetic.looks import DEFAULT_LOOK, LOOK_ID_BASE, LOOKS, family, look_code
from pipeline.synthetic.scenes import OTHER_TEMPLATES, TEMPLATES_12

TRAIN_JSON = "something-something-v2-train.json"
VAL_JSON = "something-something-v2-validation.json"
LABELS_JSON = "something-something-v2-labels.json"
EVENTS_JSON = "events.json"
DATASET_JSON = "dataset.json"
DATASET_VERSION = 2          # 2: looks, per-clip variety and sound facts
DURATION_S = (2.0, 6.0)
FPS_CHOICES = (12, 25, 30)
RATE_CHOICES = (44100, 48000)
FAULT_FRACTION = 0.05        # ~5% of the sound clips per split are faulty, at least one per split
OTHER_PER_SOUND_CLIPS = 25   # one non-sound clip per 25 sound clips, at least one per split
MIN_SIZE = 16                # px: the smallest frame side make_synthetic accepts


def _label(template, placeholders):
    """SSv2 label: the template with its placeholders filled in order, first letter capitalised."""
    parts = template.replace("[Something]", "[something]").split("[something]")
    text = parts[0] + "".join(p + rest for p, rest in zip(placeholders, parts[1:]))
    return text[:1].upper() + text[1:]


def labels_map():
    """{"Dropping something onto something": "3", ...}: every template used, brackets removed,
    indices in alphabetical order (as SSv2's labels file)."""
    names = sorted(t.replace("[", "").replace("]", "") for t in TEMPLATES_12 + OTHER_TEMPLATES)
    return {name: str(i) for i, name in enumerate(names)}


def _n_other(n_sound):
    """Non-sound clips that go with n_sound sound clips in a split."""
    return max(1, -(-n_sound // OTHER_PER_SOUND_CLIPS)) if n_sound else 0


def _split_specs(rng, split, n_sound, ids, size, split_index, seed, look):
    templates = [TEMPLATES_12[i % len(TEMPLATES_12)] for i in range(n_sound)]
    templates = [templates[i] for i in rng.permutation(n_sound)]
    templates += [OTHER_TEMPLATES[i % len(OTHER_TEMPLATES)] for i in range(_n_other(n_sound))]
    order = rng.permutation(len(templates))       # non-sound clips mixed in, as in SSv2 lists
    templates = [templates[i] for i in order]
    sound_idx = [i for i, t in enumerate(templates) if t in TEMPLATES_12]
    n_faulty = max(1, int(round(FAULT_FRACTION * n_sound))) if n_sound else 0
    faulty = sorted(rng.choice(sound_idx, size=n_faulty, replace=False).tolist()) if n_faulty else []
    # Each split starts the cycle of fault kinds elsewhere, so two tiny splits show all three.
    kinds = {i: FAULT_KINDS[(j + 2 * split_index) % len(FAULT_KINDS)] for j, i in enumerate(faulty)}
    specs = []
    for i, template in enumerate(templates):
        clip_seed = int(np.random.SeedSequence([seed, split_index, i, look_code(look)]).generate_state(1)[0])
        crng = np.random.default_rng(clip_seed)
        specs.append({
            "id": ids[i], "split": split, "template": template, "seed": clip_seed,
            "duration": round(float(crng.uniform(*DURATION_S)), 2),
            "fps": int(crng.choice(FPS_CHOICES)), "sample_rate": int(crng.choice(RATE_CHOICES)),
            "channels": int(crng.choice([1, 2])), "size": list(size), "fault": kinds.get(i), "look": look,
        })
    return specs


def split_looks(look: str) -> list[str]:
    """"home" → ["home"]; "home,night" → ["home", "night"] (a mixed dataset); each name checked."""
    looks = [name.strip() for name in str(look).split(",") if name.strip()]
    if not looks or len(set(looks)) != len(looks):
        raise FoleyError(f"--look {look!r}: give one look or several different ones, comma-separated")
    for name in looks:
        family(name)
    return looks


def make_specs(n_train=240, n_val=60, seed=0, size=(320, 240), look=DEFAULT_LOOK):
    """All clip specs of a dataset, in JSON order: list of dicts (see render_clip).

    Ids and clip seeds depend on (seed, look): two looks made with the same seed share no clip
    (ids of look k lie in k * LOOK_ID_BASE + [100000, 999999], so both sets can be used together).
    Several looks ("home,night"): each split is shared out between them as evenly as it divides
    (the first looks take the remainder), each look's clips drawn as its own dataset would draw them.
    """
    looks = split_looks(look)
    if len(looks) > 1:
        shares = [(n_train // len(looks) + (k < n_train % len(looks)), n_val // len(looks) + (k < n_val % len(looks)))
                  for k in range(len(looks))]
        parts = [make_specs(n_tr, n_va, seed, size, name) for name, (n_tr, n_va) in zip(looks, shares)]
        return ([s for part in parts for s in part if s["split"] == "train"]
                + [s for part in parts for s in part if s["split"] == "validation"])
    code = look_code(look)
    rng = np.random.default_rng([seed, code] if code else seed)   # the default look keeps seed-only streams
    n_other = [_n_other(n) for n in (n_train, n_val)]
    total = n_train + n_val + sum(n_other)
    ids = [str(v) for v in (rng.choice(900_000, size=total, replace=False) + 100_000 + code * LOOK_ID_BASE)]
    n_tr = n_train + n_other[0]
    return (_split_specs(rng, "train", n_train, ids[:n_tr], size, 0, seed, look)
            + _split_specs(rng, "validation", n_val, ids[n_tr:], size, 1, seed, look))


def _make_clip(spec, videos_dir, fmt, bank=None):
    """Render, encode and (for faulty clips) damage one clip. Runs in a worker; returns its facts."""
    out = render(spec, bank)
    path = Path(videos_dir) / f"{spec['id']}.{FORMATS[fmt][0]}"
    fault = spec.get("fault")
    reason = write_clip(path, out["frames"], out["fps"], out["audio"], out["sample_rate"], fmt, fault)
    return {
        "id": spec["id"], "events": out["events"], "placeholders": out["placeholders"],
        "info": {
            "split": spec["split"], "template": spec["template"], "duration": spec["duration"],
            "fps": spec["fps"], "frames": len(out["frames"]), "sample_rate": spec["sample_rate"],
            "stream_sample_rate": (OPUS_RATE if FORMATS[fmt][2] == "libopus" else spec["sample_rate"]),
            "channels": spec["channels"], "seed": spec["seed"], "impact_speeds": out["speeds"],
            "hidden_impacts": out["hidden"], "distractors": out["distractors"],
            "look": out["variety"]["look"], "variety": out["variety"], "sound": out["sound"],
            **({"fault": fault, "reason": reason} if fault else {}),
        },
    }


def _prepare_out(out: Path):
    """Create OUT; an earlier synthetic dataset there is replaced, anything else is refused."""
    if out.exists() and not out.is_dir():
        raise FoleyError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        manifest = out / DATASET_JSON
        if not manifest.is_file():
            raise FoleyError(f"{out} is not empty and holds no {DATASET_JSON}: refusing to write a dataset into it")
        try:
            old = json.loads(manifest.read_text())
            old_suffix = FORMATS[old["format"]][0]
            for clip_id in old["clips"]:
                (out / "videos" / f"{clip_id}.{old_suffix}").unlink(missing_ok=True)
        except (ValueError, KeyError, TypeError) as e:
            raise FoleyError(f"{manifest} is not a foleycache synthetic dataset manifest ({e})") from None
        manifest.unlink()
    (out / "videos").mkdir(parents=True, exist_ok=True)


def _write_json(path, obj):
    # indent 1, keys in the order written (fsio.atomic_write_json sorts them): the bytes every
    # dataset made so far has
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")



def _check_options(n_train, n_val, fmt, jobs, size, look):
    """make_synthetic's arguments, checked (FoleyError naming the option): the frame's (width, height)."""
    if n_train < 0 or n_val < 0 or n_train + n_val < 1:
        raise FoleyError("make-synthetic needs at least one clip (--train/--val >= 0, not both 0)")
    if fmt not in FORMATS:
        raise FoleyError(f"unknown format {fmt!r}: expected one of {sorted(FORMATS)}")
    if jobs == 0:
        raise FoleyError("--jobs must be a number of processes (>= 1) or negative (-1 = all cores)")
    width, height = (int(v) for v in size)
    if width < MIN_SIZE or height < MIN_SIZE or width % 2 or height % 2:
        raise FoleyError(f"frame size must be even and at least {MIN_SIZE}x{MIN_SIZE}, got {width}x{height}")
    split_looks(look)
    return width, height


def _collect(specs, results):
    """The workers' facts, in spec order: (SSv2 lists by split, events, clips, faulty) for the JSONs."""
    lists = {"train": [], "validation": []}
    events, clips, faulty = {}, {}, {}
    for spec, res in zip(specs, results):
        lists[spec["split"]].append({"id": spec["id"], "label": _label(spec["template"], res["placeholders"]),
                                     "template": spec["template"], "placeholders": res["placeholders"]})
        events[spec["id"]] = res["events"]
        clips[spec["id"]] = res["info"]
        if spec["fault"]:
            faulty[spec["id"]] = {"fault": spec["fault"], "reason": res["info"]["reason"]}
    return lists, events, clips, faulty


def _manifest(seed, fmt, look, bank, size, counts, faulty, clips):
    """dataset.json: how the dataset was made, its counts, faulty files and every clip's facts."""
    return {
        "generator": "foleycache make-synthetic", "version": DATASET_VERSION, "seed": seed, "format": fmt,
        "look": look, "sounds": bank["folder"] if bank else None,
        "video_codec": FORMATS[fmt][1], "audio_codec": FORMATS[fmt][2], "size": list(size),
        "videos": f"videos/{{id}}.{FORMATS[fmt][0]}", "counts": counts, "faulty": faulty,
        "notes": [
            "events.json: true impact times (s) of every clip, faulty ones included; a sound follows each",
            "impact, with peak amplitude proportional to impact speed (clips[id].impact_speeds, px/s at 240 px height).",
            "faulty[id].fault is what was done to the file; .reason is what a decoder reports (pipeline.media.REASONS):",
            "no_audio_stream, silent_audio (stream of zeros), truncated (bytes cut in half) -> unreadable (mp4) or decode_error (webm).",
            "Distractors (camera clicks, soft sounds) are not events; inside the first 4 s they stay below",
            f"{CLICK_IN_WINDOW[1]:.2f} x the loudest impact. Opus audio decodes at 48 kHz whatever the clip's sample_rate.",
            "Non-sound templates (OTHER_TEMPLATES) have no events and exist to exercise the class filter.",
            "clips[id].variety: the appearance drawn for the clip from its look (wall, floor, palette, object_scale,",
            "light, camera zoom/pan/floor_at/shake, blur, noise, occluder, distractor: silent motion, never an event);",
            "clips[id].sound: procedural materials or the recorded samples used, reverb and room tone.",
            f"Ids of look k (LOOKS = {list(LOOKS)}) lie in k * {LOOK_ID_BASE} + [100000, 999999]: looks never share ids.",
        ],
        "clips": clips,
    }


def make_synthetic(out: Path, n_train: int = 240, n_val: int = 60, seed: int = 0, fmt: str = "webm",
                   jobs: int = -1, progress: bool = True, size: tuple = (320, 240), look: str = DEFAULT_LOOK,
                   sounds: Path | str | None = None) -> dict:
    """Write a Something-Something-shaped dataset with sound into `out` (layout: pipeline.synthetic).

    n_train / n_val: clips of the 12 sound templates per split (either may be 0, not both); each
    non-empty split also gets ceil(n / 25) clips of non-sound templates (the class filter removes
    them). size: (width, height). look: one of LOOKS, the family of appearance settings the clips
    are drawn from (same seed, other look: other clips, other ids), or several comma-separated
    ("home,night": the clips shared out between them). sounds: a folder of recorded
    impact samples (load_sounds) for the impact sounds; None = procedural sounds.
    jobs: joblib processes (-1 = all cores); the output does not depend on it.
    Returns a summary dict (JSON-serialisable); dataset.json holds the full record.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    width, height = _check_options(n_train, n_val, fmt, jobs, size, look)
    bank = load_sounds(sounds) if sounds is not None else None
    out = Path(out)
    _prepare_out(out)
    started = time.perf_counter()
    specs = make_specs(n_train, n_val, seed, (width, height), look)
    results = Parallel(n_jobs=jobs, return_as="generator")(
        delayed(_make_clip)(spec, str(out / "videos"), fmt, bank) for spec in specs)
    results = list(tqdm(results, total=len(specs), desc="make-synthetic", unit="clip", disable=not progress))

    lists, events, clips, faulty = _collect(specs, results)
    _write_json(out / TRAIN_JSON, lists["train"])
    _write_json(out / VAL_JSON, lists["validation"])
    _write_json(out / LABELS_JSON, labels_map())
    _write_json(out / EVENTS_JSON, events)
    counts = {split: {"sound": sum(s["template"] in TEMPLATES_12 for s in specs if s["split"] == split),
                      "other": sum(s["template"] not in TEMPLATES_12 for s in specs if s["split"] == split),
                      "total": len(lists[split])} for split in lists}
    _write_json(out / DATASET_JSON, _manifest(seed, fmt, look, bank, (width, height), counts, faulty, clips))
    return {
        "out": str(out), "seed": seed, "format": fmt, "look": look, "sounds": bank["folder"] if bank else None,
        "clips": len(specs), "train": counts["train"],
        "validation": counts["validation"], "faulty": faulty,
        "events": sum(len(v) for v in events.values()), "seconds": round(time.perf_counter() - started, 1),
    }
