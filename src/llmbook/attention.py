"""Scaled dot-product attention and multi-head attention.

Mask convention, used everywhere in llmbook: a boolean mask where ``True`` means "this query may attend to this
key". It matches ``F.scaled_dot_product_attention`` and is the opposite of ``nn.MultiheadAttention``, whose masks
mark blocked positions. Masks broadcast against the attention scores of shape (B, H, T, S).

A ``KVCache`` keeps the keys and values a self-attention layer has computed, so that decoding one more token
computes one query, one key and one value per layer instead of the whole prefix again (Chapter 4).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTN_IMPLS = ("manual", "fused")


def causal_mask(T: int, device: torch.device | str | None = None, S: int | None = None) -> Tensor:
    """(T, T) boolean mask, True on and below the diagonal: position t sees positions 0..t only.

    With ``S`` keys (S >= T), the (T, S) mask of the last T of S positions (the queries after a ``KVCache``): query
    i sits at position S - T + i and sees keys 0..S - T + i, the diagonal counted from the lower right corner.
    Introduced in Chapter 1.
    """
    S = T if S is None else S
    if S < T:
        raise ValueError(f"S (keys) must be >= T (queries), got S={S} and T={T}")
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)  # (T, S)


def banded_mask(T: int, window: int, device: torch.device | str | None = None, S: int | None = None) -> Tensor:
    """(T, S) boolean mask of locally banded causal attention: query t (at position S - T + t) sees the ``window``
    positions ending at its own, max(0, p - window + 1) .. p. GPT-3 alternates such layers with dense ones (its
    section 2.1, after the Sparse Transformer); with ``window >= S`` the band is the causal mask. Introduced in
    Chapter 6.
    """
    if not (isinstance(window, int) and window >= 1):
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    causal = causal_mask(T, device=device, S=S)  # (T, S)
    too_old = torch.ones_like(causal).tril(diagonal=causal.shape[1] - T - window)  # keys window or more back
    return causal & ~too_old


def padding_mask(tokens: Tensor, pad_id: int) -> Tensor:
    """(B, 1, 1, S) boolean mask, True where the key token is not padding.

    Introduced in Chapter 1.
    """
    if tokens.dim() != 2:
        raise ValueError(f"tokens must have shape (B, S), got {tuple(tokens.shape)}")
    return (tokens != pad_id)[:, None, None, :]


def weight_by_offset(weights: Tensor, real: Tensor, max_offset: int) -> Tensor:
    """Mean attention weight on the key at each offset (key position - query position) from -max_offset to
    +max_offset: (B, H, T, T) self-attention weights -> (H, 2 * max_offset + 1).

    ``real`` (B, T) is True on real tokens; only real (query, key) pairs at that offset count. A head that scores
    keys by their offset shows one high entry at every query position. Introduced in Chapter 1.
    """
    if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2] or real.shape != (weights.shape[0],
                                                                                        weights.shape[2]):
        raise ValueError(f"weights must be (B, H, T, T) self-attention and real (B, T), got {tuple(weights.shape)} "
                         f"and {tuple(real.shape)}")
    if not isinstance(max_offset, int) or max_offset < 0:
        raise ValueError(f"max_offset must be an integer >= 0, got {max_offset!r}")
    T = weights.shape[-1]
    offset = torch.arange(T, device=weights.device)[None, :] - torch.arange(T, device=weights.device)[:, None]
    pairs = (real[:, :, None] & real[:, None, :]).to(weights.dtype)  # (B, T, T): both query and key are real
    rows = []
    for k in range(-max_offset, max_offset + 1):
        at_k = pairs * (offset == k)  # (B, T, T)
        n = at_k.sum()
        if n == 0:
            raise ValueError(f"no pair of real tokens is {k} positions apart: use a smaller max_offset")
        rows.append((weights * at_k[:, None]).sum(dim=(0, 2, 3)) / n)  # (H,)
    return torch.stack(rows, dim=1)  # (H, 2 * max_offset + 1)


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    dropout_p: float = 0.0,
    need_weights: bool = False,
    impl: str = "manual",
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """softmax(q k^T / sqrt(Dh)) v, the paper's equation (1).

    q: (..., T, Dh), k: (..., S, Dh), v: (..., S, Dv); mask broadcastable to (..., T, S), True = may attend.
    ``is_causal=True`` adds the causal mask (query t sees keys 0..t). Without another mask the fused path then
    builds no mask tensor, which lets PyTorch pick its causal kernels (on GPUs the flash kernels, which a mask
    tensor rules out and which skip the blocks above the diagonal). With fewer queries than keys (T < S, after a
    ``KVCache``) the queries are the last T positions (``causal_mask(T, S=S)``); a single query sees every key.
    ``impl="manual"`` is the teaching path and can return the attention weights; ``impl="fused"`` calls
    ``F.scaled_dot_product_attention`` (same result, faster, no weights). Introduced in Chapter 1.
    """
    if impl not in ATTN_IMPLS:
        raise ValueError(f"impl must be one of {ATTN_IMPLS}, got {impl!r}")
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"mask must be a boolean tensor (True = may attend), got dtype {mask.dtype}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share their last dimension, got {q.shape[-1]} and {k.shape[-1]}")
    # In bfloat16 on the CPU, PyTorch's fused kernel is slower than the two matmuls of the manual path (its backward
    # took 4x its float32 time at Chapter 2's shapes), so bfloat16 on the CPU computes the formula below.
    fused = impl == "fused" and not need_weights and not (q.device.type == "cpu" and q.dtype == torch.bfloat16)
    T, S = q.shape[-2], k.shape[-2]
    if is_causal:
        if T > S:
            raise ValueError(f"is_causal needs at most as many queries as keys, got {T} and {S}")
        if fused and mask is None and T == S:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True), None
        if T > 1:  # (F.scaled_dot_product_attention's own is_causal counts the diagonal from the upper left)
            causal = causal_mask(T, device=q.device, S=S)  # (T, S)
            mask = causal if mask is None else mask & causal
        # T == 1 < S: the one query is the last position, which sees every key: no mask to add.
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p), None

    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, (weights if need_weights else None)


class KVCache:
    """The keys and values (B, H, S, Dh) one self-attention layer has computed so far; empty at first.

    ``append`` adds those of T new positions and returns all of them, (B, H, S + T, Dh) each: a decoding step then
    projects only its new tokens. The cache grows by concatenation (simple, and a copy per step). Introduced in
    Chapter 4.
    """

    def __init__(self) -> None:
        self.keys: Tensor | None = None  # (B, H, S, Dh)
        self.values: Tensor | None = None  # (B, H, S, Dh)

    @property
    def length(self) -> int:
        """S, the number of positions cached."""
        return 0 if self.keys is None else self.keys.shape[2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """k, v: (B, H, T, Dh) of T new positions -> the cached and new keys and values, (B, H, S + T, Dh) each."""
        if self.keys is None or self.values is None:
            self.keys, self.values = k, v
        else:
            if k.shape[:2] != self.keys.shape[:2]:
                raise ValueError(f"new keys have batch and heads {tuple(k.shape[:2])}, the cache "
                                 f"{tuple(self.keys.shape[:2])}")
            self.keys = torch.cat([self.keys, k], dim=2)  # (B, H, S + T, Dh)
            self.values = torch.cat([self.values, v], dim=2)
        return self.keys, self.values


class MultiHeadAttention(nn.Module):
    """Multi-head attention: H heads of size Dh = D / H, each attending in its own projected subspace.

    Self-attention when ``context`` is None, cross-attention (queries from ``x``, keys and values from ``context``)
    otherwise. Introduced in Chapter 1.
    """

    def __init__(
        self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True, attn_impl: str = "fused"
    ) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.dropout = dropout
        self.attn_impl = attn_impl
        self.W_q = nn.Linear(d_model, d_model, bias=bias)
        self.W_k = nn.Linear(d_model, d_model, bias=bias)
        self.W_v = nn.Linear(d_model, d_model, bias=bias)
        self.W_o = nn.Linear(d_model, d_model, bias=bias)

    def _split_heads(self, x: Tensor) -> Tensor:
        B, L, D = x.shape
        return x.view(B, L, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, L, Dh)

    def forward(
        self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None, need_weights: bool = False,
        is_causal: bool = False, cache: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """x: (B, T, D), context: (B, S, D) or None. Returns (B, T, D) and, if asked, weights (B, H, T, S).

        ``is_causal`` adds the causal mask to ``mask`` (see ``scaled_dot_product_attention``). With a ``cache``
        (self-attention only), x holds the T positions after the S cached ones: their keys and values join the
        cache and the queries attend over all S + T (weights (B, H, T, S + T)).
        """
        if x.dim() != 3:
            raise ValueError(f"x must have shape (B, T, D), got {tuple(x.shape)}")
        if cache is not None and context is not None:
            raise ValueError("cache is for self-attention: pass context=None with a cache")
        context = x if context is None else context
        B, T, D = x.shape
        q = self._split_heads(self.W_q(x))  # (B, H, T, Dh)
        k = self._split_heads(self.W_k(context))  # (B, H, S, Dh)
        v = self._split_heads(self.W_v(context))  # (B, H, S, Dh)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, H, S + T, Dh): the cached positions, then these
        out, weights = scaled_dot_product_attention(
            q, k, v, mask=mask, dropout_p=self.dropout if self.training else 0.0,
            need_weights=need_weights, impl=self.attn_impl, is_causal=is_causal,
        )
        out = out.transpose(1, 2).reshape(B, T, D)  # (B, T, H*Dh) = (B, T, D)
        return self.W_o(out), weights
