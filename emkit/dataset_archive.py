"""Getting the papers' datasets onto disk: `emkit data unprotect` and `emkit data list`.

Turner, Soligo et al. publish their training sets as ``training_datasets.zip.enc``, an
archive made with the PyPI package easy-dataset-share (a Fernet-encrypted zip with canary
files added, and sometimes canary rows embedded, to detect training on it). emkit opens it
with that package, removes the canaries, checks every JSONL file it keeps, and moves them
into its data directory. Decrypted files are written only there, readable by the user
alone; a wrong password or a broken file leaves the data directory as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from emkit.datasets import load_chats
from emkit.errors import EmkitError
from emkit.locations import data_dir

log = logging.getLogger("emkit")

PAPERS_PASSWORD = "model-organisms-em-datasets"  # published with the archive (the papers' README)
CANARY_PATTERN = "dataset_entry_*.jsonl"
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


@dataclass
class Extracted:
    name: str
    path: Path
    rows: int
    published_rows: int | None = None
    domain: str | None = None


def ensure_private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    os.chmod(path, PRIVATE_DIR)
    return path


def _import_easy_dataset_share():
    try:
        from easy_dataset_share import canary, zipping
    except ImportError:
        raise EmkitError("Opening the papers' archive needs easy-dataset-share: pip install easy-dataset-share.") from None
    return canary, zipping


def _remove_canaries(folder: Path) -> int:
    canary, _ = _import_easy_dataset_share()
    files = canary.detect_canary_files(str(folder), CANARY_PATTERN)
    marker = canary.extract_canary_string_from_content(files[0]) if files else None
    canary.remove_canary_files(root_dir=str(folder), canary_pattern=CANARY_PATTERN)
    if marker:
        canary.remove_canaries_from_files(str(folder), marker)  # rows embedded in the data files
    return len(files)


def unprotect(archive: Path, password: str | None, domains: list, target: Path | None = None) -> list[Extracted]:
    """Decrypt ``archive`` into the data directory; return what was written where."""
    archive = Path(archive)
    if not archive.is_file():
        raise EmkitError(f"{archive} does not exist; pass the path of training_datasets.zip.enc.")
    _, zipping = _import_easy_dataset_share()
    target = ensure_private_dir(Path(target) if target else data_dir())
    staging = Path(tempfile.mkdtemp(prefix=".unprotect-", dir=target))  # inside the private directory
    try:
        try:
            zipping.unzip_and_decrypt(str(archive), password, str(staging))
        except ValueError:
            raise EmkitError(
                f"{archive}: decryption failed, so the password is wrong; pass --password (the papers' archive "
                f"uses the default, {PAPERS_PASSWORD!r})."
            ) from None
        except Exception as exc:  # zipfile.BadZipFile and friends
            raise EmkitError(f"{archive}: not an archive emkit can open ({type(exc).__name__}: {exc}).") from None
        removed = _remove_canaries(staging)
        log.info("removed %d canary files", removed)
        found = sorted(p for p in staging.rglob("*.jsonl") if p.is_file())
        if not found:
            raise EmkitError(f"{archive} holds no .jsonl datasets; check that it is the papers' archive.")
        by_file = {d.dataset_file: d for d in domains}
        names = [p.name for p in found]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate:
            raise EmkitError(f"{archive} holds two files named {duplicate}; emkit keeps datasets by file name.")
        checked = [(path, len(load_chats(path))) for path in found]  # every file valid before any is moved
        extracted = []
        for path, rows in checked:
            final = target / path.name
            os.chmod(path, PRIVATE_FILE)
            os.replace(path, final)
            domain = by_file.get(path.name)
            extracted.append(Extracted(path.name, final, rows, domain.published_rows if domain else None,
                                       domain.name if domain else None))
        return extracted
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def dataset_status(domains: list, folder: Path | None = None) -> list[dict]:
    """Per domain: its file, whether it is in the data directory, its rows and the published count."""
    from emkit.datasets import count_rows

    folder = Path(folder) if folder else data_dir()
    status = []
    for domain in sorted(domains, key=lambda d: d.name):
        path = folder / domain.dataset_file
        present = path.is_file()
        status.append({
            "domain": domain.name, "file": domain.dataset_file, "present": present, "path": str(path),
            "rows": count_rows(path) if present else None, "published_rows": domain.published_rows,
        })
    known = {d.dataset_file for d in domains}
    if folder.is_dir():
        for path in sorted(folder.glob("*.jsonl")):
            if path.name not in known:
                status.append({"domain": None, "file": path.name, "present": True, "path": str(path),
                               "rows": count_rows(path), "published_rows": None})
    return status
