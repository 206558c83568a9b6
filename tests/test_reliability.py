"""Bad input, crashes and hostile files lose nothing. Real files, real processes.

- the bad-video corpus (tests/badfiles.py) through `foleycache extract-features` end to end;
- bad annotations through the CLI: one line "error: ...", never a traceback;
- kill -9 at random points, then resume: the cache is identical, bit for bit, to an uninterrupted one;
- ENOSPC while writing: one-line message, no half-written shard visible, resume works;
- damaged caches: FeatureCache fails naming the shard, `cache-info --verify` lists every damaged one;
- hostile files: a code-running pickle checkpoint, ids escaping the videos folder, cache metadata
  that looks like code.

Everything runs at --size 32 on tiny videos; long repetitions are marked slow.
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import cache as cachemod
from pipeline import shards as shardsmod
from pipeline.cache import FeatureCache
from pipeline.cli import cli
from pipeline.errors import FoleyError
from pipeline.media import FaultyVideo, audio_frame_to_float, load_clip
from tests.badfiles import (ONSET_FRAMES, TEMPLATE, BadFile, make_corpus, vfr_times, write_annotations)
from tests.mediakit import make_video, read_index
from tests.runkit import (CLI_TIMEOUT, ENV, EXTRACT, assert_one_line_error, assert_same_tree,
                          assert_visible_shards_complete, extract_cmd, foleycache, kill_and_resume, read_metrics,
                          temporaries, visible_shards)

# Each kind of bad file -> the corpus ids that cover it.
BAD_KINDS = {
    "zero-byte": ["zero_byte"],
    "random bytes": ["random_bytes", "random_bytes_mp4"],
    "truncated at several points": ["truncated_webm_10", "truncated_webm_50", "truncated_webm_tail",
                                    "truncated_mkv_40", "truncated_mp4", "truncated_mp4_faststart",
                                    "truncated_live_webm"],
    "header only": ["header_only_webm", "header_only_mp4", "garbage_after_header"],
    "wrong extension": ["wrong_extension", "wrong_extension_mkv"],
    "video only": ["video_only", "realworld_video_only"],
    "audio only": ["audio_only", "audio_only_m4a"],
    "silent audio": ["silent", "silent_pcm"],
    "NaN/inf in float audio": ["nan_audio", "inf_audio"],
    "1-frame video": ["one_frame", "eleven_frames"],
    "very large frame size": ["large_frame"],
    "variable frame rate": ["vfr"],
    "audio shorter than video": ["audio_shorter"],
    "6-channel audio": ["six_channels", "six_channels_aac"],
    "8-bit integer audio": ["u8_audio"],
    "32-bit integer audio": ["s32_audio"],
    "symlink outside the videos folder": ["symlink_outside", "symlink_chain", "symlink_loop"],
    "unreadable file (permissions)": ["unreadable"],
    "not a regular file (hangs a decoder)": ["named_pipe"],
}


# ------------------------------------------------------------------------------ helpers

def read_failures(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines() if line]


# ------------------------------------------------------------------------------ 1. the bad-video corpus

@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    """The whole corpus (+ controls) through the real CLI once: (corpus, process, cache dir, videos)."""
    root = tmp_path_factory.mktemp("corpus")
    corpus = make_corpus(root / "videos", root / "outside")
    ann = write_annotations(corpus, root / "ann.json")
    out = root / "cache"
    proc = subprocess.run(extract_cmd(root / "videos", ann, out, "--shard-size", "8", quiet=False),
                          capture_output=True, text=True, env=ENV, timeout=CLI_TIMEOUT)
    return corpus, proc, out, root / "videos"


def test_corpus_covers_every_kind_of_bad_file(corpus_run):
    corpus = {b.id: b for b in corpus_run[0]}
    for kind, ids in BAD_KINDS.items():
        assert ids and all(i in corpus for i in ids), kind
    bad = [b for b in corpus.values() if not b.kind.startswith("control")]
    assert len(BAD_KINDS) >= 17 and len(bad) >= 30


def test_bad_corpus_end_to_end(corpus_run):
    corpus, proc, out, _ = corpus_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    expected_failed = {b.id: b.expect for b in corpus if b.expect != "cached"}
    expected_cached = {b.id: b for b in corpus if b.expect == "cached"}

    failures = read_failures(out)
    got = {f["id"]: f["reason"] for f in failures}
    assert len(got) == len(failures), "an id is recorded twice"
    wrong = {i: (got.get(i), want) for i, want in expected_failed.items() if got.get(i) != want}
    assert not wrong, f"id: (got, expected) {wrong}; details: " + "; ".join(
        f"{f['id']}: {f['detail'][:120]}" for f in failures if f["id"] in wrong)
    assert not set(got) & set(expected_cached), "a good clip was recorded as faulty"
    assert all(f["path"] and f["detail"] for f in failures if f["reason"] != "missing")

    c = FeatureCache(out)
    assert c.ids == [b.id for b in corpus if b.expect == "cached"]     # manifest order, nothing substituted
    assert c.counts["candidates"] == len(corpus) and c.counts["failed"] == len(expected_failed)
    assert c.verify() == []
    for i, clip_id in enumerate(c.ids):
        b, item = expected_cached[clip_id], c[i]
        env, n = item["envelope"], item["length"]
        assert n == b.length, (clip_id, n)
        assert env.dtype == np.float32 and env.min() >= 0 and env.max() <= 1, clip_id
        assert env[:n].max() == pytest.approx(1.0) and env[:n].min() == 0.0, clip_id
        assert np.all(env[n:] == 0), clip_id
        assert np.isfinite(item["features"].astype(np.float32)).all(), clip_id
        if b.onsets:
            top = sorted(np.argsort(env[:n])[-len(b.onsets):].tolist())
            assert top == list(b.onsets), (clip_id, top)
        if b.silent_from is not None:
            assert np.all(env[b.silent_from:] == 0) and env[b.silent_from - 1] > 0, clip_id
    summary = proc.stdout.strip().splitlines()[-1]
    assert f"{len(corpus)} candidates, {len(expected_cached)} cached, {len(expected_failed)} faulty" in summary


def test_realworld_720p_and_4k_are_cached_at_full_length(corpus_run):
    """The acceptance files: 720p H.264 (B-frames) / AAC at 25 fps -> length 48, 4K -> its 14 frames."""
    corpus, proc, out, _ = corpus_run
    c = FeatureCache(out)
    lengths = dict(zip(c.ids, c.lengths.tolist()))
    assert lengths["realworld_720p"] == 48 and lengths["good_mp4_25fps"] == 48 and lengths["large_frame"] == 14


def test_vfr_frames_are_picked_by_nearest_timestamp(corpus_run):
    videos = corpus_run[3]
    clip = load_clip(videos / "vfr.mkv", size=48, normalize=False)
    times = vfr_times()
    for i in range(48):
        frame = clip.frames[:, i]
        j = read_index(frame[:, 4:20].mean().item(), frame[:, 28:44].mean().item())
        dist = np.abs(times - i / 12)
        nearest = set(np.flatnonzero(np.isclose(dist, dist.min(), atol=1e-6)))
        assert j in nearest, (i, j, nearest)


@pytest.mark.parametrize("name,fmt", [("u8_audio.mov", "u8"), ("s32_audio.mov", "s32")])
def test_integer_audio_is_scaled_like_int16(corpus_run, name, fmt):
    """u8 and s32 PCM decode to [-1, 1] like int16 / 32768: the bursts' peak is their 0.8 amplitude."""
    with av.open(str(corpus_run[3] / name)) as container:
        frames = list(container.decode(audio=0))
    assert frames[0].format.name.rstrip("p") == fmt
    x = np.concatenate([audio_frame_to_float(f)[0] for f in frames])
    assert np.abs(x).max() == pytest.approx(0.8, abs=0.01)
    assert np.abs(np.median(x)) < 0.01          # centred: u8's 128 offset is removed


