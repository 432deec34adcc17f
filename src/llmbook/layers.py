"""Transformer layers: the position-wise feed-forward network and the encoder and decoder layers.

Every sub-layer is wrapped in a residual connection and a LayerNorm. The paper (and GPT-1, BERT) normalise after the
residual sum, "post-LN": x = LN(x + f(x)). GPT-2 and most later models normalise the sub-layer's input, "pre-LN":
x = x + f(LN(x)). ``norm_first`` switches between the two.

GPT and BERT blocks are the encoder layer below: GPT with a causal mask, BERT without.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from llmbook.attention import KVCache, MultiHeadAttention

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,  # the exact, erf-based GELU (BERT)
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # the tanh approximation (GPT-1, GPT-2)
}


class FeedForward(nn.Module):
    """FFN(x) = W_2 act(W_1 x + b_1) + b_2, applied at every position independently. Introduced in Chapter 1."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "relu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.W_1 = nn.Linear(d_model, d_ff)
        self.W_2 = nn.Linear(d_ff, d_model)
        self.act = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.W_2(self.dropout(self.act(self.W_1(x))))  # (B, T, D) -> (B, T, d_ff) -> (B, T, D)


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each with residual + LayerNorm. Introduced in Chapter 1.

    ``d_ff=0`` leaves the feed-forward sub-layer (and its LayerNorm) out: an attention-only block, the toy models
    of Elhage et al. (2021) and Olsson et al. (2022) that Chapter 6 trains.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        activation: str = "relu",
        norm_first: bool = False,
        attn_impl: str = "fused",
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout, attn_impl=attn_impl)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.ff = FeedForward(d_model, d_ff, dropout, activation) if d_ff else None
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps) if d_ff else None
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False, is_causal: bool = False,
        cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """x: (B, T, D), mask broadcastable to (B, H, T, T). Returns (B, T, D) and the weights if asked.

        ``is_causal`` adds the causal mask to ``mask``: GPT's blocks are this layer with ``is_causal=True``.
        ``cache`` holds the keys and values of the positions before x (see ``MultiHeadAttention``); the layer
        adds those of x to it. Every other sub-layer acts on each position alone, so it needs no cache.

        ``need_weights`` is the layer's internal switch; models expose the weights through ``attention_weights``.
        """
        if self.norm_first:
            a, weights = self.self_attn(self.norm1(x), mask=mask, need_weights=need_weights, is_causal=is_causal,
                                        cache=cache)
            x = x + self.dropout(a)
            if self.ff is not None and self.norm2 is not None:
                x = x + self.dropout(self.ff(self.norm2(x)))
        else:
            a, weights = self.self_attn(x, mask=mask, need_weights=need_weights, is_causal=is_causal, cache=cache)
            x = self.norm1(x + self.dropout(a))
            if self.ff is not None and self.norm2 is not None:
                x = self.norm2(x + self.dropout(self.ff(x)))
        return x, weights


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention over the encoder output, feed-forward. Introduced in Chapter 1."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        activation: str = "relu",
        norm_first: bool = False,
        attn_impl: str = "fused",
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout, attn_impl=attn_impl)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout, attn_impl=attn_impl)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.ff = FeedForward(d_model, d_ff, dropout, activation)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        self_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        need_weights: bool = False,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """x: (B, T, D) targets, memory: (B, S, D) encoder output; self_mask ~ (B, H, T, T), memory_mask ~ (B, H, T, S).

        ``is_causal`` adds the causal mask to ``self_mask``. Returns (B, T, D) and, if asked, the self- and
        cross-attention weights.
        """
        if self.norm_first:
            a, self_w = self.self_attn(self.norm1(x), mask=self_mask, need_weights=need_weights, is_causal=is_causal)
            x = x + self.dropout(a)
            c, cross_w = self.cross_attn(self.norm2(x), context=memory, mask=memory_mask, need_weights=need_weights)
            x = x + self.dropout(c)
            x = x + self.dropout(self.ff(self.norm3(x)))
        else:
            a, self_w = self.self_attn(x, mask=self_mask, need_weights=need_weights, is_causal=is_causal)
            x = self.norm1(x + self.dropout(a))
            c, cross_w = self.cross_attn(x, context=memory, mask=memory_mask, need_weights=need_weights)
            x = self.norm2(x + self.dropout(c))
            x = self.norm3(x + self.dropout(self.ff(x)))
        return x, self_w, cross_w
