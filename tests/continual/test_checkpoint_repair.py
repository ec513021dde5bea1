"""A continual checkpoint save killed between its two renames (new tensors, old JSON) is repaired on the next read:
the tensors' header carries the metadata, so the pair is consistent again and the run resumes."""

from __future__ import annotations

import json

import torch

from kshot.continual.checkpoint import META, TENSORS, load_checkpoint, read_meta, save_checkpoint


def test_new_tensors_with_the_old_json_are_repaired_from_the_header(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.zeros(3)}, {"phase": 1, "acc": [[0.5]], "seconds": 1.0})
    old_json = (tmp_path / META).read_bytes()
    save_checkpoint(tmp_path, {"w": torch.ones(3)}, {"phase": 2, "acc": [[0.5, 0.7]], "seconds": 2.0})
    (tmp_path / META).write_bytes(old_json)  # the kill landed between the tensors' rename and the JSON's
    assert read_meta(tmp_path)["phase"] == 2
    tensors, meta = load_checkpoint(tmp_path)
    assert torch.equal(tensors["w"], torch.ones(3)) and meta["acc"] == [[0.5, 0.7]] and "seconds" not in meta
    assert json.loads((tmp_path / META).read_text())["token"] == meta["token"]
    assert not [p.name for p in tmp_path.iterdir() if p.name not in (META, TENSORS)]  # no temporary file


def test_a_consistent_checkpoint_is_left_byte_identical(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.arange(4.0)}, {"phase": 1, "seconds": 3.5})
    before = (tmp_path / META).read_bytes()
    assert load_checkpoint(tmp_path)[1]["seconds"] == 3.5
    assert (tmp_path / META).read_bytes() == before
