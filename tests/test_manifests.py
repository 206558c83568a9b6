"""pipeline.data manifests beyond SSv2 JSON: CSV / TSV / JSON Lines rows and folders, their errors, and
that each gives the same cache as the equivalent SSv2 JSON (pipeline.extract)."""
import json
import shutil

import numpy as np
import pytest

from pipeline.cache import FeatureCache
from pipeline.data import (FOLDER, NO_LABEL, SOUND12, clip_of_id, find_video, load_annotations, manifest_sha256,
                           window_id)
from pipeline.errors import FoleyError
from pipeline.extract import extract_features
from pipeline.media import FaultyVideo
from tests.mediakit import make_video

DROP, HIT = SOUND12[3], SOUND12[0]


def write(path, text):
    path.write_text(text)
    return path


def test_csv_rows(tmp_path):
    m = write(tmp_path / "m.csv", "video,start,label,split\nclips/a.mp4,1.5,dog,train\nb,,cat,test\n"
                                  "c.webm,0,cat,test\n")
    a, b, c = load_annotations(m)
    assert (a.id, a.video, a.start, a.label, a.template) == ("a@1500", "clips/a.mp4", 1.5, "dog", "dog")
    assert (b.id, b.video, b.start) == ("b", "b", 0.0)          # no start given: the plain stem
    assert (c.id, c.start) == ("c@0", 0.0)                      # a start given: @ms even at 0
    assert [x.id for x in load_annotations(m, classes=write(tmp_path / "k.txt", "cat\n"))] == ["b", "c@0"]


def test_tsv_and_jsonl_rows(tmp_path):
    tsv = write(tmp_path / "m.tsv", "label\tvideo\tid\nhit\tx.webm\tmine\n")
    assert [(a.id, a.video, a.label) for a in load_annotations(tsv)] == [("mine", "x.webm", "hit")]
    jl = write(tmp_path / "m.jsonl", '{"video": "x.webm", "start": 2.25}\n\n{"video": "y.mp4", "label": "k"}\n')
    a, b = load_annotations(jl)
    assert (a.id, a.start, a.label) == ("x@2250", 2.25, NO_LABEL) and (b.id, b.label) == ("y", "k")


def test_labels_file_and_sound12_filter_on_rows(tmp_path):
    m = write(tmp_path / "m.csv", f"video,label\na.webm,{DROP}\nb.webm,Juggling [something]\n")
    assert [a.id for a in load_annotations(m)] == ["a", "b"]                # other manifests: all
    assert [a.id for a in load_annotations(m, classes="sound12")] == ["a"]
    labels = write(tmp_path / "l.json", json.dumps({"Dropping something onto something": "3"}))
    with pytest.raises(FoleyError, match="line 3: label 'Juggling"):
        load_annotations(m, labels_path=labels)
    assert load_annotations(m, classes="sound12", labels_path=write(tmp_path / "l2.json", json.dumps(
        {"Dropping something onto something": "3", "Juggling something": "4"})))[0].class_index == 3


