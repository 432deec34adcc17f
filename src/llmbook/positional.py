"""Positional encodings: the paper's fixed sinusoids and learned position embeddings.

Both map positions 0..L-1 to vectors of size D that are added to the token embeddings.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_encoding(n_positions: int, d_model: int) -> Tensor:
    """(n_positions, d_model) table: PE[pos, 2i] = sin(pos / 10000^(2i/D)), PE[pos, 2i+1] = cos(same angle).

    Introduced in Chapter 1.
    """
    if d_model % 2 != 0:
        raise ValueError(f"d_model must be even for sinusoidal positions, got {d_model}")
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]  # (L, 1)
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)  # (D/2,)
    angles = position * inv_freq  # (L, D/2)
    pe = torch.zeros(n_positions, d_model)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoidal positions (no parameters), stored as a buffer so they move with the model.

    Introduced in Chapter 1.
    """

    pe: Tensor  # (context_length, D), a buffer

    def __init__(self, context_length: int, d_model: int) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_encoding(context_length, d_model), persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        """positions: (T,) or (B, T) integer positions -> (..., D)."""
        _check_positions(positions, self.pe.shape[0])
        return self.pe[positions]


class LearnedPositionalEmbedding(nn.Module):
    """A trained vector per position, as in GPT-1 and BERT. Introduced in Chapter 1."""

    def __init__(self, context_length: int, d_model: int) -> None:
        super().__init__()
        self.pos_emb = nn.Embedding(context_length, d_model)

    def forward(self, positions: Tensor) -> Tensor:
        """positions: (T,) or (B, T) integer positions -> (..., D)."""
        _check_positions(positions, self.pos_emb.num_embeddings)
        return self.pos_emb(positions)


def _check_positions(positions: Tensor, context_length: int) -> None:
    if positions.numel() and int(positions.max()) >= context_length:
        raise ValueError(
            f"sequence position {int(positions.max())} is past the maximum: context_length is {context_length}"
        )
