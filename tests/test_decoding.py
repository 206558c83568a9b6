"""pipeline.decoding: manifest entries decoded in DataLoader workers, faulty ones as failure records."""
from __future__ import annotations

import pytest
from torch.utils.data import Dataset

from pipeline.data import Annotation
from pipeline.decoding import decode_loader, load_entry
from pipeline.media import FaultyVideo
from tests.mediakit import make_video


def _entry(video_id: str) -> Annotation:
    return Annotation(id=video_id, template="Dropping [something]", label="Dropping a pen", class_index=None)


@pytest.fixture
def videos(tmp_path):
    make_video(tmp_path / "good.webm", seconds=1.5, width=32, height=24)
    (tmp_path / "empty.webm").write_bytes(b"")
    return tmp_path


def test_a_good_entry_gives_its_clip_and_the_file_found(videos):
    clip, path = load_entry(videos, _entry("good"), 16, 12, 32)
    assert path == videos / "good.webm" and clip.frames.shape == (3, 16, 32, 32) and clip.length == 16


@pytest.mark.parametrize("video_id, reason, path", [("empty", "unreadable", "empty.webm"), ("gone", "missing", "gone")])
def test_a_faulty_entry_records_its_reason_and_path(videos, video_id, reason, path):
    """The record names the file found, or where it was looked for when there is none."""
    with pytest.raises(FaultyVideo) as info:
        load_entry(videos, _entry(video_id), 16, 12, 32)
    record = info.value.record(video_id)
    assert record == {"id": video_id, "path": str(videos / path), "reason": reason, "detail": info.value.detail}


class _Entries(Dataset):
    def __init__(self, videos):
        self.videos, self.ids = videos, ["good", "gone", "good"]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, k):
        try:
            return {"length": load_entry(self.videos, _entry(self.ids[k]), 16, 12, 32)[0].length}
        except FaultyVideo as e:
            return {"failure": e.record(self.ids[k])}


def test_decode_loader_gives_items_in_order_from_a_worker(videos):
    items = list(decode_loader(_Entries(videos), workers=1))
    assert [("failure" in item) for item in items] == [False, True, False]
    assert items[1]["failure"]["reason"] == "missing" and items[0]["length"] == 16
