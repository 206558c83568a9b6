"""The linear probe reads what a linear layer can from clip-pooled features, fitted on train clips only;
the stem cache computes the frozen stages once and resumes where a build stopped."""
import json

import numpy as np
import torch

from pipeline.cache import FeatureCache, write_cache
from pipeline.probe import linear_probe


def cache(tmp_path, name, labels, features, lengths):
    n, t, _ = features.shape
    write_cache(tmp_path / name, [str(i) for i in range(n)], labels, features, np.zeros((n, t), np.float32), lengths,
                fmt="hdf5")
    return FeatureCache(tmp_path / name)


def clips(rng, n, classes, signal):
    """Clips whose frames hold their class's direction x signal plus noise; the padding holds junk."""
    y = rng.integers(0, classes, n)
    centres = np.eye(classes, 16) * signal
    x = centres[y][:, None, :] + rng.normal(size=(n, 6, 16))
    x[:, 4:] = 50.0                                     # padding: never real frames
    return [f"class {k}" for k in y], x.astype(np.float32)


def test_probe_reads_classes_from_the_real_frames_and_not_from_noise(tmp_path):
    rng = np.random.default_rng(0)
    labels, x = clips(rng, 120, 4, 3.0)
    val_labels, val_x = clips(rng, 40, 4, 3.0)
    lengths = np.full(120, 4)
    got = linear_probe(cache(tmp_path, "train", labels, x, lengths), cache(tmp_path, "val", val_labels, val_x, lengths[:40]))
    assert got["top1"] > 0.9 and got["chance"] == 0.25 and got["val_clips"] == 40
    shuffled = list(rng.permutation(labels))
    noise = linear_probe(cache(tmp_path, "train-shuffled", shuffled, x, lengths),
                         cache(tmp_path, "val2", val_labels, val_x, lengths[:40]))
    assert noise["top1"] < 0.6 and noise["train_top1"] > noise["top1"]


def test_probe_leaves_out_held_out_classes_it_never_saw(tmp_path):
    rng = np.random.default_rng(1)
    labels, x = clips(rng, 60, 3, 3.0)
    got = linear_probe(cache(tmp_path, "train", labels, x, np.full(60, 4)),
                       cache(tmp_path, "val", ["class 0", "another"], x[:2], np.full(2, 4)))
    assert got["val_clips"] == 1 and got["val_unknown"] == 1


def test_stem_cache_resumes_a_killed_build_and_rebuilds_for_other_weights(tmp_path):
    from pipeline.backbones import create_backbone
    from pipeline.framecache import FrameCache, normalised
    from pipeline.stemcache import StemCache, build_stem_cache
    from pipeline.data import Annotation
    from pipeline.framecache import DECODED, _create

    entries = [Annotation(id=str(i), template="t", label="t", class_index=None) for i in range(6)]
    _create(tmp_path / "frames", entries, 3, 32, "fp", {})
    writable = FrameCache(tmp_path / "frames", mode="r+")
    writable.frames[:] = np.random.default_rng(0).integers(0, 256, writable.frames.shape, dtype=np.uint8)
    writable.clips["status"][:5] = DECODED              # the sixth clip: a faulty video, never computed
    writable.clips.flush()
    writable.frames.flush()
    frames = FrameCache(tmp_path / "frames")
    net = create_backbone("mobilenet_v2", seed=0)
    kw = dict(backbone="mobilenet_v2", mean=(0.5,) * 3, std=(0.25,) * 3, progress=False)
    first = build_stem_cache(tmp_path / "stem", frames, net, 3, weights_sha256="a", **kw)
    assert first["computed_now"] == 5 and not first["reused"]
    stem = StemCache(tmp_path / "stem", mode="r+")
    with torch.no_grad():
        expected = net.eval().stem(normalised(frames.read([2])["frames"], (0.5,) * 3, (0.25,) * 3), 3)
    assert torch.allclose(torch.from_numpy(stem.read([2])), expected, atol=1e-6)
    stem.done[[1, 3]] = 0                               # what a kill before their marks leaves
    stem.done.flush()
    again = build_stem_cache(tmp_path / "stem", frames, net, 3, weights_sha256="a", **kw)
    assert again["reused"] and again["computed_now"] == 2
    other = build_stem_cache(tmp_path / "stem", frames, net, 3, weights_sha256="b", **kw)
    assert not other["reused"] and other["computed_now"] == 5
    assert json.loads((tmp_path / "stem.json").read_text())["weights_sha256"] == "b"
