"""GPT-3: Table 2.1's sizes counted exactly, Table D.1's compute, and the locally banded attention switch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmbook.attention import banded_mask, causal_mask
from llmbook.config import count_parameters
from llmbook.gpt import GPT, GPTConfig, gpt_parameter_count
from llmbook.gpt3 import GPT3_TRAINING_TOKENS, TABLE_2_1, attention_score_flops, confirmed_width, gpt3_config
from llmbook.scaling import PF_DAY, training_flops


@pytest.mark.parametrize("size", TABLE_2_1, ids=lambda s: s.name)
def test_closed_form_count_is_the_built_model_and_table_d1(size):
    config = gpt3_config(size.name)
    with torch.device("meta"):
        built = count_parameters(GPT(config))
    assert gpt_parameter_count(config) == built
    assert abs(built / (size.table_d1_millions * 1e6) - 1) < 0.0035  # XL is the farthest: 1,315.7M vs 1,320M


def test_two_rows_print_a_width_their_heads_do_not_make_and_table_d1_settles_both():
    odd = {s.name: s for s in TABLE_2_1 if s.d_model != s.n_heads * s.d_head}
    assert list(odd) == ["GPT-3 XL", "GPT-3 13B"]
    xl, b13 = odd["GPT-3 XL"], odd["GPT-3 13B"]
    assert xl.d_model % xl.n_heads and b13.d_model % b13.n_heads  # neither printed width splits into its heads
    counts = {}
    for size in (xl, b13):
        for width in (size.d_model, size.n_heads * size.d_head):
            config = dataclasses.replace(gpt3_config(size.name), d_model=width, n_heads=width // 128 if width % 128
                                         == 0 else 1, d_ff=4 * width)
            counts[size.name, width] = gpt_parameter_count(config)
    assert counts["GPT-3 XL", 2048] == 1_315_723_264 and counts["GPT-3 XL", 3072] > 2.8e9
    assert counts["GPT-3 13B", 5120] == 12_853_386_240 and counts["GPT-3 13B", 5140] == 12_952_938_780
    assert confirmed_width(xl) == 2048 and confirmed_width(b13) == 5120  # XL keeps d_model, 13B keeps the heads
    assert gpt3_config("GPT-3 XL").n_heads == 16 and gpt3_config("GPT-3 13B").n_heads == 40


def test_table_d1_compute_is_6nd_at_300b_tokens():
    big = TABLE_2_1[-1]
    flops = training_flops(big.table_d1_millions * 1e6, GPT3_TRAINING_TOKENS)
    assert flops == pytest.approx(3.14e23, rel=0.002)
    assert flops / PF_DAY == pytest.approx(3.64e3, rel=0.002)
    small = training_flops(TABLE_2_1[0].table_d1_millions * 1e6, GPT3_TRAINING_TOKENS)
    assert small == pytest.approx(2.25e20, rel=0.001)


def test_unknown_size_is_refused():
    with pytest.raises(ValueError, match="GPT-3 Small"):
        gpt3_config("GPT-3 Huge")
    with pytest.raises(ValueError, match="local_window"):
        GPTConfig(vocab_size=10, context_length=8, d_model=8, n_heads=2, n_layers=2, d_ff=16, local_window=-1)


def test_banded_mask_sees_the_last_window_positions():
    mask = banded_mask(6, 3)
    for t in range(6):
        assert mask[t].nonzero().flatten().tolist() == list(range(max(0, t - 2), t + 1))
    assert torch.equal(banded_mask(5, 5), causal_mask(5)) and torch.equal(banded_mask(5, 50), causal_mask(5))
    assert torch.equal(banded_mask(2, 3, S=6), banded_mask(6, 3)[-2:])  # the queries after a cache
    assert torch.equal(banded_mask(4, 1), torch.eye(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="window"):
        banded_mask(4, 0)


def _tiny(window, attn_impl="fused"):
    config = GPTConfig(vocab_size=20, context_length=16, d_model=16, n_heads=2, n_layers=4, d_ff=32, dropout=0.0,
                       norm_first=True, final_norm=True, local_window=window, attn_impl=attn_impl)
    torch.manual_seed(0)
    return GPT(config).eval()


def test_a_band_as_wide_as_the_context_is_dense_attention():
    tokens = torch.randint(0, 20, (3, 16))
    dense, wide = _tiny(0), _tiny(16)
    wide.load_state_dict(dense.state_dict())
    torch.testing.assert_close(wide(tokens), dense(tokens))
    narrow = _tiny(4)
    narrow.load_state_dict(dense.state_dict())
    assert not torch.allclose(narrow(tokens), dense(tokens), atol=1e-4)


@pytest.mark.parametrize("attn_impl", ["fused", "manual"])
def test_banded_layers_alternate_with_dense_ones_and_stay_causal(attn_impl):
    model = _tiny(3, attn_impl)
    tokens = torch.randint(0, 20, (2, 12))
    weights = model.attention_weights(tokens)
    band, causal = banded_mask(12, 3), causal_mask(12)
    for i, w in enumerate(weights):
        allowed = band if i % 2 == 1 else causal
        assert torch.all(w[..., ~allowed] == 0), f"layer {i} attends outside its pattern"
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))
    assert torch.all(weights[0][..., 11, :9].sum(-1) > 0)  # layer 0 is dense: the last query sees the start
    changed = tokens.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 20
    torch.testing.assert_close(model(changed)[:, :8], model(tokens)[:, :8])  # the future does not leak back


def test_the_cache_gives_the_same_logits_with_bands():
    model = _tiny(3)
    tokens = torch.randint(0, 20, (2, 10))
    full = model(tokens)
    cache = model.new_cache()
    steps = [model(tokens[:, :4], cache)] + [model(tokens[:, t:t + 1], cache) for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_attention_score_flops_dense_and_banded():
    assert attention_score_flops(4, 8) == 4 * 8 * 10  # pairs 1 + 2 + 3 + 4
    assert attention_score_flops(4, 8, window=2) == 4 * 8 * (1 + 2 + 2 + 2)
    assert attention_score_flops(4, 8, window=4) == attention_score_flops(4, 8)
    dense, banded = attention_score_flops(2048, 128), attention_score_flops(2048, 128, window=256)
    assert banded / dense == pytest.approx((256 * 257 / 2 + 1792 * 256) / (2048 * 2049 / 2))
    for bad in (dict(seq_len=0, d_model=1), dict(seq_len=2, d_model=1, window=0)):
        with pytest.raises(ValueError):
            attention_score_flops(**bad)
