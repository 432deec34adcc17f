"""What the model families share: typed config validation, one check of token ids, one parameter count.

Configs (``TransformerConfig``, ``GPTConfig``, ``BertConfig`` and the trainer's ``TrainerConfig``) are frozen
dataclasses that check every field in ``__post_init__`` with the ``check_*`` helpers below. Integers must be ``int``
(not ``bool``, not ``float``), real numbers ``int`` or ``float`` (not ``bool``, not ``str``), strings come from a
fixed set; a bad value raises a ValueError that names the field and what is allowed.

Models check the token ids they are given with ``check_token_ids`` (a TypeError for a wrong type or dtype, a
ValueError for a wrong shape or an id out of range), and reject a sequence made only of padding with
``check_attends_somewhere``: attention over no key at all is 0 / 0, NaN with manual attention. Introduced in
Chapter 1.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection
from typing import Any

import torch
from torch import Tensor, nn

from llmbook.attention import ATTN_IMPLS
from llmbook.layers import ACTIVATIONS

# The dtypes nn.Embedding accepts as indices.
TOKEN_DTYPES = (torch.int64, torch.int32)
_SHAPES = {1: "(T,)", 2: "(B, T)", 3: "(B, K, T)"}


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def is_int(value: Any) -> bool:
    """True for an int, False for a bool (``True`` is an int to Python, not a size) and for a NumPy integer."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """True for a finite int or float (NumPy's float64 is a float), False for a bool, a string, NaN or infinity.

    Only these survive ``json.dumps``, which stores the trainer's config in its checkpoints.
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _interval(minimum: float | None, maximum: float | None, min_open: bool, max_open: bool) -> str:
    if minimum is not None and maximum is not None:
        return f" in {'(' if min_open else '['}{minimum}, {maximum}{')' if max_open else ']'}"
    if minimum is not None:
        return f" {'>' if min_open else '>='} {minimum}"
    if maximum is not None:
        return f" {'<' if max_open else '<='} {maximum}"
    return ""


def check_int(
    config: Any, name: str, minimum: int | None = None, maximum: int | None = None, *, allowed: str | None = None,
    optional: bool = False,
) -> None:
    """Field ``name`` of ``config`` must be an int in [minimum, maximum] (None also, if ``optional``).

    ``allowed`` replaces the generated description of the allowed values in the message.
    """
    value = getattr(config, name)
    if optional and value is None:
        return
    if not (is_int(value) and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)):
        allowed = allowed or ("a positive integer" if (minimum, maximum) == (1, None)
                              else "an integer" + _interval(minimum, maximum, False, False))
        raise ValueError(f"{name} must be {allowed}{' or None' if optional else ''}, got {_show(value)}")


def check_real(
    config: Any, name: str, minimum: float | None = None, maximum: float | None = None, *, min_open: bool = False,
    max_open: bool = False, optional: bool = False,
) -> None:
    """Field ``name`` must be a finite real number (int or float) between the bounds; open bounds are excluded."""
    value = getattr(config, name)
    if optional and value is None:
        return
    ok = is_real(value) and (
        (minimum is None or (value > minimum if min_open else value >= minimum))
        and (maximum is None or (value < maximum if max_open else value <= maximum))
    )
    if not ok:
        allowed = "a real number" + _interval(minimum, maximum, min_open, max_open)
        raise ValueError(f"{name} must be {allowed}{' or None' if optional else ''}, got {_show(value)}")


def check_bool(config: Any, name: str) -> None:
    """Field ``name`` must be True or False (not 0 or 1)."""
    value = getattr(config, name)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {_show(value)}")


