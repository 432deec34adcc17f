"""Attention against PyTorch: F.scaled_dot_product_attention and nn.MultiheadAttention (whose masks are inverted)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from llmbook.attention import KVCache, MultiHeadAttention, causal_mask, padding_mask, scaled_dot_product_attention

B, H, T, S, D, PAD = 2, 4, 5, 6, 16, 0
TOL = dict(rtol=1e-5, atol=1e-6)


def tokens_with_padding(length: int) -> torch.Tensor:
    tokens = torch.randint(1, 9, (B, length))
    tokens[1, length - 2:] = PAD  # right padding; the first key of every row stays real
    return tokens


def copy_into_torch_mha(ours: MultiHeadAttention) -> nn.MultiheadAttention:
    """nn.MultiheadAttention with our weights: its in_proj stacks W_q, W_k, W_v along the output dimension."""
    theirs = nn.MultiheadAttention(D, H, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.W_q.weight, ours.W_k.weight, ours.W_v.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.W_q.bias, ours.W_k.bias, ours.W_v.bias]))
        theirs.out_proj.weight.copy_(ours.W_o.weight)
        theirs.out_proj.bias.copy_(ours.W_o.bias)
    return theirs.eval()


@pytest.mark.parametrize("masking", ["none", "causal", "padding", "causal+padding"])
def test_manual_equals_fused_equals_torch(masking):
    torch.manual_seed(0)
    q, k, v = torch.randn(B, H, T, 8), torch.randn(B, H, T, 8), torch.randn(B, H, T, 8)
    mask = None
    if "causal" in masking:
        mask = causal_mask(T)
    if "padding" in masking:
        pad = padding_mask(tokens_with_padding(T), PAD)  # (B, 1, 1, T)
        mask = pad if mask is None else mask & pad  # (B, 1, T, T)
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    manual, weights = scaled_dot_product_attention(q, k, v, mask, need_weights=True, impl="manual")
    fused, no_weights = scaled_dot_product_attention(q, k, v, mask, impl="fused")
    assert_close(manual, reference, **TOL)
    assert_close(fused, reference, **TOL)
    assert no_weights is None
    assert_close(weights.sum(-1), torch.ones(B, H, T), **TOL)
    if mask is not None:
        assert bool((weights.masked_select(~mask.expand_as(weights)) == 0).all())


@pytest.mark.parametrize("impl", ["manual", "fused"])
@pytest.mark.parametrize("padding", [False, True])
def test_is_causal_equals_the_causal_mask(impl, padding):
    torch.manual_seed(1)
    q, k, v = torch.randn(B, H, T, 8), torch.randn(B, H, T, 8), torch.randn(B, H, T, 8)
    pad = padding_mask(tokens_with_padding(T), PAD) if padding else None
    mask = causal_mask(T) if pad is None else causal_mask(T) & pad
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out, _ = scaled_dot_product_attention(q, k, v, pad, impl=impl, is_causal=True)
    assert_close(out, expected, **TOL)
    with pytest.raises(ValueError, match="is_causal needs at most as many queries as keys, got 5 and 3"):
        scaled_dot_product_attention(q, k[:, :, :3], v[:, :, :3], impl=impl, is_causal=True)


def test_causal_mask_of_the_last_queries_counts_the_diagonal_from_the_lower_right():
    assert causal_mask(2, S=4).tolist() == [[True, True, True, False], [True, True, True, True]]
    assert torch.equal(causal_mask(4, S=4), causal_mask(4))
    assert torch.equal(causal_mask(3, S=5), causal_mask(5)[2:])  # the last 3 rows of the full mask
    with pytest.raises(ValueError, match=r"S \(keys\) must be >= T"):
        causal_mask(3, S=2)


@pytest.mark.parametrize("impl", ["manual", "fused"])
@pytest.mark.parametrize("n_queries", [1, 3])
def test_is_causal_with_fewer_queries_is_the_last_rows_of_full_attention(impl, n_queries):
    # After a KV cache the queries are the last positions: their outputs are the last rows of full attention.
    torch.manual_seed(3)
    q, k, v = torch.randn(B, H, T, 8), torch.randn(B, H, T, 8), torch.randn(B, H, T, 8)
    full, full_w = scaled_dot_product_attention(q, k, v, impl="manual", is_causal=True, need_weights=True)
    last, _ = scaled_dot_product_attention(q[:, :, -n_queries:], k, v, impl=impl, is_causal=True)
    assert_close(last, full[:, :, -n_queries:], **TOL)
    _, last_w = scaled_dot_product_attention(q[:, :, -n_queries:], k, v, is_causal=True, need_weights=True)
    assert_close(last_w, full_w[:, :, -n_queries:], **TOL)


@pytest.mark.parametrize("impl", ["manual", "fused"])
def test_kv_cache_one_position_at_a_time_equals_self_attention_over_all(impl):
    torch.manual_seed(4)
    attn = MultiHeadAttention(D, H, attn_impl=impl).eval()
    x = torch.randn(B, T, D)
    with torch.no_grad():
        expected, _ = attn(x, is_causal=True)
        cache = KVCache()
        first, _ = attn(x[:, :2], is_causal=True, cache=cache)  # a prompt of 2, then one position at a time
        steps = [first] + [attn(x[:, t:t + 1], is_causal=True, cache=cache)[0] for t in range(2, T)]
    assert cache.length == T and cache.keys is not None and cache.keys.shape == (B, H, T, D // H)
    assert_close(torch.cat(steps, dim=1), expected, **TOL)
    assert_close(cache.keys, attn._split_heads(attn.W_k(x)), **TOL)  # the cache holds every position's keys
    with pytest.raises(ValueError, match="batch and heads"):
        cache.append(torch.zeros(1, H, 1, D // H), torch.zeros(1, H, 1, D // H))
    with pytest.raises(ValueError, match="cache is for self-attention"):
        attn(x, context=x, cache=KVCache())


def test_bfloat16_on_the_cpu_takes_the_manual_path_with_the_same_result():
    # PyTorch's fused CPU kernel is slow in bfloat16; "fused" then computes the formula, as "manual" does.
    torch.manual_seed(2)
    q, k, v = (torch.randn(B, H, T, 8).bfloat16() for _ in range(3))
    fused, _ = scaled_dot_product_attention(q, k, v, impl="fused", is_causal=True)
    manual, _ = scaled_dot_product_attention(q, k, v, impl="manual", is_causal=True)
    assert fused.dtype == torch.bfloat16 and torch.equal(fused, manual)
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert_close(fused.float(), reference, atol=3e-2, rtol=3e-2)  # bfloat16 keeps 8 bits of mantissa


def test_true_means_may_attend():
    torch.manual_seed(3)
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    only_first_key = torch.tensor([[True, False, False]])  # (1, S): broadcasts over queries
    for impl in ("manual", "fused"):
        out, _ = scaled_dot_product_attention(q, k, v, only_first_key, impl=impl)
        assert_close(out, v[:, :, :1].expand_as(out), **TOL)


@pytest.mark.parametrize("impl", ["manual", "fused"])
@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_equals_nn_multihead_attention(impl, causal):
    torch.manual_seed(1)
    ours = MultiHeadAttention(D, H, attn_impl=impl).eval()
    theirs = copy_into_torch_mha(ours)
    x, tokens = torch.randn(B, T, D), tokens_with_padding(T)
    mask = padding_mask(tokens, PAD)  # (B, 1, 1, T), True = may attend
    if causal:
        mask = mask & causal_mask(T)  # (B, 1, T, T)
    out, weights = ours(x, mask=mask, need_weights=True)
    ref_out, ref_weights = theirs(
        x, x, x, key_padding_mask=tokens == PAD,  # theirs: True = blocked
        attn_mask=~causal_mask(T) if causal else None, average_attn_weights=False,
    )
    assert_close(out, ref_out, **TOL)
    assert_close(weights, ref_weights, **TOL)
    assert_close(ours(x, mask=mask)[0], ref_out, **TOL)  # and without asking for weights


def test_cross_attention_equals_nn_multihead_attention():
    torch.manual_seed(2)
    ours = MultiHeadAttention(D, H).eval()
    theirs = copy_into_torch_mha(ours)
    x, context, src = torch.randn(B, T, D), torch.randn(B, S, D), tokens_with_padding(S)
    out, weights = ours(x, context=context, mask=padding_mask(src, PAD), need_weights=True)
    ref_out, ref_weights = theirs(x, context, context, key_padding_mask=src == PAD, average_attn_weights=False)
    assert weights.shape == (B, H, T, S)
    assert_close(out, ref_out, **TOL)
    assert_close(weights, ref_weights, **TOL)
    assert_close(weights.sum(-1), torch.ones(B, H, T), **TOL)


def test_errors():
    q = torch.randn(1, 1, 3, 4)
    with pytest.raises(ValueError, match="boolean"):
        scaled_dot_product_attention(q, q, q, mask=torch.ones(3, 3))
    with pytest.raises(ValueError, match="impl"):
        scaled_dot_product_attention(q, q, q, impl="flash")
    with pytest.raises(ValueError, match="last dimension"):
        scaled_dot_product_attention(q, torch.randn(1, 1, 3, 5), q)
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match="attn_impl"):
        MultiHeadAttention(8, 2, attn_impl="flash")
    with pytest.raises(ValueError, match=r"\(B, T, D\)"):
        MultiHeadAttention(8, 2)(torch.randn(3, 8))
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        padding_mask(torch.tensor([1, 2, 0]), PAD)


def test_weight_by_offset_reads_a_head_that_looks_one_back():
    from llmbook.attention import weight_by_offset

    T = 6
    previous = torch.zeros(T, T)
    previous[0, 0] = 1.0
    previous[torch.arange(1, T), torch.arange(T - 1)] = 1.0  # every query puts all its weight on the key before it
    weights = torch.stack([previous, torch.eye(T)])[None].expand(2, -1, -1, -1)  # (B=2, H=2, T, T)
    real = torch.ones(2, T, dtype=torch.bool)
    real[1, 4:] = False  # the second sequence has 4 real tokens
    by_offset = weight_by_offset(weights, real, max_offset=2)  # (H, 5): offsets -2 .. 2
    assert by_offset.shape == (2, 5)
    torch.testing.assert_close(by_offset[1], torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]))
    assert by_offset[0, 1] == 1.0 and by_offset[0, 3] == 0.0  # offset -1 always, never +1
    with pytest.raises(ValueError, match="smaller max_offset"):
        weight_by_offset(weights, real, max_offset=T)
    with pytest.raises(ValueError, match=r"\(B, H, T, T\)"):
        weight_by_offset(weights[:, :, :3], real, max_offset=1)
