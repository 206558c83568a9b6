"""Synthetic Something-Something-shaped dataset with sound: the embedded default data.

`make_synthetic(out)` writes, into OUT:

    videos/{id}.webm                       VP9 + Opus (`fmt="mp4"`: H.264 + AAC)
    something-something-v2-train.json      SSv2 annotation lists: {"id", "label", "template", "placeholders"}
    something-something-v2-validation.json
    something-something-v2-labels.json     {"Dropping something onto something": "3", ...}
    events.json                            {id: [impact times, seconds]}: the ground truth of every sound
    dataset.json                           seed, look, counts, faulty ids with the reason a decoder gives,
                                           per-clip facts (variety drawn from the look, sound used)

Each clip is a small 2-D physics scene (side view) for one of the 12 sound templates of the seed,
simulated at 500 Hz: falls with bounces, throws against a wall, hits, collisions that deflect or halt,
stack collapses, drops into / behind / in front of something. The picture carries the sound
(docs/learning.md, "What does make it learn"): every impact stops or bounces the object, squashes it for
~2 frames at 12 fps and raises a dust puff at the contact point, all scaled by the impact speed; a
hidden impact (behind an occluder, inside a container) shows as dust rising above the occluder.

How a clip looks is drawn from a *look* (LOOKS; DEFAULT_LOOK is broad, HELDOUT_LOOK shares none of
its walls, floors, objects or palettes): wall and floor (textures, gradients, bundled photographs),
object shapes, sizes and colours, light, camera zoom / framing / shake, motion trails, sensor
noise, a partial occluder near the camera and silent distractor motion. A head trained on one
renderer's look learns the look (docs/learning.md, "Pretrained features"); training on one look and
validating on another measures that. The look draws from a random stream of its own, so the
physics, and with it when the clip sounds, does not depend on it.

The audio is one sound per impact with peak amplitude proportional to the impact speed: a
procedural material per clip (click, thud, wood, glass, plastic, clap; partials and decay times
vary) or, with `sounds=DIR`, recorded samples (load_sounds); then a room (reverb tail) and room
tone (brown noise, sometimes mains hum), with distractors kept clearly quieter than the impacts
inside the 4 s the model sees (a camera click near the end, sometimes a soft rustle or hum).

Everything about a clip follows from its spec (incl. a per-clip seed), so `render_clip` is pure and
the dataset does not depend on the number of parallel jobs. WebM (VP9 + Opus) files are bit-exact
for a seed (muxers run with `fflags=+bitexact`, encoders single-threaded); with --format mp4,
libx264 occasionally takes other, equally good decisions on a loaded machine (even single-threaded,
with jobs=1), so an mp4 file may differ in its bytes by compression noise while its rendered
frames, audio, JSONs and events are identical.

Faulty files (~5% of the sound clips per split, at least one per split), recorded in dataset.json:
  - no_audio_stream: the file has no audio stream;
  - silent_audio: the audio stream is all zeros;
  - truncated: the file's bytes are cut in half. The reason recorded is what pipeline.media.load_clip
    raises for the result: `unreadable` for mp4 (cannot be opened: its index sits at the end), or
    `decode_error` for WebM (it opens, but its video stops well before the duration in its header).

Scene coordinates are pixels of a 240-pixel-high frame (y down); other frame sizes are drawn by
scaling, so the physics and the event times do not depend on `size`.

The package, in the order a clip is made (each module imports only the ones before it):
physics (the 500 Hz simulation) -> raster (soft-edged shapes) -> objects (names, shapes, colours) ->
scenes (one builder per template) -> looks (appearance families, backdrop, camera, light) ->
frames (bodies, dust, distractors, one picture per frame) -> audio (impacts, room, distractors,
recorded samples) -> clip (`render_clip`: one spec, both random streams) -> encode (PyAV, faulty
files) -> dataset (`make_specs`, `make_synthetic`, the JSON files).
"""
from pipeline.synthetic.audio import load_sounds
from pipeline.synthetic.clip import render_clip
from pipeline.synthetic.dataset import (DATASET_JSON, EVENTS_JSON, LABELS_JSON, TRAIN_JSON, VAL_JSON, labels_map,
                                        make_specs, make_synthetic)
from pipeline.synthetic.encode import FAULT_KINDS, FORMATS, write_video
from pipeline.synthetic.looks import DEFAULT_LOOK, HELDOUT_LOOK, LOOK_FAMILIES, LOOKS
from pipeline.synthetic.scenes import OTHER_TEMPLATES, TEMPLATES_12

__all__ = [
    "make_synthetic", "make_specs", "render_clip", "write_video", "load_sounds", "labels_map",
    "TEMPLATES_12", "OTHER_TEMPLATES", "LOOKS", "LOOK_FAMILIES", "DEFAULT_LOOK", "HELDOUT_LOOK",
    "FORMATS", "FAULT_KINDS", "TRAIN_JSON", "VAL_JSON", "LABELS_JSON", "EVENTS_JSON", "DATASET_JSON",
]
