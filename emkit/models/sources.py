"""Where a model id's weights come from, and what they are right now, without loading them.

A model id is one of three things: ``builtin:NAME``, a model emkit builds locally
(emkit.models.builtins); an existing local folder, which must be a Hugging Face model folder;
or else a hub id. ``resolve_model_source`` turns it into what from_pretrained opens;
``model_fingerprint`` and ``chat_template_digest`` say which weights and which chat template it
stands for, for cache and answer keys.
"""

from __future__ import annotations

from pathlib import Path

from emkit.errors import EmkitError
from emkit.models.builtins import builtin_model_path, builtin_name, builtin_template, builtin_version
from emkit.models.loading import no_chat_template


def resolve_model_source(model_id: str) -> str:
    """A path or hub id from_pretrained can open; builtin models are built on first use."""
    name = builtin_name(model_id)
    if name is not None:
        return str(builtin_model_path(name))
    path = Path(model_id).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise EmkitError(f"{path} has no config.json, so it is not a Hugging Face model folder; check the path.")
        return str(path)
    return model_id  # a hub id


def model_fingerprint(model_id: str) -> str:
    """Which weights a model id stands for right now, for cache keys: file sizes and times
    of a local folder, the commit of a downloaded hub snapshot, or the id itself."""
    import hashlib

    source = Path(resolve_model_source(model_id))
    if not source.is_dir():
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(model_id, local_files_only=True)).name  # the commit hash
        except Exception:
            return "unresolved"
    digest = hashlib.sha256()
    for path in sorted(source.glob("*")):
        if path.suffix in (".json", ".safetensors") and path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


TEMPLATE_FILES = ("chat_template.jinja", "tokenizer_config.json")  # where transformers keeps a chat template


def chat_template_digest(model_id: str, *, download: bool) -> str:
    """A digest of the chat template a model's prompts are rendered with, read from its files
    without loading it: part of every answer's key, so a changed template is new work.

    A hub id is read from the local hub cache, or fetched (two small files) when ``download``;
    with neither it is "unresolved", which only a dry run accepts."""
    import hashlib
    import json

    digest = hashlib.sha256()
    name = builtin_name(model_id)
    if name is not None:  # fixed by emkit's version of it: no need to build it first
        digest.update(f"{model_id}:v{builtin_version(name)}:{builtin_template(name)}".encode())
        return digest.hexdigest()[:16]
    files, known = _template_files(model_id, download)
    if not files:
        if download:
            raise EmkitError(f"Cannot read the chat template of {model_id} (no {' or '.join(TEMPLATE_FILES)} in "
                             f"its folder or the hub cache); check the id or path (a hub id needs network access).")
        return "unresolved"
    has_template = False
    for path in files:
        text = path.read_text(encoding="utf-8")
        if path.name == "tokenizer_config.json":
            try:
                template = json.loads(text).get("chat_template")
            except ValueError:
                raise EmkitError(f"{path} is not valid JSON; the model folder is damaged, download it again.") from None
            has_template = has_template or bool(template)
            text = json.dumps(template, sort_keys=True)
        else:
            has_template = has_template or bool(text.strip())
        digest.update(f"{path.name}\x00{text}\x00".encode())
    if not has_template and known:  # refused at planning, before a run directory is written or a step trained
        raise EmkitError(no_chat_template(model_id))
    return digest.hexdigest()[:16]


def _template_files(model_id: str, download: bool) -> tuple[list[Path], bool]:
    """The template files there are, and whether every one was looked for where it would be (a local
    folder, or the hub asked for those the cache lacks): only then is no template a fact."""
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        return [folder / name for name in TEMPLATE_FILES if (folder / name).is_file()], True
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.file_download import _CACHED_NO_EXIST

    found, known = [], True
    for name in TEMPLATE_FILES:
        cached = try_to_load_from_cache(model_id, name)
        if isinstance(cached, str):
            found.append(Path(cached))
        elif cached is _CACHED_NO_EXIST:  # the hub said before that the repository has no such file
            continue
        elif download:
            try:
                found.append(Path(hf_hub_download(model_id, name)))
            except Exception as exc:  # a repository without chat_template.jinja (404), or no network
                known = known and type(exc).__name__ == "EntryNotFoundError"
        else:
            known = False
    return found, known

