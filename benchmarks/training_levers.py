"""What each speed lever of the Trainer is worth, measured side by side, and bfloat16's loss curve against float32's.

Run from the repository root:  python benchmarks/training_levers.py  [--rounds 7 --steps 6 --curve-steps 300]

Part 1 trains Chapter 2's CPU GPT (pre-LN, 4 layers, d_model 128, 4 heads, d_ff 512, batch 16 x 128, vocabulary
2,048, no dropout) on random tokens with one lever changed at a time from the Trainer's previous step:
- "before": the causal mask passed to attention as a tensor, AdamW's for-loop, the loss computed on logits sliced
  to T - 1 positions (a copy of the largest tensor), and the loss and gradient norm read (.item()) every step;
- "is_causal": no mask tensor, ``is_causal=True`` (on GPUs this is what lets PyTorch use its flash kernels);
- "foreach AdamW" and "fused AdamW": torch's two faster AdamW implementations;
- "padded targets": the loss on all T positions, the last one's target ignored, so the logits are not copied;
- "no syncs": the loss is read only when logged (on a CPU there is no device to wait for: expect nothing);
- "torch.compile": the model compiled (its compile time printed apart);
- "bfloat16, fused attention" and "bfloat16, manual attention": autocast to bfloat16 with PyTorch's fused
  attention kernel, and with the two matmuls of the formula (what the package does in bfloat16 on a CPU);
  torch.compile and the bfloat16 rows keep the other levers as "before";
- "Trainer.fit": the Trainer as shipped (float32), which should match the kept levers combined.
Rounds are interleaved (each round times ``--steps`` steps of every variant in turn), the table gives medians and
the ratio to "before". Part 2 pre-trains the same GPT on Shakespeare's training plays for ``--curve-steps`` steps
with the Trainer, once in float32 and once with precision="bfloat16", from the same weights and batches, and prints
both training-loss curves (means over 10% of the run) and validation losses.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

import llmbook.attention
from llmbook.attention import causal_mask
from llmbook.data.shakespeare import encode_plays, load_plays
from llmbook.gpt import GPT, PRESETS, GPTConfig, lm_loss
from llmbook.tokenizer import train_bpe
from llmbook.trainer import Trainer, TrainerConfig

CONFIG = dataclasses.replace(PRESETS["small"], dropout=0.0, norm_first=True, final_norm=True)
B, T, LR = 16, CONFIG.context_length, 2e-3


class MaskTensorGPT(GPT):
    """The GPT as it was: the causal mask built as a (T, T) tensor and passed to every layer."""

    def hidden_states(self, tokens: Tensor) -> Tensor:
        x = self._embed(tokens)
        mask = causal_mask(tokens.shape[1], device=tokens.device)
        for layer in self.layers:
            x, _ = layer(x, mask=mask)
        return self.final_norm(x)


def sliced_lm_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """The loss as it was: the last position's logits sliced off, which copies the (B, T - 1, V) tensor."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    mask_tensor: bool = False
    adamw: str = "for-loop"  # "for-loop", "foreach" or "fused"
    sliced_loss: bool = False
    sync_every_step: bool = True
    compile: bool = False
    bfloat16: bool = False
    torch_kernel: bool = False  # call F.scaled_dot_product_attention even where the package would not


BEFORE = Variant("before", mask_tensor=True, sliced_loss=True)
VARIANTS = [
    BEFORE,
    dataclasses.replace(BEFORE, name="is_causal", mask_tensor=False),
    dataclasses.replace(BEFORE, name="foreach AdamW", adamw="foreach"),
    dataclasses.replace(BEFORE, name="fused AdamW", adamw="fused"),
    dataclasses.replace(BEFORE, name="padded targets", sliced_loss=False),
    dataclasses.replace(BEFORE, name="no syncs", sync_every_step=False),
    dataclasses.replace(BEFORE, name="torch.compile", compile=True),
    dataclasses.replace(BEFORE, name="bfloat16, fused attention", bfloat16=True, torch_kernel=True),
    dataclasses.replace(BEFORE, name="bfloat16, manual attention", bfloat16=True),
]


PACKAGE_SDPA = llmbook.attention.scaled_dot_product_attention


def torch_sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0,
               need_weights: bool = False, impl: str = "fused", is_causal: bool = False) -> tuple[Tensor, None]:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal), None


