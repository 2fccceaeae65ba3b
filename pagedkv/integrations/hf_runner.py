"""Run a transformers causal LM with its KV cache in pagedkv (prefill, decode, prefix hits, forks).

Why a runner rather than a ``Cache`` subclass: a paged batch is ragged (each sequence has its own
length, block table and prefix hit), which HF's ``[batch, heads, seq, dim]`` cache interface
cannot express without padding. The runner packs the step's new tokens of all sequences into one
row (``input_ids [1, T]`` with per-token ``position_ids``), builds the step's
:class:`AttentionMetadata` once, and calls the unmodified model with the registered ``"pagedkv"``
attention; every layer writes its K/V into :class:`KVStorage` and attends through the block
tables. No padding, so outputs equal per-prompt unpadded ``model.generate``. A stock
``LlamaForCausalLM`` takes :mod:`pagedkv.integrations.native_llama` instead: the same operations
without the HF module calls (``native=False`` keeps the model call).

Lifecycle of a sequence: ``admit`` (prompt) -> ``forward`` (computes the uncached prompt suffix,
returns next-token logits) -> ``append``/``append_batch`` (the sampled token) -> ``forward`` ...
-> ``free``. ``fork`` shares a computed sequence's blocks with a new one (copy-on-write). The
not-yet-computed tokens are kept as :mod:`pagedkv.integrations.pending_tokens` describes, and
packed into one step by :mod:`pagedkv.integrations.step_builder`.

Prefix-cache visibility: a successful ``forward`` reports its sequences' KV written with
``BlockManager.commit``; only then are their full blocks findable by other prompts, so a prompt
admitted next to an uncomputed identical one misses instead of reading unwritten KV. Token ids are
checked against the model's vocabulary at ``admit``/``append`` (typed error, nothing changed); a
``generate`` that fails part-way frees every sequence it admitted, so the runner stays usable.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

from pagedkv.attention import get_attention_backend, resolve_backend
from pagedkv.core import BlockManager, CacheConfig, HashedPrompt, SlidingWindow
from pagedkv.errors import InvalidArgumentError
from pagedkv.integrations.hf_attention import (
    ATTN_IMPLEMENTATION,
    STEP_KWARG,
    PagedStep,
    register_pagedkv_attention,
)
from pagedkv.integrations.hf_call import call_model
from pagedkv.integrations.hf_positions import check_sequence_length
from pagedkv.integrations.hf_support import ModelAttention, check_model_supported
from pagedkv.integrations.native_llama import NativeLlama
from pagedkv.integrations.pending_tokens import (
    PendingTokens,
    check_not_pending,
    token_id_array,
    without_loaded,
)
from pagedkv.integrations.step_builder import build_paged_step
from pagedkv.storage import KVStorage
from pagedkv.storage._checks import check_int


class PagedModelRunner:
    """Owns a :class:`BlockManager` and a :class:`KVStorage` sized for ``model``."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        config: CacheConfig | None = None,
        block_size: int = 16,
        num_blocks: int = 256,
        enable_prefix_caching: bool = True,
        backend: str = "torch",
        native: bool = True,
        attention_spec: ModelAttention | None = None,
    ) -> None:
        self.model = model
        self.model_config: Any = model.config
        # Refuse by name before allocating; every config fact below comes from this check.
        # ``attention_spec``: its result for this very model, when the caller already has it
        # (the probe costs two forwards); a result for another model is refused.
        if attention_spec is not None and (
            not isinstance(attention_spec, ModelAttention) or not attention_spec.is_for(model)
        ):
            raise InvalidArgumentError(
                "attention_spec: expected check_model_supported's result for this model, got "
                f"{type(attention_spec).__name__} (of another model?)"
            )
        spec = attention_spec if attention_spec is not None else check_model_supported(model)
        self.attention_spec = spec
        num_layers, kv_heads, head_dim = spec.kv_dims
        if config is None:
            config = CacheConfig(
                block_size=block_size,
                num_blocks=num_blocks,
                enable_prefix_caching=enable_prefix_caching,
            )
        self.manager = BlockManager(config)
        param = next(model.parameters())
        self.storage = KVStorage.from_config(
            config,
            num_layers=num_layers,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            dtype=param.dtype,
            device=param.device,
        )
        self.backend = get_attention_backend(resolve_backend(backend, param.device))
        self.device = param.device
        self.vocab_size = spec.vocab_size  # token ids are checked against it
        # Sequences longer than this are refused (None: no limit); see hf_positions.
        self.position_limit = spec.position_limit
        register_pagedkv_attention()
        window = spec.released_window
        self.sliding_window = None if window is None else SlidingWindow(window)
        self._pending: PendingTokens = {}
        # Llama models take the direct forward (same operations, no HF module overhead) unless
        # ``native=False``; every other family, and a Llama with hooks, takes the HF path.
        full_attention = all(w is None for w in spec.windows)
        self.native = (
            NativeLlama.maybe(model, compiled=self.backend.name == "cpu")
            if native and full_attention
            else None
        )

    # ---------------------------------------------------------- bookkeeping
    def admit(
        self,
        seq_id: Hashable,
        prompt: Sequence[int] | np.ndarray | HashedPrompt,
        *,
        cache_salt: str | None = None,
        priority: int = 0,
    ) -> int:
        """Allocate blocks for a prompt; returns how many leading tokens were prefix-cache hits
        (their KV is reused, the rest is computed by the next :meth:`forward`). A
        ``HashedPrompt`` (from ``manager.hash_prompt``, with its salt) is not hashed again.
        ``priority`` is the manager's (what its ``priority`` preemption policy orders by).
        A sequence longer than :attr:`position_limit` is refused (``UnsupportedModelError``);
        :meth:`append` and :meth:`append_batch` refuse growing past it the same way."""
        if isinstance(prompt, HashedPrompt):
            ids = token_id_array(
                np.frombuffer(prompt.data, dtype=np.int64), "prompt", self.vocab_size
            )
            check_sequence_length(seq_id, len(ids), self.position_limit)
            # the salt is in the prompt's hashes; the manager refuses a second one
            hit = self.manager.admit(
                seq_id,
                prompt,
                cache_salt=cache_salt,
                priority=priority,
                sliding_window=self.sliding_window,
            )
        else:
            ids = token_id_array(prompt, "prompt", self.vocab_size)
            check_sequence_length(seq_id, len(ids), self.position_limit)
            hit = self.manager.admit(
                seq_id,
                ids,
                cache_salt=cache_salt,
                priority=priority,
                sliding_window=self.sliding_window,
            )
        self._pending[seq_id] = (hit, ids[hit:].tolist())
        return hit

    def mark_loaded(self, seq_id: Hashable, num_tokens: int) -> None:
        """The first ``num_tokens`` tokens' KV was put into the sequence's blocks from elsewhere
        (a KV tier): drop them from the pending tokens and commit them to the prefix cache.
        Leaves at least one pending token (its logits are needed)."""
        self._pending[seq_id] = without_loaded(self._pending[seq_id], num_tokens)
        self.manager.register_prefix(seq_id, num_tokens)

    def append(self, seq_id: Hashable, token_ids: Sequence[int] | np.ndarray) -> None:
        """Append tokens (e.g. the sampled one) to a sequence; computed by the next forward."""
        ids = token_id_array(token_ids, "token_ids", self.vocab_size)
        check_not_pending(self._pending, [seq_id])
        start = self.manager.num_tokens(seq_id)
        check_sequence_length(seq_id, start + len(ids), self.position_limit)
        self.manager.append(seq_id, ids)
        self._pending[seq_id] = (start, ids.tolist())

    def append_batch(
        self, seq_ids: Sequence[Hashable], token_ids: Sequence[int] | np.ndarray
    ) -> None:
        """Append one token to each sequence (the decode hot path)."""
        ids = token_id_array(token_ids, "token_ids", self.vocab_size)
        if len(ids) != len(seq_ids):
            raise InvalidArgumentError(
                f"token_ids: expected one per sequence ({len(seq_ids)}), got {len(ids)}"
            )
        check_not_pending(self._pending, seq_ids)
        starts = [self.manager.num_tokens(s) for s in seq_ids]
        for s, start in zip(seq_ids, starts, strict=True):
            check_sequence_length(s, start + 1, self.position_limit)
        self.manager.append_batch(seq_ids, ids)
        for s, start, t in zip(seq_ids, starts, ids.tolist(), strict=True):
            self._pending[s] = (start, [t])

    def fork(self, parent_id: Hashable, child_id: Hashable) -> None:
        """New sequence sharing all of the parent's (computed) tokens' blocks."""
        check_not_pending(self._pending, [parent_id])
        self.manager.fork(parent_id, child_id)

    def free(self, seq_id: Hashable) -> None:
        """Release a sequence's blocks (cached full blocks stay reusable)."""
        self.manager.free(seq_id)
        self._pending.pop(seq_id, None)

    # -------------------------------------------------------------- compute
    def build_step(
        self, seq_ids: Sequence[Hashable]
    ) -> tuple[PagedStep, torch.Tensor, torch.Tensor]:
        """Step metadata for the pending tokens of ``seq_ids``.

        Returns:
            (step, input_ids int64 ``[1, T]``, position_ids int64 ``[1, T]``).
        """
        return build_paged_step(
            seq_ids,
            self._pending,
            manager=self.manager,
            storage=self.storage,
            backend=self.backend,
            device=self.device,
        )

    @torch.inference_mode()
    def forward(self, seq_ids: Sequence[Hashable]) -> torch.Tensor:
        """Run the model on every listed sequence's pending tokens in one packed batch.

        Returns:
            float logits ``[B, vocab]`` for the last pending token of each sequence (B =
            ``len(seq_ids)``), in the model's dtype.
        """
        step, input_ids, position_ids = self.build_step(seq_ids)
        # Copy-on-write copies must land before this step's writes.
        self.storage.copy_blocks(self.manager.take_copies())
        logits = self.run_step(step, input_ids, position_ids)
        for s in seq_ids:
            del self._pending[s]
        self.manager.commit(seq_ids)  # their KV is written: full blocks become findable
        return logits

    @torch.inference_mode()
    def run_step(
        self, step: PagedStep, input_ids: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """One packed forward over a built step (no bookkeeping: the caller commits).

        Args:
            input_ids, position_ids: int64 ``[1, T]``.
        Returns:
            float logits ``[B, vocab]`` for each sequence's last token, in the model's dtype.
        """
        last = step.metadata.cu_seqlens_q[1:].to(torch.int64) - 1
        if self.native is not None and self.native.usable():
            logits: torch.Tensor = self.native.forward(step, input_ids, position_ids, last)
        else:
            out = call_model(
                self.model, ATTN_IMPLEMENTATION, input_ids, position_ids, last, **{STEP_KWARG: step}
            )
            logits = out.logits[0]
        step.check_all_layers_ran()  # a layer that bypassed pagedkv: refuse, don't guess
        return logits

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        seq_ids: Sequence[Hashable] | None = None,
        cache_salt: str | None = None,
        free: bool = True,
    ) -> list[list[int]]:
        """Greedy generation of all prompts as one continuously batched run.

        Returns the ``max_new_tokens`` generated ids of each prompt (no EOS stopping). Prompts
        are validated before anything is admitted; if the run fails part-way (e.g.
        ``OutOfBlocksError``) every sequence it admitted is freed, whatever ``free`` says, and
        the error is re-raised with the runner usable."""
        check_int(max_new_tokens, "max_new_tokens", 1)
        ids = list(seq_ids) if seq_ids is not None else [object() for _ in prompts]
        if len(ids) != len(prompts):
            raise InvalidArgumentError(f"seq_ids: expected {len(prompts)}, got {len(ids)}")
        try:
            distinct = len(set(ids)) == len(ids)
        except TypeError:
            distinct = False
        if not distinct:
            raise InvalidArgumentError(f"seq_ids: expected distinct hashable ids, got {ids}")
        toks = [token_id_array(p, f"prompts[{i}]", self.vocab_size) for i, p in enumerate(prompts)]
        out: list[list[int]] = [[] for _ in prompts]
        admitted: list[Hashable] = []
        try:
            for s, p in zip(ids, toks, strict=True):
                self.admit(s, p, cache_salt=cache_salt)
                admitted.append(s)
            next_tok = self.forward(ids).argmax(-1).tolist()
            for step in range(max_new_tokens):
                for o, t in zip(out, next_tok, strict=True):
                    o.append(int(t))
                if step == max_new_tokens - 1:
                    break
                self.append_batch(ids, next_tok)
                next_tok = self.forward(ids).argmax(-1).tolist()
        except BaseException:
            for s in admitted:
                if s in self.manager:
                    self.free(s)
            raise
        if free:
            for s in ids:
                self.free(s)
        return out

    def check_integrity(self) -> None:
        """Manager bookkeeping, storage tensors, and pending tokens of live sequences only."""
        self.manager.check_integrity()
        self.storage.check_integrity()
        for s in self._pending:
            assert s in self.manager, f"pending tokens for unknown sequence {s!r}"
