"""The run directory and its one checkpoint format (pipeline/runs.py)."""
from __future__ import annotations

import json

import pytest
import torch

from pipeline import runs
from pipeline.errors import FoleyError
from pipeline.head import Head, HeadConfig, InputTransform
from pipeline.runs import RunCheckpoint, RunDescription


def _checkpoint(description: RunDescription, head: Head) -> RunCheckpoint:
    return RunCheckpoint(description, head.state_dict(), optimizer={"state": {}}, scaler={}, epoch=2, step=6,
                         val_loss=0.5, metrics={"epoch": 2}, best_val_loss=0.4, best_epoch=1, bad_epochs=1,
                         history=[{"epoch": 1}, {"epoch": 2}], rng=[{"torch": torch.zeros(3)}],
                         config={"command": "train-head", "options": {"fc": (256, 64)}}, world_size=1)


def test_a_checkpoint_round_trips_and_holds_only_its_kinds_keys(tmp_path):
    head = Head(HeadConfig(input_dim=6, hidden=8))
    t = InputTransform("features", 6)
    common = dict(head_config=head.config.to_dict(), transform=t.state_dict(), fingerprint="f" * 64,
                  cache_config={"backbone": "toy"})
    trained = _checkpoint(RunDescription(kind="train-head", val_fingerprint="v" * 64, **common), head)
    tuned = _checkpoint(RunDescription(kind="finetune", backbone="model3d_1", size=64, pool="none", frames=12,
                                       fps=12.0, **common), head)
    trained.write(tmp_path / runs.CKPT_LAST, also=tmp_path / runs.CKPT_BEST)
    tuned.write(tmp_path / "tuned.pt")
    raw = torch.load(tmp_path / runs.CKPT_LAST, weights_only=True)      # one flat, weights_only-safe dict
    assert raw["format"] == runs.CHECKPOINT_FORMAT and raw["format_version"] == runs.CHECKPOINT_VERSION
    assert "val_fingerprint" in raw and not {"backbone", "size", "pool", "frames", "fps"} & set(raw)
    assert raw["config"]["options"]["fc"] == [256, 64]                 # tuples stored as lists
    assert (tmp_path / runs.CKPT_BEST).read_bytes() == (tmp_path / runs.CKPT_LAST).read_bytes()
    back = RunCheckpoint.read(tmp_path / runs.CKPT_BEST)
    assert back.description.fingerprint == "f" * 64 and back.description.backbone is None
    assert back.epoch == 2 and back.history == [{"epoch": 1}, {"epoch": 2}] and back.world_size == 1
    assert torch.equal(back.model["fc.0.weight"], head.state_dict()["fc.0.weight"])
    raw = torch.load(tmp_path / "tuned.pt", weights_only=True)
    assert "val_fingerprint" not in raw and raw["size"] == 64 and raw["kind"] == "finetune"
    assert RunCheckpoint.read(tmp_path / "tuned.pt").description.fps == 12.0
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_reading_refuses_what_is_not_a_run_checkpoint(tmp_path):
    with pytest.raises(FoleyError, match="no checkpoint at"):
        RunCheckpoint.read(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(FoleyError, match="cannot read checkpoint .*; start over with --overwrite") as e:
        RunCheckpoint.read(tmp_path / "junk.pt", hint="start over with --overwrite")
    assert "\n" not in str(e.value)                     # one line, whatever torch says
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(FoleyError, match="is not a foleycache run checkpoint"):
        RunCheckpoint.read(tmp_path / "other.pt")
    torch.save({"format": runs.CHECKPOINT_FORMAT, "model": {}}, tmp_path / "partial.pt")
    with pytest.raises(FoleyError, match="not a complete foleycache run checkpoint"):
        RunCheckpoint.read(tmp_path / "partial.pt")
    assert runs.read_checkpoint(tmp_path / "partial.pt")["model"] == {}     # the raw reader (pretrain's fields)


def test_prepare_run_dir_returns_the_checkpoint_to_resume_and_cleans_temporaries(tmp_path):
    out = tmp_path / "run"
    assert runs.prepare_run_dir(out, resume=False, overwrite=False) is None
    out.mkdir()
    runs.write_config(out, {"command": "train-head", "b": 1, "a": 2})
    assert (out / runs.CONFIG_JSON).read_text() == json.dumps({"command": "train-head", "b": 1, "a": 2},
                                                               indent=2) + "\n"     # its own key order
    runs.write_metrics(out, [{"epoch": 1}, {"epoch": 2}])
    assert (out / runs.METRICS_JSONL).read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    assert runs.prepare_run_dir(out, resume=True, overwrite=False) is None          # no checkpoint yet
    (out / runs.CKPT_LAST).write_bytes(b"x")
    (out / f"{runs.CKPT_LAST}.tmp-123").write_bytes(b"half")
    assert runs.prepare_run_dir(out, resume=True, overwrite=False) == out / runs.CKPT_LAST
    assert not (out / f"{runs.CKPT_LAST}.tmp-123").exists()
    assert runs.read_run_config(out)["command"] == "train-head"
    (out / runs.CONFIG_JSON).write_text("{")
    with pytest.raises(FoleyError, match="not valid JSON.*start over with --overwrite"):
        runs.read_run_config(out)
    with pytest.raises(FoleyError, match="contradict"):
        runs.prepare_run_dir(out, resume=True, overwrite=True)