def make_step(variant: Variant, batches: list[Tensor]) -> Callable[[int], None]:
    """A function that runs ``n`` training steps of ``variant``, the Trainer's step with that lever changed."""
    torch.manual_seed(0)
    model = (MaskTensorGPT if variant.mask_tensor else GPT)(CONFIG)
    flags = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[variant.adamw]
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.99), weight_decay=0.1, **flags)
    forward = torch.compile(model) if variant.compile else model
    loss_of = sliced_lm_loss if variant.sliced_loss else lm_loss
    done = [0]

    def steps(n: int) -> None:
        if variant.torch_kernel:  # bypass the package's choice of the manual path for bfloat16 on the CPU
            llmbook.attention.scaled_dot_product_attention = torch_sdpa
        try:
            run(n)
        finally:
            llmbook.attention.scaled_dot_product_attention = PACKAGE_SDPA

    def run(n: int) -> None:
        for _ in range(n):
            batch = batches[done[0] % len(batches)]
            done[0] += 1
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant.bfloat16):
                loss = loss_of(forward(batch), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if variant.sync_every_step:
                loss.item(), norm.item()
    return steps


def trainer_steps(batches: list[Tensor]) -> Callable[[int], None]:
    torch.manual_seed(0)
    trainer = Trainer(GPT(CONFIG), lambda model, batch: lm_loss(model(batch), batch),
                      lambda step: batches[step % len(batches)],
                      TrainerConfig(max_steps=10**6, lr=LR, betas=(0.9, 0.99), weight_decay=0.1, device="cpu",
                                    precision="float32"))
    return lambda n: trainer.fit(n) and None


def levers(args: argparse.Namespace) -> None:
    batches = [torch.randint(0, CONFIG.vocab_size, (B, T), generator=torch.Generator().manual_seed(i))
               for i in range(8)]
    runs = {v.name: make_step(v, batches) for v in VARIANTS}
    runs["Trainer.fit (float32, as shipped)"] = trainer_steps(batches)
    for name, run in runs.items():
        start = time.perf_counter()
        run(args.warmup)
        if name == "torch.compile":
            print(f"torch.compile: the first {args.warmup} steps (compilation included) took "
                  f"{time.perf_counter() - start:.1f} s")
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run(args.steps)
            rates[name].append(args.steps * B * T / (time.perf_counter() - start))
    print(f"\nPart 1: Chapter 2's CPU GPT, batch {B} x {T}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; medians of {args.rounds} interleaved rounds of {args.steps} steps")
    print(f"{'variant':<36}{'tokens/s':>10}{'x before':>10}")
    for name, values in rates.items():
        ratio = statistics.median(v / b for v, b in zip(values, rates[BEFORE.name], strict=True))
        print(f"{name:<36}{statistics.median(values):>10,.0f}{ratio:>10.2f}")


def loss_curves(args: argparse.Namespace) -> None:
    plays = load_plays()
    tokenizer = train_bpe((p.text for p in plays if p.split == "train"), vocab_size=CONFIG.vocab_size)
    train = encode_plays(tokenizer, plays, "train", start_id=tokenizer.start_id)
    val = encode_plays(tokenizer, plays, "validation", start_id=tokenizer.start_id)

    def windows(ids: Tensor, seed: int) -> Tensor:
        starts = torch.randint(0, len(ids) - T, (B,), generator=torch.Generator().manual_seed(seed))
        return torch.stack([ids[s:s + T] for s in starts.tolist()])

    config: GPTConfig = dataclasses.replace(CONFIG, vocab_size=tokenizer.vocab_size)
    results = {}
    for precision in ("float32", "bfloat16"):
        torch.manual_seed(0)
        trainer = Trainer(GPT(config), lambda model, batch: lm_loss(model(batch), batch),
                          lambda step: windows(train, step), val_batch=lambda i: windows(val, 10**6 + i),
                          config=TrainerConfig(max_steps=args.curve_steps, lr=LR, betas=(0.9, 0.99),
                                               weight_decay=0.1, warmup_steps=args.curve_steps // 16,
                                               schedule="cosine", eval_batches=8, device="cpu", precision=precision))
        start = time.perf_counter()
        history = trainer.fit()
        seconds = time.perf_counter() - start
        results[precision] = (history.train_loss, trainer.evaluate()["val_loss"], seconds)
    n = max(1, args.curve_steps // 10)
    print(f"\nPart 2: pre-training on Shakespeare, {args.curve_steps} steps of {B} x {T} tokens; training loss, means "
          f"over {n} steps")
    print(f"{'steps':<14}" + "".join(f"{p:>12}" for p in results) + f"{'difference':>12}")
    for i in range(0, args.curve_steps - n + 1, n):
        means = [statistics.fmean(losses[i:i + n]) for losses, _, _ in results.values()]
        print(f"{i + 1:>5}-{i + n:<8}" + "".join(f"{m:>12.3f}" for m in means) + f"{means[1] - means[0]:>+12.3f}")
    (_, val32, s32), (_, val16, s16) = results.values()
    print(f"{'val loss':<14}{val32:>12.3f}{val16:>12.3f}{val16 - val32:>+12.3f}")
    print(f"{'seconds':<14}{s32:>12.1f}{s16:>12.1f}{'':>6}x{s32 / s16:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=6, help="training steps per variant per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--curve-steps", type=int, default=300, help="steps of part 2 (0 skips it)")
    args = parser.parse_args()
    levers(args)
    if args.curve_steps:
        loss_curves(args)


if __name__ == "__main__":
    main()
