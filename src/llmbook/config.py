"""Validation shared by the model configs (TransformerConfig, GPTConfig, BertConfig).

Each config is a frozen dataclass that calls ``check_model_config`` from ``__post_init__``: a bad value raises a
ValueError that names the field and what is allowed. Introduced in Chapter 1.
"""

from __future__ import annotations

from typing import Any

from llmbook.attention import ATTN_IMPLS
from llmbook.layers import ACTIVATIONS


def check_model_config(config: Any, positive_ints: tuple[str, ...], booleans: tuple[str, ...] = ()) -> None:
    """Check the fields every Transformer-family config has, plus the named positive-int and boolean fields."""
    for name in positive_ints:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name in booleans:
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"{name} must be True or False, got {getattr(config, name)!r}")
    if config.d_model % config.n_heads != 0:
        raise ValueError(f"d_model ({config.d_model}) must be divisible by n_heads ({config.n_heads})")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {config.dropout!r}")
    if config.activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {config.activation!r}")
    if config.attn_impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {config.attn_impl!r}")
    if not config.layer_norm_eps > 0:
        raise ValueError(f"layer_norm_eps must be > 0, got {config.layer_norm_eps!r}")