PEAK_RSS = """
import resource, sys, torch
torch.set_num_threads(1)
from pipeline.media import load_clip
load_clip(sys.argv[1], size=224, threads=1)     # warm-up: libraries, allocator
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
load_clip(sys.argv[2], size=224, threads=1)
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_large_frames_are_scaled_one_by_one(corpus_run):
    """14 frames of 3840x2160 cost about one frame's memory, not the clip's (14 x 25 MB as uint8,
    14 x 100 MB as float)."""
    videos = corpus_run[3]
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, videos / "good_webm.webm", videos / "large_frame.mp4"],
                          capture_output=True, text=True, env=ENV, timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    base, peak = (int(v) // 1024 for v in proc.stdout.split())
    assert peak - base < 300, f"4K clip raised peak RSS from {base} to {peak} MB"


def _mutants(base: Path, n: int, seed: int):
    """n copies of `base` with random bytes flipped, a random segment overwritten by noise or zeros."""
    data = base.read_bytes()
    for i in range(n):
        rng = random.Random(seed * 100003 + i)
        mutant = bytearray(data)
        mode = rng.choice(["flip", "noise", "zeros"])
        if mode == "flip":
            for _ in range(rng.randint(1, 40)):
                mutant[rng.randrange(len(mutant))] ^= 1 << rng.randrange(8)
        else:
            a = rng.randrange(len(mutant))
            b = min(len(mutant), a + rng.randint(1, 4000))
            mutant[a:b] = rng.randbytes(b - a) if mode == "noise" else bytes(b - a)
        yield mode, bytes(mutant)


def _fuzz(tmp_path, per_base: int):
    """Damaged copies of every container decode to a clip or raise FaultyVideo: nothing else escapes
    (extract-features catches FaultyVideo only, so anything else would stop a run)."""
    bases = [make_video(tmp_path / f"base{ext}", width=48, height=32) for ext in (".webm", ".mp4", ".mkv", ".mov")]
    outcomes = {}
    for base in bases:
        for n, (mode, data) in enumerate(_mutants(base, per_base, seed=len(base.suffix))):
            path = tmp_path / f"m{n}{base.suffix}"
            path.write_bytes(data)
            try:
                clip = load_clip(path, size=32, threads=1)
                assert clip.length >= 12 and np.isfinite(clip.envelope).all()
                key = "cached"
            except FaultyVideo as e:
                key = e.reason
            except Exception as e:      # noqa: BLE001 - the point of the test
                pytest.fail(f"{path.name} ({mode} of {base.name}) escaped as {type(e).__name__}: {e}")
            outcomes[key] = outcomes.get(key, 0) + 1
    return outcomes


def test_randomly_damaged_files_only_ever_raise_faulty_video(tmp_path):
    outcomes = _fuzz(tmp_path, per_base=10)
    assert sum(outcomes.values()) == 40 and len(outcomes) > 1, outcomes


@pytest.mark.slow
def test_randomly_damaged_files_many(tmp_path):
    """400 mutants (run once by hand: 300 of 5 containers, in child processes with a 30 s limit each,
    gave no escape, hang or crash)."""
    outcomes = _fuzz(tmp_path, per_base=100)
    assert sum(outcomes.values()) == 400, outcomes


def test_unreadable_file_through_extract_features(tmp_path):
    """A real chmod-000 file. Root reads anything, so as root the run drops to an unprivileged user."""
    as_root = os.geteuid() == 0
    if as_root and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: permissions cannot be enforced")
    root = Path(tempfile.mkdtemp(prefix="foleycache-perm-"))      # /tmp: reachable by that user
    try:
        root.chmod(0o777)
        videos = root / "videos"
        videos.mkdir()
        make_video(videos / "good.webm", width=64, height=48)
        make_video(videos / "locked.webm", width=64, height=48).chmod(0)
        videos.chmod(0o755)
        (videos / "good.webm").chmod(0o644)
        ann = write_annotations([BadFile("good", "", "cached"), BadFile("locked", "", "unreadable")],
                                root / "ann.json")
        ann.chmod(0o644)
        cmd = extract_cmd(videos, ann, root / "cache", "--shard-size", "2")
        env = dict(ENV, HOME=str(root))
        if as_root:
            drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            probe = subprocess.run([*drop, sys.executable, "-c", "import pipeline.media"], capture_output=True,
                                   env=env, timeout=120)
            if probe.returncode != 0:
                pytest.skip("the unprivileged user cannot run this checkout's Python (checkout not "
                            "world-readable); the corpus covers this kind with a directory instead")
            cmd = [*drop, *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=CLI_TIMEOUT)
        assert proc.returncode == 0, proc.stderr[-2000:]
        failures = read_failures(root / "cache")
        assert [(f["id"], f["reason"]) for f in failures] == [("locked", "unreadable")]
        assert "Permission" in failures[0]["detail"]
        assert FeatureCache(root / "cache").ids == ["good"]
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------ 2. bad annotations

def _entry(i, template=TEMPLATE):
    return {"id": i, "template": template, "label": "x", "placeholders": []}


BAD_ANNOTATIONS = {
    "malformed JSON": ('[{"id": "1", "template": ', "not valid JSON"),
    "not a list": ('{"id": "1"}', "JSON list"),
    "empty list": ("[]", "empty"),
    "entry not an object": (json.dumps([_entry("1"), "2"]), "entry 1"),
    "missing id": (json.dumps([{"template": TEMPLATE}]), "'id'"),
    "missing template": (json.dumps([{"id": "1"}]), "'template'"),
    "null id": (json.dumps([_entry(None)]), "id None"),
    "duplicate ids": (json.dumps([_entry("1"), _entry("2"), _entry("1")]), "'1' appears more than once"),
    "path separator": (json.dumps([_entry("a/b")]), "a/b"),
    "dot-dot": (json.dumps([_entry("..")]), "'..'"),
    "escaping id": (json.dumps([_entry("../outside/elsewhere")]), "../outside/elsewhere"),
    "absolute path": (json.dumps([_entry("/etc/passwd")]), "/etc/passwd"),
    "backslash": (json.dumps([_entry("..\\x")]), "not a plain file name"),
    "hidden file": (json.dumps([_entry(".hidden")]), ".hidden"),
    "template not a string": (json.dumps([_entry("1", template=7)]), "template is not a string"),
    "no sound12 template": (json.dumps([_entry("1", "Pretending to open [something]")]), "none of its 1 entries"),
    "not UTF-8": (b"\xff\xfe[\x00]", "annotations"),
    "id too long": (json.dumps([_entry("x" * 300)]), "too long for a file name"),
    "lone surrogate id": (json.dumps([_entry("\ud800")]), "not valid Unicode"),
    "lone surrogate template": (json.dumps([_entry("1", "Dropping [something] \udc80")]), "valid Unicode"),
}


@pytest.fixture(scope="module")
def one_video(tmp_path_factory):
    root = tmp_path_factory.mktemp("one")
    (root / "videos").mkdir()
    make_video(root / "videos" / "1.webm", width=64, height=48)
    return root


@pytest.mark.parametrize("case", sorted(BAD_ANNOTATIONS))
def test_bad_annotations_are_one_line_errors(one_video, tmp_path, case):
    content, needle = BAD_ANNOTATIONS[case]
    ann = tmp_path / "ann.json"
    ann.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = CliRunner().invoke(cli, ["extract-features", "--videos", str(one_video / "videos"), "--annotations",
                                      str(ann), "--out", str(tmp_path / "cache"), *EXTRACT])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert_one_line_error(result.output, needle)
    assert not (tmp_path / "cache").exists()          # nothing was started


def test_unknown_template_with_labels_file(one_video, tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([_entry("1"), _entry("2", "Juggling [something]")]))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"Dropping something onto something": "0"}))
    result = CliRunner().invoke(cli, ["extract-features", "--videos", str(one_video / "videos"), "--annotations",
                                      str(ann), "--labels", str(labels), "--out", str(tmp_path / "c"), *EXTRACT])
    assert result.exit_code == 2
    assert_one_line_error(result.output, "Juggling", "labels file")


@pytest.mark.parametrize("content,needle", [("{not json", "not valid JSON"), ("[]", "non-empty JSON object"),
                                            ('{"Dropping something onto something": "x"}', "not an integer")])
def test_bad_labels_file(one_video, tmp_path, content, needle):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([_entry("1")]))
    labels = tmp_path / "labels.json"
    labels.write_text(content)
    result = CliRunner().invoke(cli, ["extract-features", "--videos", str(one_video / "videos"), "--annotations",
                                      str(ann), "--labels", str(labels), "--out", str(tmp_path / "c"), *EXTRACT])
    assert result.exit_code == 2
    assert_one_line_error(result.output, "labels.json", needle)


def test_bad_annotations_in_a_real_process(one_video, tmp_path):
    """The same one-line errors from the installed entry point, in its own process."""
    for content, needle in (BAD_ANNOTATIONS["malformed JSON"], BAD_ANNOTATIONS["escaping id"]):
        ann = tmp_path / "ann.json"
        ann.write_text(content)
        proc = foleycache("extract-features", "--videos", one_video / "videos", "--annotations", ann,
                          "--out", tmp_path / "cache", *EXTRACT)
        assert proc.returncode == 2 and proc.stdout == ""
        assert_one_line_error(proc.stderr, needle)


def test_skipped_templates_and_missing_videos_are_not_errors(one_video, tmp_path):
    """Entries outside --classes are skipped; an annotated id with no video is a recorded failure."""
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([_entry("1"), _entry("nothing"), _entry("3", "Pretending to open [something]")]))
    out = tmp_path / "cache"
    result = CliRunner().invoke(cli, ["extract-features", "--videos", str(one_video / "videos"), "--annotations",
                                      str(ann), "--out", str(out), *EXTRACT])
    assert result.exit_code == 0, result.output
    assert FeatureCache(out).ids == ["1"]
    assert [(f["id"], f["reason"]) for f in read_failures(out)] == [("nothing", "missing")]


# ------------------------------------------------------------------------------ 3. faults

N_GOOD, SHARD = 9, 2


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """12 candidates (9 good, a zero-byte file, a video without audio, a missing id) in 6 shards of 2,
    and an uninterrupted reference cache built by the CLI: (videos, annotations, reference, seconds)."""
    root = tmp_path_factory.mktemp("small")
    videos = root / "videos"
    videos.mkdir()
    for i in range(N_GOOD):
        make_video(videos / f"{i:02d}.webm", seconds=4.2, width=48, height=32,
                   impulses=((5 + 3 * i + 0.3) / 12,), sample_rate=48000)
    (videos / "zero.webm").write_bytes(b"")
    make_video(videos / "mute.webm", width=48, height=32, with_audio=False)
    ids = [f"{i:02d}" for i in range(N_GOOD)]
    ids[3:3] = ["zero"]
    ids[7:7] = ["mute"]
    ids.append("gone")
    ann = write_annotations([BadFile(i, "", "") for i in ids], root / "ann.json")
    ref = root / "reference"
    start = time.monotonic()
    proc = subprocess.run(extract_cmd(videos, ann, ref, "--shard-size", SHARD), capture_output=True,
                          text=True, env=ENV, timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return videos, ann, ref, time.monotonic() - start


N_CANDIDATES = N_GOOD + 3


def test_reference_cache_is_complete(small):
    c = FeatureCache(small[2])
    assert len(c) == N_GOOD and c.n_shards == N_CANDIDATES // SHARD
    assert sorted(f["reason"] for f in c.failures) == ["missing", "no_audio_stream", "unreadable"]
    assert temporaries(small[2]) == [] and not (small[2] / cachemod.PROGRESS_JSON).exists()


def _kill_and_resume(small, out: Path, kills: int, seed: int, extra=()):
    """Start extract-features, SIGKILL its process group at a random moment, `kills` times (half at a
    random time, half a random moment after a random number of shards is done), then let it finish.
    Returns the state seen after each kill."""
    videos, ann, _, seconds = small
    cmd = extract_cmd(videos, ann, out, "--shard-size", SHARD, *extra)

    def check(state):
        state["temps"] = temporaries(out)
        # Whatever the moment: every visible shard is whole, and a reader never sees a partial cache.
        assert_visible_shards_complete(out, SHARD, N_CANDIDATES)
        if not (out / cachemod.CACHE_JSON).exists():
            with pytest.raises(FoleyError):
                FeatureCache(out)

    return kill_and_resume(lambda: cmd, lambda: len(visible_shards(out)), kills=kills, seed=seed, seconds=seconds,
                           units=N_CANDIDATES // SHARD, unit="shard", min_delay=0.3, max_settle=0.6, poll=0.02,
                           check=check, env=ENV)


def test_kill_9_then_resume_gives_the_identical_cache(small, tmp_path):
    out = tmp_path / "killed"
    states = _kill_and_resume(small, out, kills=4, seed=7)
    assert any(0 < s["shards"] < N_CANDIDATES // SHARD and not s["finished"] for s in states), states
    assert_same_tree(out, small[2])
    assert temporaries(out) == []


@pytest.mark.slow
@pytest.mark.parametrize("fmt,seed", [("zarr", 1), ("zarr", 2), ("hdf5", 3)])
def test_kill_9_many_times(small, tmp_path, fmt, seed):
    """Twelve kills per run; HDF5 shards against an HDF5 reference."""
    if fmt == "zarr":
        reference = small[2]
    else:
        reference = tmp_path / "reference-h5"
        proc = subprocess.run(extract_cmd(small[0], small[1], reference, "--shard-size", SHARD, "--format", fmt),
                              capture_output=True, text=True, env=ENV, timeout=CLI_TIMEOUT)
        assert proc.returncode == 0, proc.stderr
    out = tmp_path / "killed"
    _kill_and_resume(small, out, kills=12, seed=seed, extra=("--format", fmt))
    assert_same_tree(out, reference)


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["append", "last_append", pytest.param("finish", marks=pytest.mark.slow), "index"])
def test_disk_full_mid_shard_then_resume(small, tmp_path, monkeypatch, one_thread, where):
    """ENOSPC raised from the shard write path (mid-shard, on a shard's last clip, while closing a shard,
    while writing cache.json): one line, no half-written shard visible, and once space is back the
    same command finishes a cache identical to the uninterrupted one."""
    videos, ann, ref, _ = small
    out = tmp_path / "cache"
    calls = {"append": 0}
    real_append, real_fsync_tree = shardsmod.ShardWriter.append, shardsmod._fsync_tree
    real_write_text = cachemod.atomic_write_text

    def append(self, *args, **kw):
        calls["append"] += 1
        # Shard 2 holds clips 03 and 04: the 4th and 5th appends of the run.
        if where == "append" and calls["append"] == 4:      # 03: mid-shard
            real_append(self, *args, **kw)                   # its bytes reach the disk, then it is full
            _enospc()
        if where == "last_append" and calls["append"] == 5:  # 04, the shard's last clip, is never written
            _enospc()
        return real_append(self, *args, **kw)

    def fsync_tree(path):
        if "shard-00002" in str(path):
            _enospc()
        return real_fsync_tree(path)

    def write_text(path, text):
        if path.name == cachemod.CACHE_JSON:
            _enospc()
        return real_write_text(path, text)

    if where in ("append", "last_append"):
        monkeypatch.setattr(shardsmod.ShardWriter, "append", append)
    elif where == "finish":
        monkeypatch.setattr(shardsmod, "_fsync_tree", fsync_tree)
    else:
        monkeypatch.setattr(cachemod, "atomic_write_text", write_text)
    args = ["extract-features", "--videos", str(videos), "--annotations", str(ann), "--out", str(out),
            "--shard-size", str(SHARD), *EXTRACT]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    assert_one_line_error(result.output, "No space left on device")
    assert re.search(r"re-run|resume", result.output), result.output
    assert_visible_shards_complete(out, SHARD, N_CANDIDATES)
    assert not [t for t in temporaries(out) if t.startswith("shard-")], temporaries(out)
    assert not (out / cachemod.CACHE_JSON).exists() or where != "index"
    with pytest.raises(FoleyError):
        FeatureCache(out)                           # unfinished: refused, never read half-way

    monkeypatch.undo()                              # space is back
    proc = subprocess.run(extract_cmd(videos, ann, out, "--shard-size", SHARD), capture_output=True, text=True,
                          env=ENV, timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_tree(out, ref)


# ------------------------------------------------------------------------------ damaged caches

def _copy(ref: Path, dst: Path) -> Path:
    shutil.copytree(ref, dst)
    return dst


def _flip(path: Path, offset: int | None = None):
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _chunk(shard: Path, array: str = "features") -> Path:
    return next(p for p in sorted((shard / array).rglob("*")) if p.is_file() and p.name != "zarr.json")


def _damage(c: Path, how: str, k: int) -> str:
    """Damage shard k of cache dir `c` in one way; returns the shard's name."""
    shard = c / "shards" / f"shard-{k:05d}.zarr"
    if how == "flip":
        _flip(_chunk(shard))
    elif how == "flip_length":
        _flip(_chunk(shard, "length"))
    elif how == "truncate":
        chunk = _chunk(shard)
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 3])
    elif how == "delete":
        shutil.rmtree(shard)
    elif how == "delete_chunk":
        _chunk(shard).unlink()
    return shard.name


