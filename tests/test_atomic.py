"""emkit.atomic: a file or a folder is replaced whole or not at all, under a hidden temporary name."""

import os

import pytest

from emkit.atomic import atomic_path, temporary_path, write_bytes_atomic, write_text_atomic


def test_a_file_is_replaced_in_one_step_under_a_hidden_name_of_this_process(tmp_path):
    target = tmp_path / "config.toml"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp == tmp_path / f".config.toml.tmp-{os.getpid()}" == temporary_path(target)
        tmp.write_text("new")
        assert target.read_text() == "old"  # a reader sees the old file until the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]
    write_bytes_atomic(target, b"bytes", fsync=True)
    assert target.read_bytes() == b"bytes"
    write_text_atomic(target, "text \u00e9\n")
    assert target.read_text(encoding="utf-8") == "text \u00e9\n"


def test_a_folder_replaces_the_folder_there_whole(tmp_path):
    target = tmp_path / "step-000010"
    target.mkdir()
    (target / "stale.pt").write_text("from a run killed before it was recorded")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "adapter.safetensors").write_text("weights")
    assert sorted(p.name for p in target.iterdir()) == ["adapter.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000010"]


@pytest.mark.parametrize("folder", [False, True])
def test_a_failed_write_leaves_the_old_target_and_no_temporary(tmp_path, folder):
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            if folder:
                tmp.mkdir()
                (tmp / "part").write_text("half")
            else:
                tmp.write_text("half")
            raise RuntimeError("killed midway")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]


def test_a_leftover_temporary_of_an_earlier_attempt_is_replaced(tmp_path):
    target = tmp_path / "adapter"
    leftover = temporary_path(target)
    leftover.mkdir()
    (leftover / "half.bin").write_text("half")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "whole.bin").write_text("whole")
    assert sorted(p.name for p in target.iterdir()) == ["whole.bin"]
    assert not leftover.exists()
