"""core.durable: a file is replaced whole or not at all, no temporary file is left behind, modes are applied."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.durable import durable_file, replace_durably


def test_replace_durably_writes_new_content_with_the_given_mode(tmp_path: Path) -> None:
    target = tmp_path / "card.json"
    target.write_bytes(b"old")
    replace_durably(target, b"new", mode=0o644)
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "weights.safetensors"
    target.write_bytes(b"complete weights")
    with pytest.raises(RuntimeError, match="card invalid"), durable_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("card invalid")
    assert target.read_bytes() == b"complete weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.safetensors"]


def test_a_writer_killed_mid_write_leaves_the_old_file(tmp_path: Path) -> None:
    """A process killed (SIGKILL) while writing through durable_file: the target keeps its old content."""
    target = tmp_path / "state.json"
    target.write_bytes(b'{"last_change": 1}')
    script = (
        "import os, signal, sys\n"
        "from core.durable import durable_file\n"
        f"with durable_file({str(target)!r}) as tmp:\n"
        "    tmp.write_bytes(b'{\"last_ch')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1], check=False)
    assert done.returncode == -9
    assert target.read_bytes() == b'{"last_change": 1}'
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "state.json"]
    assert all(name.startswith(".state.json.") and name.endswith(".tmp") for name in leftovers)


def test_temporary_files_start_private(tmp_path: Path) -> None:
    with durable_file(tmp_path / "secret") as tmp:
        assert tmp.parent == tmp_path and tmp.stat().st_mode & 0o077 == 0
        tmp.write_bytes(b"x")
    assert (tmp_path / "secret").stat().st_mode & 0o077 == 0
    assert os.listdir(tmp_path) == ["secret"]