def check_choice(config: Any, name: str, choices: Collection[str]) -> None:
    """Field ``name`` must be one of the strings ``choices``."""
    value = getattr(config, name)
    if not (isinstance(value, str) and value in choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {_show(value)}")


def check_model_config(config: Any, positive_ints: tuple[str, ...], booleans: tuple[str, ...] = ()) -> None:
    """Check the fields every Transformer-family config has, plus the named positive-int and boolean fields."""
    for name in positive_ints:
        check_int(config, name, 1)
    for name in booleans:
        check_bool(config, name)
    if config.d_model % config.n_heads != 0:
        raise ValueError(f"d_model ({config.d_model}) must be divisible by n_heads ({config.n_heads})")
    check_real(config, "dropout", 0, 1, max_open=True)
    check_choice(config, "activation", sorted(ACTIVATIONS))
    check_choice(config, "attn_impl", ATTN_IMPLS)
    check_real(config, "layer_norm_eps", 0, min_open=True)


def check_pad_id(config: Any, vocab_size: int, vocab_name: str = "vocab_size") -> None:
    """``config.pad_id`` must be a token id: an integer in [0, vocab_size)."""
    check_int(config, "pad_id", 0, vocab_size - 1, allowed=f"an integer in [0, {vocab_name}={vocab_size})")


def check_token_ids(
    tokens: Tensor, vocab_size: int, *, name: str = "tokens", context_length: int | None = None,
    ndim: int | tuple[int, ...] | None = 2, vocab_name: str = "vocab_size",
) -> None:
    """Check that ``tokens`` holds ids an embedding of ``vocab_size`` rows can look up.

    A tensor of dtype int64 or int32 (what ``nn.Embedding`` takes), with ``ndim`` dimensions (2: (B, T); None: any),
    at most ``context_length`` positions in its last dimension, every id in [0, vocab_size). Raises a TypeError for
    a wrong type or dtype and a ValueError otherwise, naming ``name``. Introduced in Chapter 1.
    """
    if not isinstance(tokens, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.dtype not in TOKEN_DTYPES:
        raise TypeError(
            f"{name} must hold integer token ids of dtype torch.int64 or torch.int32 (what nn.Embedding takes), "
            f"got {tokens.dtype}"
        )
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if dims is not None and tokens.dim() not in dims:
        shapes = " or ".join(_SHAPES.get(d, f"{d} dimensions") for d in dims)
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(tokens.shape)}")
    if context_length is not None and tokens.dim() and tokens.shape[-1] > context_length:
        raise ValueError(f"{name} has length {tokens.shape[-1]}, more than context_length={context_length}")
    if tokens.numel():
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"{name} must hold ids in [0, {vocab_name}={vocab_size}), got values from {low} to {high}"
            )


def check_attends_somewhere(keep: Tensor, name: str, what: str) -> None:
    """Every row of ``keep`` (B, ..., S), True where a key may be attended to, must keep at least one key.

    A row of padding only leaves attention nothing to attend to: NaN with manual attention, an arbitrary finite
    vector with the fused kernel. ``what`` says what a real token is, e.g. "a token other than pad_id=0".
    Introduced in Chapter 1.
    """
    if keep.numel() == 0 and keep.shape[-1] != 0:
        return
    empty = ~keep.any(dim=-1)  # (B, ...): True where a query has no key
    if keep.dim() > 1:
        empty = empty.reshape(empty.shape[0], -1).any(dim=1)  # (B,)
    if bool(empty.any()):
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(
            f"every {name} row needs {what}; rows {rows} are all padding, so attention has nothing to attend to"
        )


def count_parameters(model: nn.Module) -> int:
    """Number of distinct trainable parameters (a tied matrix counts once). Introduced in Chapter 1."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


SCALES = ("cpu", "gpu")
_CUT_KEYS = ("steps", "eval_every")  # the endings of the keys that LLMBOOK_MAX_STEPS cuts


def chapter_hyperparameters(table: dict[str, dict[str, Any]], device: torch.device) -> tuple[str, dict[str, Any]]:
    """A chapter's scale and its hyperparameters: ``table["gpu"]`` on a CUDA device, ``table["cpu"]`` otherwise.

    Environment variables serve the book's checks. ``LLMBOOK_SCALE`` (cpu or gpu) picks the scale whatever the
    device, so that a CPU can run the GPU scale. ``LLMBOOK_MAX_STEPS=N`` cuts every step count (the value of a key
    that ends in "steps") and every evaluation interval (a key that ends in "eval_every") to at most N, and
    ``LLMBOOK_MAX_EXAMPLES=M`` every example count (a key that starts with "n_", such as n_test) to at most M, so
    that such a run goes end to end in minutes; its numbers then mean nothing. Introduced in Chapter 1.
    """
    if set(table) != set(SCALES):
        raise ValueError(f"table must have the keys {SCALES}, got {sorted(table)}")
    scale = os.environ.get("LLMBOOK_SCALE") or ("gpu" if device.type == "cuda" else "cpu")
    if scale not in SCALES:
        raise ValueError(f"LLMBOOK_SCALE must be one of {SCALES}, got {scale!r}")
    hp = dict(table[scale])
    for variable, cut in (("LLMBOOK_MAX_STEPS", lambda k: k.endswith(_CUT_KEYS)),
                          ("LLMBOOK_MAX_EXAMPLES", lambda k: k.startswith("n_"))):
        cap = os.environ.get(variable)
        if not cap:
            continue
        if not cap.isdigit() or int(cap) < 1:
            raise ValueError(f"{variable} must be a positive integer, got {cap!r}")
        hp.update({k: min(v, int(cap)) for k, v in hp.items() if cut(k) and isinstance(v, int) and v > 0})
    return scale, hp
