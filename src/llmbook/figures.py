"""Figures the chapters share: the grid of every attention head of a model, as one matplotlib figure.

Introduced in Chapter 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor


def attention_grid(attention: Tensor | np.ndarray | Sequence[Tensor], title: str, cell_inches: float = 1.2,
                   tokens: Sequence[str] | None = None) -> Figure:
    """Every head's attention as a small heatmap: one row per layer, one column per head, rows of a map are queries.

    ``attention``: (L, H, T, T) weights, or a model's ``attention_weights`` output (L tensors of (1, H, T, T) or
    (H, T, T)). Rows are labelled "layer l", columns "head h"; with ``tokens`` (at most 16) the first column and
    the last row carry them as tick labels. Every map has the same scale, 0 to 1. Introduced in Chapter 2.
    """
    weights = _as_array(attention)
    L, H, T, _ = weights.shape
    figure = Figure(figsize=(cell_inches * H + 0.8, cell_inches * L + 0.6), layout="constrained")
    axes = figure.subplots(L, H, squeeze=False)
    show_tokens = tokens is not None and len(tokens) <= 16
    if tokens is not None and len(tokens) != T:
        raise ValueError(f"tokens must have one label per position, {T}, got {len(tokens)}")
    for layer in range(L):
        for head in range(H):
            ax = axes[layer, head]
            ax.imshow(weights[layer, head], cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if layer == 0:
                ax.set_title(f"head {head + 1}", fontsize=8)
            if head == 0:
                ax.set_ylabel(f"layer {layer + 1}", fontsize=8)
            if show_tokens and tokens is not None and head == 0:
                ax.set_yticks(range(T), list(tokens), fontsize=5)
            if show_tokens and tokens is not None and layer == L - 1:
                ax.set_xticks(range(T), list(tokens), fontsize=5, rotation=90)
    figure.suptitle(title, fontsize=9)
    return figure


def _as_array(attention: Tensor | np.ndarray | Sequence[Tensor]) -> np.ndarray:
    if isinstance(attention, (list, tuple)):
        layers = [np.asarray(w.detach().float().cpu() if isinstance(w, Tensor) else w) for w in attention]
        layers = [w[0] if w.ndim == 4 else w for w in layers]  # drop a batch of 1
        weights = np.stack(layers)
    elif isinstance(attention, Tensor):
        weights = attention.detach().float().cpu().numpy()
    else:
        weights = np.asarray(attention)
    if weights.ndim != 4 or weights.shape[2] != weights.shape[3]:
        raise ValueError(f"attention must have shape (L, H, T, T), got {weights.shape}")
    return weights
