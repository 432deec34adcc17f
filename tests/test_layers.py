"""Encoder and decoder layers against nn.TransformerEncoderLayer / nn.TransformerDecoderLayer; positional encodings."""

import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from llmbook.attention import KVCache, causal_mask, padding_mask
from llmbook.config import count_parameters
from llmbook.layers import DecoderLayer, EncoderLayer, FeedForward
from llmbook.positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding, sinusoidal_encoding

B, T, S, D, H, D_FF, PAD = 2, 5, 6, 16, 4, 32, 0
TOL = dict(rtol=1e-5, atol=1e-5)


def torch_layer_to_ours(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Key map from nn.Transformer{Encoder,Decoder}Layer to our layers; torch stacks W_q, W_k, W_v in in_proj."""
    renames = {"multihead_attn.": "cross_attn.", "linear1.": "ff.W_1.", "linear2.": "ff.W_2.",
               "out_proj.": "W_o."}
    ours = {}
    for key, value in state_dict.items():
        for theirs, mine in renames.items():
            key = key.replace(theirs, mine)
        if "in_proj_" in key:
            prefix, param = key.split(".in_proj_")  # e.g. "cross_attn", "weight"
            for name, chunk in zip(("W_q", "W_k", "W_v"), value.chunk(3), strict=True):
                ours[f"{prefix}.{name}.{param}"] = chunk
        else:
            ours[key] = value
    return ours


def randomize_layer_norms(module: nn.Module) -> None:
    """LayerNorms start at gain 1, bias 0; perturb them so that a swapped norm would show in the outputs."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.add_(0.5 * torch.randn_like(m.weight))
                m.bias.add_(0.5 * torch.randn_like(m.bias))


def source_with_padding():
    src = torch.randint(1, 9, (B, S))
    src[1, -2:] = PAD
    return src


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_layer_equals_torch(norm_first, activation):
    torch.manual_seed(0)
    theirs = nn.TransformerEncoderLayer(D, H, D_FF, dropout=0.1, activation=activation, batch_first=True,
                                        norm_first=norm_first)
    randomize_layer_norms(theirs)
    ours = EncoderLayer(D, H, D_FF, dropout=0.1, activation=activation, norm_first=norm_first)
    ours.load_state_dict(torch_layer_to_ours(theirs.state_dict()), strict=True)
    ours.eval(), theirs.eval()
    x, src = torch.randn(B, S, D), source_with_padding()
    out, weights = ours(x, mask=padding_mask(src, PAD), need_weights=True)
    assert_close(out, theirs(x, src_key_padding_mask=src == PAD), **TOL)  # theirs: True = padding
    assert weights.shape == (B, H, S, S)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("impl", ["manual", "fused"])
def test_decoder_layer_equals_torch(norm_first, impl):
    torch.manual_seed(1)
    theirs = nn.TransformerDecoderLayer(D, H, D_FF, dropout=0.1, batch_first=True, norm_first=norm_first)
    randomize_layer_norms(theirs)
    ours = DecoderLayer(D, H, D_FF, dropout=0.1, norm_first=norm_first, attn_impl=impl)
    ours.load_state_dict(torch_layer_to_ours(theirs.state_dict()), strict=True)
    ours.eval(), theirs.eval()
    x, memory, src = torch.randn(B, T, D), torch.randn(B, S, D), source_with_padding()
    out, self_w, cross_w = ours(x, memory, causal_mask(T), padding_mask(src, PAD), need_weights=True)
    expected = theirs(x, memory, tgt_mask=~causal_mask(T), memory_key_padding_mask=src == PAD)
    assert_close(out, expected, **TOL)
    assert self_w.shape == (B, H, T, T) and cross_w.shape == (B, H, T, S)
    assert bool((self_w.triu(diagonal=1) == 0).all())  # causal: no weight on later positions
    assert bool((cross_w[1, :, :, -2:] == 0).all())  # no weight on source padding


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_with_a_kv_cache_equals_the_causal_layer_over_all_positions(norm_first):
    torch.manual_seed(5)
    layer = EncoderLayer(D, H, D_FF, norm_first=norm_first).eval()
    randomize_layer_norms(layer)
    x = torch.randn(B, 7, D)
    with torch.no_grad():
        expected, _ = layer(x, is_causal=True)
        cache = KVCache()
        steps = [layer(x[:, :3], is_causal=True, cache=cache)[0]]
        steps += [layer(x[:, t:t + 1], is_causal=True, cache=cache)[0] for t in range(3, 7)]
    assert cache.length == 7
    assert_close(torch.cat(steps, dim=1), expected, **TOL)


def test_layers_are_deterministic_in_eval_and_dropout_acts_in_train():
    torch.manual_seed(2)
    layer, x = EncoderLayer(D, H, D_FF, dropout=0.5), torch.randn(B, S, D)
    layer.eval()
    assert torch.equal(layer(x)[0], layer(x)[0])
    layer.train()
    assert not torch.equal(layer(x)[0], layer(x)[0])


def test_feed_forward_activations_and_errors():
    torch.manual_seed(3)
    ff, x = FeedForward(D, D_FF, activation="gelu_tanh"), torch.randn(B, T, D)
    expected = ff.W_2(nn.functional.gelu(ff.W_1(x), approximate="tanh"))
    assert_close(ff(x), expected, **TOL)
    with pytest.raises(ValueError, match="activation"):
        FeedForward(D, D_FF, activation="swish")


def test_sinusoidal_table_is_the_papers_formula():
    L, d = 12, 10
    pe = sinusoidal_encoding(L, d)
    for pos in range(L):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert math.isclose(pe[pos, 2 * i], math.sin(angle), abs_tol=1e-5)
            assert math.isclose(pe[pos, 2 * i + 1], math.cos(angle), abs_tol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_shifting_by_k_is_a_fixed_rotation(k):
    """PE(pos + k) = M_k PE(pos) with M_k block-diagonal 2x2 rotations, the same for every pos (the paper's claim)."""
    L, d = 64, 16
    pe = sinusoidal_encoding(L, d).double()  # (L, D)
    omega = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (D/2,)
    c, s = torch.cos(k * omega), torch.sin(k * omega)
    # [sin(a + b), cos(a + b)] = [[cos b, sin b], [-sin b, cos b]] @ [sin a, cos a]
    M_k = torch.block_diag(*[torch.tensor([[ci, si], [-si, ci]]) for ci, si in zip(c, s, strict=True)])  # (D, D)
    assert_close(pe[k:], pe[:-k] @ M_k.T, rtol=0, atol=1e-4)
    assert_close(M_k @ M_k.T, torch.eye(d, dtype=torch.float64))  # a rotation: dot products depend only on k


def test_positional_modules_shapes_and_length_errors():
    sin, learned = SinusoidalPositionalEncoding(8, D), LearnedPositionalEmbedding(8, D)
    positions = torch.arange(8)
    assert_close(sin(positions), sinusoidal_encoding(8, D))
    assert learned(positions).shape == (8, D) and learned(positions[None].expand(B, -1)).shape == (B, 8, D)
    assert count_parameters(sin) == 0
    assert count_parameters(learned) == 8 * D
    for module in (sin, learned):
        with pytest.raises(ValueError, match="context_length is 8"):
            module(torch.arange(9))
    with pytest.raises(ValueError, match="even"):
        sinusoidal_encoding(4, 7)
