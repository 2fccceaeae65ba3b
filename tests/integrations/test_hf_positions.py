"""Models whose tokens depend on more than each token's own ``position_ids`` are refused by name,
or computed only where they are exact (issue 16).

pagedkv packs every request of a step into one row, each token at its own ``position_ids``.
Reference: per-prompt unpadded ``model.generate``. Tiny seeded random configs, offline.
"""

from __future__ import annotations

import pytest
import torch
from hf_helpers import TINY_TEXT, hf_greedy, seeded_prompts

from pagedkv.errors import UnsupportedModelError
from pagedkv.integrations import PagedModelRunner
from pagedkv.integrations.hf_support import check_model_supported

transformers = pytest.importorskip("transformers")

LLAMA = TINY_TEXT
# Bart-style decoders: positions from the cache length, position_ids ignored.
BART_STYLE = {
    "size": {
        "d_model": 64,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 128,
        "decoder_ffn_dim": 128,
        "vocab_size": 128,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "decoder_start_token_id": 2,
    },
    "families": ["Bart", "BlenderbotSmall", "MBart", "Marian", "Pegasus", "PLBart"],
}


def _llama(**over):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**LLAMA, **over})).eval()
    model.generation_config.eos_token_id = None
    return model


@pytest.mark.parametrize("family", BART_STYLE["families"])
def test_decoders_that_ignore_position_ids_are_refused(family):
    """Their decode tokens would all get position 0 in pagedkv's packed row."""
    cfg = getattr(transformers, f"{family}Config")(**BART_STYLE["size"])
    model = getattr(transformers, f"{family}ForCausalLM")(cfg).eval()
    with pytest.raises(UnsupportedModelError, match=rf"^{family}ForCausalLM: .*position_ids"):
        PagedModelRunner(model, block_size=4, num_blocks=10**9)  # refused before allocating


def test_packed_probe_sees_positions_taken_from_the_row():
    """A Llama whose RoPE uses the row index instead of position_ids: identical to its default
    on a single 0..T-1 sequence, so only the packed probe row can see it."""
    model = _llama()
    rotary = model.model.rotary_emb
    forward = rotary.forward
    rotary.forward = lambda x, position_ids: forward(
        x, torch.arange(position_ids.shape[-1], device=x.device)[None]
    )
    with pytest.raises(UnsupportedModelError, match=r"^LlamaForCausalLM: layer 0: .*position_ids"):
        check_model_supported(model)


def _longrope_phi3():
    half = 8  # head_dim 16 / 2
    cfg = transformers.Phi3Config(
        **LLAMA,
        max_position_embeddings=128,
        original_max_position_embeddings=32,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": [1.0] * half,
            "long_factor": [float(4 + i) for i in range(half)],
            "original_max_position_embeddings": 32,
        },
    )
    torch.manual_seed(0)
    model = transformers.Phi3ForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = None
    return model


@pytest.mark.parametrize(
    ("make", "limit", "feature"),
    [
        (_longrope_phi3, 32, "longrope"),
        (
            lambda: _llama(
                max_position_embeddings=32,
                rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
            ),
            32,
            "dynamic RoPE",
        ),
    ],
    ids=["longrope", "dynamic"],
)
def test_batch_dependent_rope_is_exact_up_to_its_limit_and_refused_past_it(make, limit, feature):
    """transformers picks these RoPE frequencies from the longest position of the whole forward:
    a 3-token request batched with a 40-token one went wrong. Within the original context the
    packed batch is exact; a sequence growing past it is refused, nothing changed."""
    model = make()
    runner = PagedModelRunner(model, block_size=4, num_blocks=64)
    assert runner.position_limit is not None
    assert runner.position_limit.tokens == limit
    prompts = seeded_prompts([3, 20])
    n = limit - 20
    assert runner.generate(prompts, n) == [hf_greedy(model, p, n) for p in prompts]
    with pytest.raises(UnsupportedModelError, match=rf"\b{limit + 1} tokens.*{feature}"):
        runner.admit("long", list(range(3, limit + 4)))
    assert "long" not in runner.manager
    runner.admit("a", list(range(3, limit + 3)))
    runner.forward(["a"])
    with pytest.raises(UnsupportedModelError, match=feature):
        runner.append("a", [5])
    with pytest.raises(UnsupportedModelError, match=feature):
        runner.append_batch(["a"], [5])
    assert runner.manager.num_tokens("a") == limit
    runner.check_integrity()


def test_llama4_temperature_tuning_is_refused_by_name():
    """With attention_chunk_size=None, Llama 4's temperature tuning takes positions from the
    cache length (arange(T)): a decode token got its row index in the packed batch."""
    cfg = transformers.Llama4TextConfig(
        **{**LLAMA, "intermediate_size_mlp": 128, "num_local_experts": 2},
        attention_chunk_size=None,
    )
    model = transformers.Llama4ForCausalLM(cfg).eval()
    with pytest.raises(UnsupportedModelError, match="temperature tuning"):
        PagedModelRunner(model, block_size=4, num_blocks=16)


def _loaded(model, max_model_len):
    from pagedkv.models import LoadedModel

    return LoadedModel(model, None, "tiny", [], max_model_len, has_chat_template=False)


def test_engine_caps_max_model_len_at_the_position_limit():
    """Requests past the exact length are refused at validation, not in the middle of a step."""
    from pagedkv.engine import LLMEngine

    engine = LLMEngine(_loaded(_longrope_phi3(), 128), num_blocks=64, block_size=4)
    assert engine.max_model_len == 32


def test_engine_refuses_a_model_before_reading_its_config():
    """RWKV's config has no num_attention_heads: a typed refusal, not an AttributeError."""
    from pagedkv.engine import LLMEngine

    cfg = transformers.RwkvConfig(hidden_size=64, num_hidden_layers=2, vocab_size=128)
    model = transformers.RwkvForCausalLM(cfg).eval()
    with pytest.raises(UnsupportedModelError, match=r"^RwkvForCausalLM: no layer calls"):
        LLMEngine(_loaded(model, 64), num_blocks=8, block_size=4)