@pytest.mark.parametrize("name,content,message", [
    ("m.csv", "", "empty"),
    ("m.csv", "video,start\n", "no rows"),
    ("m.jsonl", "\n\n", "empty"),
    ("m.csv", "file,start\na.webm,1\n", "line 1: no 'video' column"),
    ("m.csv", "video,start\na.webm,soon\n", "line 2: start 'soon' is not a number"),
    ("m.csv", "video,start\na.webm,1\nb.webm,-2\n", "line 3: start '-2' must be a finite number"),
    ("m.csv", "video,start\na.webm,nan\n", "line 2: start 'nan' must be a finite"),
    ("m.csv", "video,start\n../a.webm,1\n", "line 2: video '../a.webm' must be a relative path"),
    ("m.csv", "video\nx/../../a.webm\n", "line 2: video 'x/../../a.webm'"),
    ("m.csv", "video\n/etc/passwd\n", "line 2: video '/etc/passwd'"),
    ("m.csv", "video,label\na.webm,x\n\na.mp4,y\n", "line 4: id 'a' appears more than once (first at line 2)"),
    ("m.csv", "video,start\na.webm,1\na.webm,1.0\n", "line 3: id 'a@1000' appears more than once"),
    ("m.csv", "video,id\na.webm,../b\n", "line 2: id '../b' is not a plain file name"),
    ("m.csv", "video,start\na.webm,1,extra\n", "line 2: 3 fields, the header has 2"),
    ("m.csv", "video,start\n,1\n", "line 2: no 'video'"),
    ("m.jsonl", '{"video": "a.webm"}\n{"video": "b.webm", "start": "x"}\n', "line 2: start 'x'"),
    ("m.jsonl", '{"video": "a.webm", "start": true}\n', "line 1: start True"),
    ("m.jsonl", '{"video": "a.webm"}\n{"video": \n', "line 2: not valid JSON"),
    ("m.jsonl", '["a.webm"]\n', "line 1: a row is a JSON object"),
    ("m.jsonl", '{"start": 1}\n', "line 1: no 'video'"),
])
def test_bad_manifests_are_one_line_errors_naming_file_and_line(tmp_path, name, content, message):
    path = write(tmp_path / name, content)
    with pytest.raises(FoleyError) as e:
        load_annotations(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_folder_manifest(tmp_path):
    videos = tmp_path / "videos"
    for rel in ("dogs/a.webm", "dogs/deeper/b.mp4", "cats/c.MKV", "root.webm", "cats/notes.txt", ".hidden/d.webm"):
        (videos / rel).parent.mkdir(parents=True, exist_ok=True)
        (videos / rel).write_bytes(b"x")
    found = [(a.id, a.video, a.label) for a in load_annotations(FOLDER, videos=videos)]
    assert found == [("root", "root.webm", NO_LABEL), ("c", "cats/c.MKV", "cats"), ("a", "dogs/a.webm", "dogs"),
                     ("b", "dogs/deeper/b.mp4", "dogs")]
    inner = [(a.id, a.video, a.label) for a in load_annotations(videos / "dogs", videos=videos)]
    assert inner == [("a", "dogs/a.webm", NO_LABEL), ("b", "dogs/deeper/b.mp4", "deeper")]
    assert find_video(videos, load_annotations(FOLDER, videos=videos)[1]).name == "c.MKV"
    with pytest.raises(FoleyError, match="inside it"):
        load_annotations(tmp_path, videos=videos)
    (videos / "cats" / "a.webm").write_bytes(b"x")
    with pytest.raises(FoleyError, match="'a' appears more than once"):
        load_annotations(FOLDER, videos=videos)
    with pytest.raises(FoleyError, match="no videos"):
        (videos / "empty").mkdir()
        load_annotations(videos / "empty", videos=videos)


def test_find_video_by_path_stays_inside(tmp_path):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    (videos / "sub" / "yt123.mp4").write_bytes(b"x")
    (tmp_path / "secret.webm").write_bytes(b"x")
    (videos / "link.webm").symlink_to(tmp_path / "secret.webm")
    rows = load_annotations(write(tmp_path / "m.csv", "video\nsub/yt123\nlink.webm\nsub/none.webm\n"))
    assert find_video(videos, rows[0]) == videos / "sub" / "yt123.mp4"     # extension added
    with pytest.raises(FaultyVideo) as e:
        find_video(videos, rows[1])
    assert e.value.reason == "unreadable" and "outside" in e.value.detail
    with pytest.raises(FaultyVideo) as e:
        find_video(videos, rows[2])
    assert e.value.reason == "missing"


def test_ids_and_hashes():
    assert window_id("v", 540.0) == "v@540000" and window_id("v", 1.2344) == "v@1234"
    c = clip_of_id("v@540000")
    assert (c.id, c.start) == ("v", 540.0) and clip_of_id("78687").start == 0.0
    from pipeline.data import Annotation
    ssv2 = [Annotation("1", "T", "l", None)]
    assert manifest_sha256(ssv2) == __import__("hashlib").sha256(b"1\tT").hexdigest()   # fixed
    assert manifest_sha256([Annotation("1", "T", "l", None, video="1.webm")]) != manifest_sha256(ssv2)


# --- the same clips through every layout give the same cache ---------------------------------

@pytest.fixture(scope="module")
def same_clips(tmp_path_factory):
    """Three short clips as an SSv2 dataset (videos/{id}.webm) and as a folder (by/{template}/{id}.webm)."""
    root = tmp_path_factory.mktemp("layouts")
    flat, nested = root / "videos", root / "by_class"
    flat.mkdir()
    rows = [("11", DROP, (1.04,)), ("12", DROP, (2.2,)), ("21", HIT, (0.5, 3.1))]
    for vid, template, impulses in rows:
        make_video(flat / f"{vid}.webm", seconds=4.2, width=64, height=48, impulses=impulses)
        (nested / template).mkdir(parents=True, exist_ok=True)
        shutil.copy(flat / f"{vid}.webm", nested / template / f"{vid}.webm")
    # the folder's order: sub-folders sorted ("Dropping..." < "Hitting..."), then file names
    write(root / "train.json", json.dumps([{"id": v, "template": t, "label": t, "placeholders": []}
                                           for v, t, _ in rows]))
    write(root / "rows.csv", "video,label\n" + "".join(f"{v}.webm,{t}\n" for v, t, _ in rows))
    write(root / "rows.jsonl", "".join(json.dumps({"video": v, "label": t}) + "\n" for v, t, _ in rows))
    return root


def _extract(videos, annotations, out, **extra):
    extract_features(videos=videos, annotations=annotations, out=out, size=32, classes="all", shard_size=2,
                     calibration_clips=3, progress=False, **extra)
    return FeatureCache(out)


def test_every_layout_gives_the_ssv2_cache(same_clips, tmp_path):
    ref = _extract(same_clips / "videos", same_clips / "train.json", tmp_path / "ssv2")
    assert len(ref) == 3
    others = {"csv": (same_clips / "videos", same_clips / "rows.csv"),
              "jsonl": (same_clips / "videos", same_clips / "rows.jsonl"),
              "folder": (same_clips / "by_class", FOLDER)}
    for name, (videos, annotations) in others.items():
        c = _extract(videos, annotations, tmp_path / name)
        assert c.fingerprint == ref.fingerprint, name
        assert c.ids == ref.ids and list(c.labels) == list(ref.labels), name
        for i in range(len(ref)):
            a, b = c[i], ref[i]
            np.testing.assert_array_equal(a["features"], b["features"], err_msg=name)
            np.testing.assert_array_equal(a["envelope"], b["envelope"], err_msg=name)
            assert a["length"] == b["length"]


def test_start_past_the_end_is_a_recorded_failure(same_clips, tmp_path):
    m = write(tmp_path / "m.csv", "video,start,label\n11.webm,0.5,x\n12.webm,9,x\n")
    c = _extract(same_clips / "videos", m, tmp_path / "c")
    assert c.ids == ["11@500"]
    (failure,) = c.failures
    assert failure["id"] == "12@9000" and failure["reason"] == "too_short"
    assert "past the video's end" in failure["detail"]


def test_windows_in_a_cache(same_clips, tmp_path):
    """--window-stride 1: a 4.2 s video gives windows at 0..3 s (3 s keeps 1.2 s = 14 frames), each
    recorded with its own id; the settings are in the fingerprint and the config."""
    m = write(tmp_path / "m.csv", "video,label\n21.webm,x\n")
    c = _extract(same_clips / "videos", m, tmp_path / "w", window_stride=1.0)
    assert c.ids == ["21@0", "21@1000", "21@2000", "21@3000"]
    assert list(c.lengths) == [48, 38, 26, 14]
    assert c.config["windows"] == {"stride_s": 1.0, "seconds": 4.0}
    assert c.config["manifest"]["window_stride"] == 1.0
    plain = _extract(same_clips / "videos", m, tmp_path / "p")
    assert plain.fingerprint != c.fingerprint
    # the impulse at 3.1 s is at frame 37 of the first window and frame 1 of the one at 3 s
    assert abs(int(np.argmax(c[3]["envelope"])) - 1) <= 1


def test_cli_folder_with_windows_and_a_bad_manifest(same_clips, tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import cli

    out = tmp_path / "cli"
    args = ["extract-features", "--videos", str(same_clips / "by_class"), "--annotations", "none", "--out", str(out),
            "--size", "32", "--window-stride", "2", "--calibration-clips", "2", "--quiet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    c = FeatureCache(out)
    assert c.ids == ["11@0", "11@2000", "12@0", "12@2000", "21@0", "21@2000"]     # 4.2 s: 0 and 2 s
    assert set(c.labels) == {DROP, HIT}                                          # all classes by default
    bad = write(tmp_path / "bad.csv", "video,start\n../x.webm,1\n")
    result = CliRunner().invoke(cli, ["extract-features", "--videos", str(same_clips / "videos"), "--annotations",
                                      str(bad), "--out", str(tmp_path / "bad"), "--quiet"])
    assert result.exit_code != 0 and "line 2" in result.output and "Traceback" not in result.output
