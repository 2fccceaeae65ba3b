"""Models that escaped the support check untyped, or were accepted and then failed every request
(issue 16): each is now refused with ``UnsupportedModelError`` naming the model, or runs exactly.

Assertions name the model class and a phrase of ours, never an upstream message.
"""

from __future__ import annotations

import pytest
import torch
from hf_helpers import TINY_TEXT

from pagedkv.errors import UnsupportedModelError
from pagedkv.integrations import PagedModelRunner

transformers = pytest.importorskip("transformers")

TEXT = TINY_TEXT
CONFIG = "its config does not describe a decoder pagedkv can lay out"


def _hf_greedy(model, prompt, n):
    ids = torch.tensor([prompt])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


def _refused(model, match):
    with pytest.raises(UnsupportedModelError, match=f"^{type(model).__name__}: {match}"):
        PagedModelRunner(model.eval(), block_size=4, num_blocks=10**9)


def test_recurrent_model_is_refused_typed():
    """RWKV has no attention layers (and no num_attention_heads: an AttributeError before)."""
    cfg = transformers.RwkvConfig(hidden_size=64, num_hidden_layers=2, vocab_size=128)
    _refused(transformers.RwkvForCausalLM(cfg), "no layer calls transformers' attention")


def test_config_that_raises_on_read_is_refused_typed():
    """Gemma 4's config raises its own error on a global head_dim."""
    cfg = transformers.Gemma4TextConfig(**TEXT, head_dim=16)
    _refused(transformers.Gemma4ForCausalLM(cfg), CONFIG)


def test_config_without_top_level_sizes_is_refused_typed():
    """GOT-OCR2 keeps vocab_size and num_hidden_layers in text_config."""
    cfg = transformers.GotOcr2Config(
        text_config=TEXT,
        vision_config={
            "hidden_size": 32,
            "output_channels": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
            "mlp_dim": 64,
            "global_attn_indexes": [0],
        },
    )
    _refused(transformers.GotOcr2ForConditionalGeneration(cfg), CONFIG)


def test_model_that_rejects_the_runners_call_is_refused():
    """WhisperForCausalLM was accepted, then every request failed on logits_to_keep: the probe
    now makes the runner's own call, and Whisper hands that argument on to attention."""
    cfg = transformers.WhisperConfig(
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        vocab_size=128,
        max_target_positions=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    _refused(
        transformers.WhisperForCausalLM(cfg), r"attention keyword arguments \['logits_to_keep'\]"
    )


@pytest.mark.parametrize(
    ("cfg_cls", "model_cls", "over"),
    [
        # Afmoe .view()s the attention output: a single-sequence prefill used to fail with
        # "view size is not compatible" (our output was a transposed view).
        (
            "AfmoeConfig",
            "AfmoeForCausalLM",
            {
                "head_dim": 16,
                "num_experts": 4,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": 32,
                "sliding_window": 4,
                "global_attn_every_n_layers": 2,
            },
        ),
        # GLM: partial (half) and interleaved rotary, from position_ids: exact.
        ("GlmConfig", "GlmForCausalLM", {"head_dim": 16}),
    ],
)
@pytest.mark.parametrize("lengths", [[9], [3, 9]], ids=["alone", "batched"])
def test_generation_matches_hf_alone_and_batched(cfg_cls, model_cls, over, lengths):
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**TEXT, **over))
    model.eval().generation_config.eos_token_id = None
    runner = PagedModelRunner(model, block_size=4, num_blocks=64)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in lengths]
    assert runner.generate(prompts, 8) == [_hf_greedy(model, p, 8) for p in prompts]
    runner.check_integrity()


def test_model_whose_call_fails_is_refused_typed():
    """A model that cannot take the runner's call (here: no logits_to_keep) is refused at
    construction, not at every request."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TEXT)).eval()
    forward = model.forward

    def no_logits_to_keep(*args, logits_to_keep=0, **kwargs):
        if not isinstance(logits_to_keep, int):
            raise TypeError("logits_to_keep must be an int")
        return forward(*args, logits_to_keep=logits_to_keep, **kwargs)

    model.forward = no_logits_to_keep
    _refused(model, "the model call pagedkv makes .* failed: TypeError")