def _read_everything(c: Path):
    cache = FeatureCache(c)
    for i in range(len(cache)):
        cache[i]
    cache.read_many(range(len(cache)))
    return cache


@pytest.mark.parametrize("how", ["flip", "flip_length", "truncate", "delete", "delete_chunk"])
def test_damaged_shard_is_named_by_reader_and_verify(small, tmp_path, how):
    c = _copy(small[2], tmp_path / "c")
    name = _damage(c, how, 2)
    with pytest.raises(FoleyError, match=re.escape(name)) as err:
        _read_everything(c)
    assert "\n" not in str(err.value)
    proc = foleycache("cache-info", c, "--verify", "--quiet")
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    assert name in proc.stdout + proc.stderr


def test_verify_lists_every_damaged_shard(small, tmp_path):
    """Several shards damaged in different ways at once: `cache-info --verify` names each of them."""
    c = _copy(small[2], tmp_path / "c")
    names = [_damage(c, how, k) for how, k in (("flip", 0), ("truncate", 1), ("delete_chunk", 3), ("delete", 4))]
    proc = foleycache("cache-info", c, "--verify", "--quiet")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out
    missing = [n for n in names if n not in out]
    assert not missing, f"not listed: {missing}\n{out}"
    for intact in ("shard-00002.zarr", "shard-00005.zarr"):
        assert f"{intact}:" not in out


