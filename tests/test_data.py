"""pipeline.data: SSv2 annotations, class filter, id validation, video lookup."""
import json
import os

import pytest

from pipeline.data import SOUND12, find_video, load_annotations, load_labels, template_key, validate_id
from pipeline.errors import FoleyError
from pipeline.media import FaultyVideo


def write(path, obj):
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def entry(i, template="Dropping [something] onto [something]"):
    return {"id": str(i), "label": template.replace("[", "").replace("]", ""), "template": template,
            "placeholders": ["a", "b"]}


def test_sound12_filter_all_and_file(tmp_path):
    ann = write(tmp_path / "a.json", [entry(1), entry(2, "Pushing [something] from left to right"),
                                      entry(3, SOUND12[11])])
    assert [a.id for a in load_annotations(ann)] == ["1", "3"]
    assert [a.id for a in load_annotations(ann, classes="all")] == ["1", "2", "3"]
    classes = write(tmp_path / "c.txt", "# mine\nPushing [something] from left to right\n\n")
    assert [a.id for a in load_annotations(ann, classes=classes)] == ["2"]


def test_labels_file_gives_class_index(tmp_path):
    ann = write(tmp_path / "a.json", [entry(1)])
    labels = write(tmp_path / "l.json", {"Dropping something onto something": "12"})
    assert load_annotations(ann, labels_path=labels)[0].class_index == 12
    assert load_labels(labels) == {template_key("Dropping [something] onto [something]"): 12}


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ({"id": 1}, "JSON list"),
    ([], "empty"),
    ([{"template": SOUND12[0]}], "no 'id'"),
    ([{"id": "1"}], "no 'template'"),
    ([entry(1), entry(1)], "more than once"),
    ([entry("../etc/passwd")], "not a plain file name"),
    ([entry("a/b")], "not a plain file name"),
    ([entry("a\\b")], "not a plain file name"),
    ([entry(1, "Pushing [something]")], "none of its 1 entries"),
    (["just a string"], "not an object"),
])
def test_malformed_annotations_are_one_line_errors(tmp_path, content, message):
    path = write(tmp_path / "bad.json", content)
    with pytest.raises(FoleyError) as e:
        load_annotations(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_unknown_template_with_labels_file(tmp_path):
    ann = write(tmp_path / "a.json", [entry(1, "Juggling [something]")])
    labels = write(tmp_path / "l.json", {"Dropping something onto something": "0"})
    with pytest.raises(FoleyError, match="not in the labels file"):
        load_annotations(ann, classes="all", labels_path=labels)


def test_missing_files_and_bad_classes(tmp_path):
    with pytest.raises(FoleyError, match="does not exist"):
        load_annotations(tmp_path / "none.json")
    ann = write(tmp_path / "a.json", [entry(1)])
    with pytest.raises(FoleyError, match="--classes"):
        load_annotations(ann, classes="nonexistent-classes")


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", ".hidden", " 1", "a\x00b", None, 1.5])
def test_validate_id_refuses_paths(bad):
    with pytest.raises(FoleyError):
        validate_id(bad)


def test_find_video_extensions_and_escapes(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "1.mp4").write_bytes(b"x")
    (videos / "2.webm").write_bytes(b"x")
    (videos / "2.mp4").write_bytes(b"x")
    assert find_video(videos, "1").name == "1.mp4"
    assert find_video(videos, "2").name == "2.webm"
    with pytest.raises(FaultyVideo) as e:
        find_video(videos, "3")
    assert e.value.reason == "missing"
    outside = tmp_path / "secret.webm"
    outside.write_bytes(b"x")
    os.symlink(outside, videos / "4.webm")
    with pytest.raises(FaultyVideo) as e:
        find_video(videos, "4")
    assert e.value.reason == "unreadable" and "outside" in e.value.detail
    with pytest.raises(FoleyError):
        find_video(videos, "../secret")


def test_ssv2_json_keeps_its_ids_and_lookup(tmp_path):
    """An SSv2 entry names no path: its video is found by id, it starts at 0, and any extension but
    .csv/.tsv/.jsonl/.ndjson is read as SSv2 JSON."""
    from pipeline.data import manifest_kind

    ann = write(tmp_path / "list.txt", [entry(7)])
    (a,) = load_annotations(ann)
    assert (a.id, a.video, a.start, a.template) == ("7", None, 0.0, "Dropping [something] onto [something]")
    assert manifest_kind(ann) == "ssv2" and manifest_kind(tmp_path / "x.CSV") == "rows"
    (tmp_path / "7.mkv").write_bytes(b"x")
    assert find_video(tmp_path, a) == tmp_path / "7.mkv"
