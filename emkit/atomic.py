"""Writing a file or a folder so that a reader sees the old one or the new one, never half of it.

Everything is written under a temporary name beside its target, ``.NAME.tmp-PID``: in the same
folder, so the rename that puts it in place is atomic; hidden (a leading dot), so nobody lists
it; with the process id, so two processes writing the same target never share a temporary. A
write that fails removes its temporary; one killed midway leaves it behind, under a name the
next writer in the same process replaces and the cleanups find (``.*.tmp-*``).

    with atomic_path(path) as tmp:      # a file or a folder: write it at tmp
        frame.to_csv(tmp)
    write_bytes_atomic(path, data, fsync=True)
    write_text_atomic(path, text)

``fsync`` flushes the file to the disk before the rename, for what a run must find after a crash
(its config, the pointer to its latest training state); a file that is written again whenever it
is missing (a report, an export) does without.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temporary_path(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: hidden, beside it, this process's own."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temporary path to write ``path`` at (a file, or a folder the caller makes there), renamed
    onto ``path`` when the block ends without an error and removed when it raises. A folder
    replaces the folder at ``path`` whole; a leftover of an earlier attempt at the temporary path
    is removed first."""
    path = Path(path)
    tmp = temporary_path(path)
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)  # a rename does not replace a folder that has files in it
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes_atomic(path, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` in one step; with ``fsync``, on the disk before it is renamed into place."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
    return path


def write_text_atomic(path, text: str, *, encoding: str = "utf-8", fsync: bool = False) -> Path:
    """Write ``text`` to ``path`` in one step (see write_bytes_atomic)."""
    return write_bytes_atomic(path, text.encode(encoding), fsync=fsync)