@pytest.mark.parametrize("edit", ["count", "shard hash", "fingerprint", "truncated", "not json"])
def test_edited_cache_json_is_refused(small, tmp_path, edit):
    c = _copy(small[2], tmp_path / "c")
    index_path = c / cachemod.CACHE_JSON
    index = json.loads(index_path.read_text())
    if edit == "count":
        index["shards"][1]["count"] += 1
    elif edit == "shard hash":
        index["shards"][1]["sha256"] = "0" * 64
    elif edit == "fingerprint":
        index["fingerprint"] = "f" * 64
    text = json.dumps(index, indent=2)
    if edit == "truncated":
        text = index_path.read_text()[:200]
    elif edit == "not json":
        text = "__import__('os').system('true')"
    index_path.write_text(text)
    with pytest.raises(FoleyError, match="cache.json") as err:
        FeatureCache(c)
    assert "\n" not in str(err.value)
    proc = foleycache("cache-info", c, "--verify", "--quiet")
    assert proc.returncode != 0
    assert_one_line_error(proc.stderr, "cache.json")


# ------------------------------------------------------------------------------ 4. hostile files

class _RunsCode:
    """Unpickling this runs os.system: a marker file appears if any loader unpickles it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_running_pickle_checkpoint_is_refused(small, tmp_path):
    import torch
    marker = tmp_path / "PWNED"
    assert pickle.loads(pickle.dumps(_RunsCode(marker))) == 0 and marker.exists()   # the payload is real
    marker.unlink()
    evil = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 1, "state_dict": {"module.conv_column.block1.0.weight": _RunsCode(marker)}}, evil)
    proc = foleycache("extract-features", "--videos", small[0], "--annotations", small[1], "--out",
                      tmp_path / "cache", "--checkpoint", evil, *EXTRACT)
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "model_best.pth.tar", "refused")
    assert not marker.exists()


def test_ids_cannot_escape_the_videos_folder(tmp_path):
    """Through the CLI: a path-like id is refused before anything is opened; a link that leaves the
    folder (directly, through another link, or as the whole id) is a recorded 'unreadable'."""
    videos, outside = tmp_path / "videos", tmp_path / "outside"
    corpus = make_corpus(videos, outside, kinds=["good_webm", "symlink_outside", "symlink_chain", "symlink_inside"])
    (videos / "dir_link.webm").symlink_to(outside, target_is_directory=True)
    corpus.append(BadFile("dir_link", "a link to a directory outside", "unreadable"))
    out = tmp_path / "cache"
    result = CliRunner().invoke(cli, ["extract-features", "--videos", str(videos), "--annotations",
                                      str(write_annotations(corpus, tmp_path / "a.json")), "--out", str(out),
                                      "--shard-size", "8", *EXTRACT])
    assert result.exit_code == 0, result.output
    got = {f["id"]: (f["reason"], f["detail"]) for f in read_failures(out)}
    for b in corpus:
        if b.expect == "unreadable":
            assert got[b.id][0] == "unreadable" and "outside the videos folder" in got[b.id][1], (b.id, got.get(b.id))
    assert FeatureCache(out).ids == ["good_webm", "symlink_inside"]


HOSTILE = [
    "__import__('os').system('touch {marker}')",
    "{{{{ ''.__class__.__mro__[1].__subclasses__() }}}}",
    "$(touch {marker})",
    "`touch {marker}`",
]


def test_cache_metadata_is_never_evaluated(tmp_path):
    """Strings that are code in Python, shells and templates, in every place a cache keeps metadata
    (config, ids, labels, failure records, cache.json), come back as the same strings; nothing runs."""
    marker = tmp_path / "PWNED"
    strings = [s.format(marker=marker) for s in HOSTILE]
    n, frames, dim = len(strings), 4, 8
    c = cachemod.write_cache(
        tmp_path / "c", ids=strings, labels=strings, features=np.zeros((n, frames, dim), np.float32),
        envelopes=np.zeros((n, frames), np.float32), lengths=[frames] * n, shard_size=2,
        config={"backbone": strings[0], "nested": {"x": strings}, "py/object": "os.system",
                "__reduce__": strings[0]},
        failures=[{"id": s, "path": s, "reason": "decode_error", "detail": s} for s in strings])
    assert c.ids == strings and c.labels == strings
    assert [f["detail"] for f in c.failures] == sorted(strings)
    assert c.config["backbone"] == strings[0] and c.config["py/object"] == "os.system"
    assert c.verify() == []
    proc = foleycache("cache-info", tmp_path / "c", "--verify", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["config"]["nested"]["x"] == strings
    proc = foleycache("cache-info", tmp_path / "c")
    assert proc.returncode == 0 and strings[0] not in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../../outside.zarr", "/etc/passwd", "shard-00000.zarr/../../x.zarr"])
def test_cache_json_cannot_name_files_outside_the_cache(small, tmp_path, name):
    """Even with its checksum recomputed (it guards against damage, not against an author), a
    cache.json whose shard list points elsewhere is refused before anything is opened."""
    c = _copy(small[2], tmp_path / "c")
    index = json.loads((c / cachemod.CACHE_JSON).read_text())
    index["shards"][0]["name"] = name
    index["checksum"] = cachemod._index_checksum(index)
    (c / cachemod.CACHE_JSON).write_text(json.dumps(index))
    with pytest.raises(FoleyError, match="bad shard name"):
        FeatureCache(c)


def test_shard_metadata_asking_for_pickle_is_refused(small, tmp_path):
    """A shard whose `id` array was replaced by one decoded with a pickle codec (zarr v2 metadata,
    object dtype): reading it fails naming the shard, and the pickle never runs."""
    c = _copy(small[2], tmp_path / "c")
    marker = tmp_path / "PWNED"
    arr = c / "shards" / "shard-00001.zarr" / "id"
    shutil.rmtree(arr)
    arr.mkdir()
    (arr / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [2], "chunks": [2], "dtype": "|O", "compressor": None, "fill_value": None,
        "filters": [{"id": "pickle", "protocol": 4}], "order": "C"}))
    (arr / "0").write_bytes(pickle.dumps(np.array([_RunsCode(marker)] * 2, dtype=object)))
    # the v3 form too: an unknown codec name in zarr.json
    lengths = c / "shards" / "shard-00002.zarr" / "length" / "zarr.json"
    meta = json.loads(lengths.read_text())
    meta["codecs"].append({"name": "numcodecs.pickle", "configuration": {"protocol": 4}})
    lengths.write_text(json.dumps(meta))
    for name in ("shard-00001.zarr", "shard-00002.zarr"):
        with pytest.raises(FoleyError, match=name):
            _read_everything(c) if name == "shard-00001.zarr" else FeatureCache(c).read_shard(2)
    proc = foleycache("cache-info", c, "--verify", "--quiet")
    assert proc.returncode == 1 and "shard-00001.zarr" in proc.stdout and "shard-00002.zarr" in proc.stdout
    assert not marker.exists()


def test_a_lost_backbone_recipe_is_written_again(small, tmp_path, one_thread):
    """A kill between writing backbone.safetensors and backbone.json (a window kill -9 rarely hits):
    re-running the command restores the recipe, and the cache equals the uninterrupted one."""
    videos, ann, ref, _ = small
    out = _copy(ref, tmp_path / "c")
    (out / "backbone.json").unlink()
    result = CliRunner().invoke(cli, ["extract-features", "--videos", str(videos), "--annotations", str(ann),
                                      "--out", str(out), "--shard-size", str(SHARD), *EXTRACT])
    assert result.exit_code == 0, result.output
    assert_same_tree(out, ref)


# ------------------------------------------------------------------------------ 3b. train-head faults

TRAIN = ["--epochs", "6", "--hidden", "32", "--batch-size", "8", "--lr", "3e-3", "--dropout", "0.2",
         "--device", "cpu", "--workers", "1", "--quiet"]


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    """Toy learnable caches and an uninterrupted 6-epoch train-head run: (train, val, run, seconds)."""
    from tests.cachekit import make_signal_cache
    root = tmp_path_factory.mktemp("head")
    train = make_signal_cache(root / "train", 48, seed=1).path
    val = make_signal_cache(root / "val", 16, seed=2).path
    start = time.monotonic()
    proc = foleycache("train-head", "--train-cache", train, "--val-cache", val, "--out", root / "whole", *TRAIN)
    assert proc.returncode == 0, proc.stderr
    return train, val, root / "whole", time.monotonic() - start


def _epochs_done(out: Path) -> int:
    return len(read_metrics(out)) if (out / "metrics.jsonl").exists() else 0


def _resume_command(base: list[str], out: Path):
    """What a user re-runs after a crash: the same command with --resume once the run exists."""
    def command():
        if (out / "config.json").exists():
            return [*base, "--resume"]
        # killed before the run recorded itself: there is nothing to resume, start it again
        return [*base, "--overwrite"] if out.exists() and any(out.iterdir()) else base
    return command


def _assert_each_epoch_once(out: Path):
    """Never a repeated or missing epoch in metrics.jsonl, even mid-crash."""
    def check(state):
        done = state["epochs"]
        if done:
            assert [m["epoch"] for m in read_metrics(out)] == list(range(1, done + 1)), state
    return check


def _train_kill_and_resume(head_run, out: Path, kills: int, seed: int) -> list[dict]:
    """Kill train-head at random points (a random time, or a random moment after a random epoch),
    each time re-running what a user would: the same command with --resume once the run exists."""
    train, val, _, seconds = head_run
    base = [sys.executable, "-m", "pipeline", "train-head", "--train-cache", str(train), "--val-cache", str(val),
            "--out", str(out), *TRAIN]
    return kill_and_resume(_resume_command(base, out), lambda: _epochs_done(out), kills=kills, seed=seed,
                           seconds=seconds, units=6, unit="epoch", min_delay=0.5, max_settle=0.5, poll=0.02,
                           check=_assert_each_epoch_once(out), env=ENV)


def _assert_same_run(out: Path, whole: Path):
    a, b = read_metrics(whole), read_metrics(out)
    assert [m["epoch"] for m in b] == [1, 2, 3, 4, 5, 6]              # each epoch once
    assert b[-1]["val_loss"] == pytest.approx(a[-1]["val_loss"], rel=0.01)
    assert b[-1]["val_loss"] == a[-1]["val_loss"]                      # CPU, same seed: exactly
    assert [m["train_loss"] for m in b] == [m["train_loss"] for m in a]
    import torch
    best = [torch.load(r / "checkpoint-best.pt", weights_only=True) for r in (whole, out)]
    assert best[0]["epoch"] == best[1]["epoch"] and best[0]["val_loss"] == best[1]["val_loss"]


def test_train_head_kill_9_at_random_points_then_resume(head_run, tmp_path):
    out = tmp_path / "run"
    _train_kill_and_resume(head_run, out, kills=2, seed=11)
    _assert_same_run(out, head_run[2])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [12, 13])
def test_train_head_kill_9_many_times(head_run, tmp_path, seed):
    out = tmp_path / "run"
    states = _train_kill_and_resume(head_run, out, kills=8, seed=seed)
    assert any(s["resume"] for s in states), states
    _assert_same_run(out, head_run[2])


@pytest.mark.parametrize("how", ["flip", "truncate", "delete"])
def test_training_on_a_damaged_cache_names_the_shard(small, tmp_path, how):
    """train-head refuses a damaged cache with one line naming the shard (before or while reading it)."""
    damaged = _copy(small[2], tmp_path / "train")
    name = _damage(damaged, how, 1)
    result = CliRunner().invoke(cli, ["train-head", "--train-cache", str(damaged), "--val-cache", str(small[2]),
                                      "--out", str(tmp_path / "run"), "--epochs", "1", "--hidden", "8",
                                      "--device", "cpu", "--workers", "0", "--quiet"])
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.output
    assert_one_line_error(result.output, name)


# ------------------------------------------------------------------------------ 3c. finetune faults

FINETUNE = ["--size", "32", "--batch-size", "3", "--epochs", "3", "--device", "cpu", "--workers", "1", "--quiet"]


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory):
    """6 train + 3 val tiny clips (and one faulty train file) and an uninterrupted 3-epoch finetune run:
    (base command, whole run dir, seconds)."""
    root = tmp_path_factory.mktemp("ft")
    videos = root / "videos"
    videos.mkdir()
    for i in range(9):
        make_video(videos / f"{300 + i}.webm", seconds=4.2, width=48, height=32, impulses=((4 + 4 * i + 0.3) / 12,))
    (videos / "399.webm").write_bytes(b"")
    train = write_annotations([BadFile(str(i), "", "") for i in (300, 301, 399, 302, 303, 304, 305)], root / "train.json")
    val = write_annotations([BadFile(str(i), "", "") for i in (306, 307, 308)], root / "val.json")
    base = [sys.executable, "-m", "pipeline", "finetune", "--videos", str(videos), "--annotations", str(train),
            "--val-annotations", str(val), *FINETUNE]
    start = time.monotonic()
    proc = subprocess.run([*base, "--out", str(root / "whole")], capture_output=True, text=True, env=ENV,
                          timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return base, root / "whole", time.monotonic() - start


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_finetune_kill_9_at_random_points_then_resume(finetune_run, tmp_path):
    """finetune killed at random points, re-run with --resume each time: every epoch logged once,
    the final val loss within 1% of the uninterrupted run, the faulty file recorded once."""
    base, whole, seconds = finetune_run
    out = tmp_path / "run"
    states = kill_and_resume(_resume_command([*base, "--out", str(out)], out), lambda: _epochs_done(out), kills=4,
                             seed=21, seconds=seconds, units=3, unit="epoch", min_delay=1.0, max_settle=2.0,
                             poll=0.05, check=_assert_each_epoch_once(out), env=ENV)
    a, b = read_metrics(whole), read_metrics(out)
    assert [m["epoch"] for m in b] == [1, 2, 3], states
    assert b[-1]["val_loss"] == pytest.approx(a[-1]["val_loss"], rel=0.01), states
    assert [json.loads(line)["id"] for line in (out / "failures.jsonl").read_text().splitlines()] == ["399"]
    assert (out / "backbone.pth.tar").exists() and (out / "backbone.safetensors").exists()


def test_finetune_run_killed_before_config_can_be_restarted(tmp_path):
    """finetune writes failures.jsonl before config.json: a kill between the two leaves a run dir that
    --resume cannot continue (no config.json), so --overwrite must be able to start it again."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        make_video(videos / f"{i}.webm", seconds=4.2, width=48, height=32)
    train = write_annotations([BadFile(str(i), "", "") for i in (0, 1)], tmp_path / "train.json")
    val = write_annotations([BadFile("2", "", "")], tmp_path / "val.json")
    out = tmp_path / "run"
    out.mkdir()
    (out / "failures.jsonl").write_text("")           # what the killed run left
    result = CliRunner().invoke(cli, ["finetune", "--videos", str(videos), "--annotations", str(train),
                                      "--val-annotations", str(val), "--out", str(out), "--overwrite",
                                      "--size", "32", "--batch-size", "2", "--epochs", "1", "--device", "cpu",
                                      "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    # a complete run, not only an exit status: its epoch logged, checkpoints and backbone written
    assert [m["epoch"] for m in read_metrics(out)] == [1]
    assert all((out / name).is_file() for name in ("config.json", "checkpoint-last.pt", "checkpoint-best.pt",
                                                   "backbone.pth.tar", "backbone.safetensors"))


def test_hdf5_flipped_length_is_caught_by_the_reader(tmp_path):
    import h5py
    n, frames = 4, 8
    c = cachemod.write_cache(tmp_path / "c", [f"i{k}" for k in range(n)], [TEMPLATE] * n,
                             np.ones((n, frames, 16), np.float32), np.full((n, frames), 0.5, np.float32),
                             [8, 7, 6, 5], fmt="hdf5", shard_size=n)
    shard = c.shard_path(0)
    with h5py.File(shard) as f:
        ds = f["length"].id
        offset = ds.get_offset() if ds.get_offset() is not None else ds.get_chunk_info(0).byte_offset
    _flip(shard, offset)
    with pytest.raises(FoleyError, match=shard.name):
        FeatureCache(tmp_path / "c").lengths
