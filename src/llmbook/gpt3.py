"""GPT-3 (Brown et al. 2020): the eight sizes of the paper's Table 2.1, their exact parameter counts, and what
training them cost.

GPT-3 is GPT-2's architecture (pre-LN blocks, a final LayerNorm, learned positions, a tied output layer, d_ff =
4 d_model, 50,257 byte-level BPE tokens) with a context of 2,048 tokens and, as the paper's section 2.1 says,
"alternating dense and locally banded sparse attention patterns in the layers of the transformer, similar to the
Sparse Transformer". ``GPTConfig.local_window`` is that switch; the paper does not give the band's width, so the
presets here are dense (a band does not change the parameter count).

Table 2.1 lists, for each model, n_params, n_layers, d_model, n_heads, d_head, the batch size in tokens and the
learning rate; every model was trained on 300 billion tokens. Its rows satisfy d_model = n_heads x d_head except
two, and Table D.1's parameter counts (in millions) settle each of them, in opposite directions:

- GPT-3 XL: d_model 2048, but 24 heads of 128 make 3072. Table D.1's 1,320M is the count at 2048
  (1,315,723,264; at 3072 it would be 2.88 billion), and 2048 does not split into 24 equal heads: the head size
  or the number of heads is misprinted. We keep heads of 128, so 16 of them.
- GPT-3 13B: d_model 5140, but 40 heads of 128 make 5120. Table D.1's 12,850M is the count at 5120
  (12,853,386,240; at 5140 it would be 12,952,938,780), and 5140 does not split into 40 heads: d_model is
  misprinted.

``gpt3_config`` builds every model at the width Table D.1's count confirms, with heads of the printed size.
Introduced in Chapter 6.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmbook.gpt import GPTConfig

GPT3_VOCAB_SIZE = 50257
GPT3_CONTEXT = 2048
GPT3_TRAINING_TOKENS = 300e9  # every size (Table 2.1's caption, Table D.1)


@dataclass(frozen=True)
class GPT3Size:
    """One row of Table 2.1 as printed, and the parameter count of Table D.1 (in millions)."""

    name: str
    n_params: str  # as printed: "125M" ... "175.0B"
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    batch_tokens: float
    lr: float
    table_d1_millions: int


TABLE_2_1 = (
    GPT3Size("GPT-3 Small", "125M", 12, 768, 12, 64, 0.5e6, 6.0e-4, 125),
    GPT3Size("GPT-3 Medium", "350M", 24, 1024, 16, 64, 0.5e6, 3.0e-4, 356),
    GPT3Size("GPT-3 Large", "760M", 24, 1536, 16, 96, 0.5e6, 2.5e-4, 760),
    GPT3Size("GPT-3 XL", "1.3B", 24, 2048, 24, 128, 1e6, 2.0e-4, 1320),
    GPT3Size("GPT-3 2.7B", "2.7B", 32, 2560, 32, 80, 1e6, 1.6e-4, 2650),
    GPT3Size("GPT-3 6.7B", "6.7B", 32, 4096, 32, 128, 2e6, 1.2e-4, 6660),
    GPT3Size("GPT-3 13B", "13.0B", 40, 5140, 40, 128, 2e6, 1.0e-4, 12850),
    GPT3Size("GPT-3 175B", "175.0B", 96, 12288, 96, 128, 3.2e6, 0.6e-4, 174600),
)
GPT3_SIZES = {size.name: size for size in TABLE_2_1}


def _config(size: GPT3Size, d_model: int, local_window: int) -> GPTConfig:
    n_heads = d_model // size.d_head if d_model % size.d_head == 0 else size.n_heads
    return GPTConfig(vocab_size=GPT3_VOCAB_SIZE, context_length=GPT3_CONTEXT, d_model=d_model, n_heads=n_heads,
                     n_layers=size.n_layers, d_ff=4 * d_model, dropout=0.0, activation="gelu_tanh", norm_first=True,
                     final_norm=True, scaled_residual_init=True, local_window=local_window)


def _count(size: GPT3Size, d_model: int) -> int:
    D, V = d_model, GPT3_VOCAB_SIZE  # gpt_parameter_count without building a config (which checks the heads)
    return size.n_layers * (12 * D * D + 13 * D) + V * D + GPT3_CONTEXT * D + 2 * D


def confirmed_width(size: GPT3Size) -> int:
    """Of the printed d_model and n_heads x d_head, the width whose parameter count is closer to Table D.1's (they
    differ for GPT-3 XL and 13B; see the module docstring). Introduced in Chapter 6."""
    widths = (size.d_model, size.n_heads * size.d_head)
    return min(widths, key=lambda d: abs(_count(size, d) - size.table_d1_millions * 1e6))


def gpt3_config(name: str, local_window: int = 0) -> GPTConfig:
    """The ``GPTConfig`` of a Table 2.1 model by its name ("GPT-3 Small" ... "GPT-3 175B"), at the width Table
    D.1 confirms, with heads of the printed size. ``local_window`` > 0 makes every second layer locally banded.
    Dropout is 0: the paper does not mention any."""
    if name not in GPT3_SIZES:
        raise ValueError(f"name must be one of {list(GPT3_SIZES)}, got {name!r}")
    size = GPT3_SIZES[name]
    return _config(size, confirmed_width(size), local_window)


def attention_score_flops(seq_len: int, d_model: int, window: int | None = None) -> float:
    """Floating-point operations of one layer's attention scores and weighted sum over a sequence, forward pass:
    2 d_model per (query, key) pair for q.k and 2 d_model for the weighted value, over the pairs a causal layer
    uses, T (T + 1) / 2 when dense and sum_t min(t + 1, w) when banded with window w. The projections (the 8
    d_model^2 per token of the parameter count) are not included. Introduced in Chapter 6."""
    for name, value in (("seq_len", seq_len), ("d_model", d_model)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if window is not None and not (isinstance(window, int) and window >= 1):
        raise ValueError(f"window must be None (dense) or an integer >= 1, got {window!r}")
    T = seq_len
    if window is None or window >= T:
        pairs = T * (T + 1) // 2
    else:
        pairs = window * (window + 1) // 2 + (T - window) * window
    return 4.0 * d_model * pairs
