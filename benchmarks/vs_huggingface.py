"""Training throughput of the book's GPT + Trainer against Hugging Face's GPT2LMHeadModel in a plain PyTorch loop.

Run from the repository root:  python benchmarks/vs_huggingface.py  [--rounds 5 --steps 10 --batch-size 16]

Both sides train the same architecture at Chapter 2's CPU shapes (pre-LN GPT with a final LayerNorm, 4 layers,
d_model 128, 4 heads, d_ff 512, 128 positions, 2,048 tokens, tied embeddings, no dropout) with the same AdamW
(lr 2e-3, betas (0.9, 0.99), weight decay 0.1, gradient clipping at 1.0) on the same random token batches. Ours is
``llmbook.gpt.GPT`` driven by ``llmbook.trainer.Trainer.fit``, as the chapters train it; Hugging Face's is a loop
of forward, loss, backward, clip, step. After a warm-up, each round times ``--steps`` steps of each side in turn
(interleaved, so a busy machine slows both alike) and the float32 matmul rate; the report gives medians over rounds:
tokens/s of each, ours / Hugging Face, and the fraction of the matmul rate each reaches (model FLOPs from
benchmarks/gpt_throughput.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from llmbook.gpt import GPT, PRESETS, lm_loss
from llmbook.trainer import Trainer, TrainerConfig

sys.path.insert(0, str(Path(__file__).parent))
from gpt_throughput import flops_per_token, matmul_gflops  # noqa: E402

LR, BETAS, WEIGHT_DECAY, CLIP = 2e-3, (0.9, 0.99), 0.1, 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="training steps per side per round")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    config = dataclasses.replace(PRESETS["small"], dropout=0.0, norm_first=True, final_norm=True)
    B, T = args.batch_size, config.context_length
    batches = [torch.randint(0, config.vocab_size, (B, T), generator=torch.Generator().manual_seed(i))
               for i in range(8)]

    torch.manual_seed(0)
    ours = GPT(config)
    total = args.warmup + args.rounds * args.steps
    trainer = Trainer(ours, lambda model, batch: lm_loss(model(batch), batch), lambda step: batches[step % 8],
                      TrainerConfig(max_steps=total, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY, grad_clip=CLIP,
                                    device="cpu"))

    hf_config = GPT2Config(vocab_size=config.vocab_size, n_positions=T, n_embd=config.d_model,
                           n_layer=config.n_layers, n_head=config.n_heads, n_inner=config.d_ff,
                           activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                           layer_norm_epsilon=config.layer_norm_eps, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    theirs = GPT2LMHeadModel(hf_config).train()
    optimizer = torch.optim.AdamW(theirs.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    hf_step = [0]

    def hf_steps(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            hf_step[0] += 1
            batch = batches[hf_step[0] % 8]
            loss = theirs(input_ids=batch, labels=batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(theirs.parameters(), CLIP)
            optimizer.step()
        return time.perf_counter() - start

    def our_steps(n: int) -> float:
        start = time.perf_counter()
        trainer.fit(n)
        return time.perf_counter() - start

    our_steps(args.warmup)
    hf_steps(args.warmup)
    peaks: list[float] = []
    rates: dict[str, list[float]] = {"llmbook GPT + Trainer": [], "Hugging Face GPT2LMHeadModel": []}
    for _ in range(args.rounds):
        peaks.append(matmul_gflops())
        rates["llmbook GPT + Trainer"].append(args.steps * B * T / our_steps(args.steps))
        rates["Hugging Face GPT2LMHeadModel"].append(args.steps * B * T / hf_steps(args.steps))

    fpt = flops_per_token(config, T)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; Chapter 2's CPU shapes, batch {B} x T {T}; "
          f"model FLOPs per token {fpt / 1e6:.1f} M")
    print(f"float32 matmul (1024 x 1024): {statistics.median(peaks):.1f} GFLOP/s")
    print(f"{'':<30}{'tokens/s':>10}{'of matmul':>11}   (medians of {args.rounds} rounds of {args.steps} steps)")
    for name, values in rates.items():
        fraction = statistics.median(r * fpt / 1e9 / p for r, p in zip(values, peaks, strict=True))
        print(f"{name:<30}{statistics.median(values):>10,.0f}{fraction:>11.1%}")
    ours_rates, hf_rates = rates.values()
    ratio = statistics.median(o / h for o, h in zip(ours_rates, hf_rates, strict=True))
    print(f"ours / Hugging Face tokens/s: {ratio:.2f} (median of per-round ratios)")


if __name__ == "__main__":
    main()
