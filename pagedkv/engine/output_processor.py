"""After sampling: record the token, detokenise, decide whether the sample stops, and cut the
text a stream may show.

Stop strings may span tokens and the decoded text of a token can change once the next token
arrives (a multi-byte character split across tokens decodes to U+FFFD until completed). So while
a sample runs, a stream is sent only text that can no longer change: the last ``len(longest
stop) - 1`` characters and any trailing U+FFFD are held back. The final output carries the rest.
"""

from __future__ import annotations

from typing import Any

from pagedkv.engine.request import EngineSeq
from pagedkv.engine.sample_types import Sampled


class OutputProcessor:
    """Per-engine detokeniser and stop checker. ``tokenizer`` may be None (token ids only)."""

    def __init__(self, tokenizer: Any, eos_token_ids: list[int], max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = set(eos_token_ids)
        self.max_model_len = max_model_len

    def suppressed_ids(self, seq: EngineSeq) -> list[int]:
        """Tokens that may not be sampled yet: EOS and stop tokens before ``min_tokens``."""
        p = seq.request.params
        if len(seq.output_ids) >= p.min_tokens:
            return []
        banned = set(p.stop_token_ids)
        if not p.ignore_eos:
            banned |= self.eos_token_ids
        return sorted(banned)

    def add_token(self, seq: EngineSeq, sampled: Sampled) -> None:
        """Append ``sampled`` to ``seq`` and its output; set ``finish_reason`` if it stops."""
        seq.tokens.append(sampled.token)
        out, p = seq.output, seq.request.params
        out.token_ids.append(sampled.token)
        out.delta_token_ids.append(sampled.token)
        if out.logprobs is not None and sampled.top_logprobs is not None:
            out.logprobs.append(sampled.top_logprobs)
            out.cumulative_logprob = (out.cumulative_logprob or 0.0) + (sampled.logprob or 0.0)
        text = self._decode(seq)
        n_out = len(out.token_ids)
        token = sampled.token
        if n_out >= p.min_tokens:
            if token in self.eos_token_ids and not p.ignore_eos:
                out.finish_reason, out.stop_reason = "stop", None
            elif token in p.stop_token_ids:
                out.finish_reason, out.stop_reason = "stop", token
            else:
                hit = self._find_stop(text, p.stop, seq.num_text_sent)  # never retract sent text
                if hit is not None:
                    pos, stop = hit
                    text = text[: pos + len(stop)] if p.include_stop_str_in_output else text[:pos]
                    out.finish_reason, out.stop_reason = "stop", stop
        if out.finish_reason is None and (
            n_out >= p.max_tokens or len(seq.tokens) >= self.max_model_len
        ):
            out.finish_reason = "length"
        self._emit(seq, text)

    def _decode(self, seq: EngineSeq) -> str:
        if self.tokenizer is None:
            return ""
        text: str = self.tokenizer.decode(
            seq.output_ids, skip_special_tokens=seq.request.params.skip_special_tokens
        )
        return text

    @staticmethod
    def _find_stop(text: str, stops: list[str], start: int = 0) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for s in stops:
            i = text.find(s, start)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        return best

    @staticmethod
    def _emit(seq: EngineSeq, text: str) -> None:
        """Move the text that can no longer change into ``output.text`` / ``delta_text``."""
        out = seq.output
        if out.finish_reason is None:
            hold = max((len(s) for s in seq.request.params.stop), default=1) - 1
            safe = len(text) - hold
            while safe > 0 and text[safe - 1] == "\ufffd":
                safe -= 1
            safe = max(safe, seq.num_text_sent)
        else:
            safe = len(text)
        out.delta_text += text[seq.num_text_sent : safe]
        out.text = text[:safe]
        seq.num_text_sent = safe
