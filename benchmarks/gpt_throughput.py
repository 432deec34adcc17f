"""Training throughput of llmbook's GPT: manual against fused attention, and against this machine's matmul speed.

Run from the repository root:  python benchmarks/gpt_throughput.py  [--batch-size 16 --rounds 5 --steps 5 --dropout 0]

One training step = forward, ``lm_loss``, backward, AdamW update, on random tokens (the data pipeline is not timed).
Both attention implementations are measured side by side in one run: after a warm-up, each round times ``--steps``
steps of the manual model, then of the fused one (interleaved, so a busy machine slows both alike); the reported
tokens/second is the median over rounds. Each round also times the matmul, and the fraction of it achieved is
the median of the per-round fractions.

Model FLOPs per token (PaLM, appendix B; the same count as nanoGPT's ``estimate_mfu``):

    6 * N + 12 * n_layers * d_model * T

6 N: each of the N parameters that takes part in a matrix product costs 2 FLOPs per token in the forward pass (a
multiply and an add) and 4 in the backward pass (gradients for the input and for the weight). N counts the weights
of the blocks and the output layer; the position table and the token table (a lookup) do no products, but with tied
embeddings the token table is the output layer and counts once. 12 L D T: per layer, the scores Q K^T and the
weighted sum of V are each 2 T D FLOPs per token forward, times 3 for forward + backward. T is the sequence length;
causal masking wastes half of those products, which are counted anyway, since both implementations compute them.

The fraction printed is achieved model FLOP/s divided by the float32 GFLOP/s of ``torch.matmul`` on square matrices,
a realistic ceiling for this machine rather than its data-sheet peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from llmbook.gpt import GPT, PRESETS, GPTConfig, gpt_parameter_count, lm_loss


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """Median float32 GFLOP/s of an (n x n) @ (n x n) product, 2 n^3 FLOPs each."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def flops_per_token(config: GPTConfig, T: int) -> int:
    """6 N + 12 L D T, with N the parameters used in matrix products (see the module docstring)."""
    D, V = config.d_model, config.vocab_size
    n = gpt_parameter_count(config) - config.context_length * D  # the position table is a lookup
    if not config.tie_embeddings:
        n -= V * D  # the untied token table is a lookup; the output layer stays counted
    return 6 * n + 12 * config.n_layers * D * T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="training steps per implementation per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dropout", type=float, default=None, help="override the preset's dropout (0.1)")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = PRESETS["small"]
    if args.dropout is not None:
        config = dataclasses.replace(config, dropout=args.dropout)
    B, T = args.batch_size, config.context_length
    tokens = torch.randint(0, config.vocab_size, (B, T))
    models, optimizers = {}, {}
    for impl in ("manual", "fused"):
        torch.manual_seed(0)
        models[impl] = GPT(dataclasses.replace(config, attn_impl=impl)).train()
        optimizers[impl] = torch.optim.AdamW(models[impl].parameters(), lr=1e-4)

    def train_steps(impl: str, n: int) -> float:
        model, optimizer = models[impl], optimizers[impl]
        start = time.perf_counter()
        for _ in range(n):
            loss = lm_loss(model(tokens), tokens)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start

    for impl in models:
        train_steps(impl, args.warmup)
    # Each round measures matmul speed and both models, so a machine shared with other jobs affects all alike.
    peaks: list[float] = []
    rates: dict[str, list[float]] = {impl: [] for impl in models}
    for _ in range(args.rounds):
        peaks.append(matmul_gflops())
        for impl in models:
            rates[impl].append(args.steps * B * T / train_steps(impl, args.steps))

    fpt = flops_per_token(config, T)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"config 'small': n_layers={config.n_layers} d_model={config.d_model} n_heads={config.n_heads} "
          f"d_ff={config.d_ff} vocab_size={config.vocab_size} dropout={config.dropout}; batch {B} x T {T}")
    print(f"parameters {gpt_parameter_count(config):,}; model FLOPs per token 6N + 12LDT = {fpt / 1e6:.1f} M")
    print(f"float32 matmul (1024 x 1024): {statistics.median(peaks):.1f} GFLOP/s")
    print(f"{'attn_impl':<10}{'tokens/s':>12}{'GFLOP/s':>10}{'of matmul':>11}   (medians of {args.rounds} rounds)")
    for impl, values in rates.items():
        fraction = statistics.median(r * fpt / 1e9 / p for r, p in zip(values, peaks, strict=True))
        print(f"{impl:<10}{statistics.median(values):>12,.0f}{statistics.median(values) * fpt / 1e9:>10.1f}"
              f"{fraction:>11.1%}")
    ratio = statistics.median(f / m for f, m in zip(rates["fused"], rates["manual"], strict=True))
    print(f"fused / manual tokens/s: {ratio:.2f} (median of per-round ratios)")


if __name__ == "__main__":
    main()
