import os

import pytest
import torch

from infdepth.io import append_jsonl, atomic_torch_save, read_jsonl, write_json


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch) -> None:
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save({"step": 1}, path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"step": 2}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert torch.load(path)["step"] == 1


def test_jsonl_round_trip_ignores_a_torn_last_line(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"step": 1, "w": torch.tensor(1.5)})
    append_jsonl(path, {"step": 2})
    with open(path, "a") as fh:
        fh.write('{"step": 3, "lo')  # a crash mid-line
    assert read_jsonl(path) == [{"step": 1, "w": 1.5}, {"step": 2}]


def test_write_json_converts_tensors_and_paths(tmp_path) -> None:
    write_json(tmp_path / "a.json", {"t": torch.arange(3), "p": tmp_path})
    assert (tmp_path / "a.json").read_text().count("\n") > 2
