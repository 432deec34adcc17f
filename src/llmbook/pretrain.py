"""Chapter 2's pre-training as a script, for runs bigger than a notebook: on a GPU, or on several under torchrun.

    python -m llmbook.pretrain --out run/                      # Chapter 2's GPU scale, one process
    torchrun --nproc_per_node=4 -m llmbook.pretrain --out run/ # the same run on 4 GPUs (or 4 CPU processes)
    python -m llmbook.pretrain --scale cpu --steps 20 --out /tmp/run  # a quick look on a laptop

It trains a BPE tokenizer on the training plays, then the pre-LN GPT of Chapter 2 on random windows of them with
the book's ``Trainer``, and writes into the folder ``--out`` the trainer checkpoint ``gpt.safetensors``
(``llmbook.trainer.load_model_weights`` reads the weights back) and the tokenizer, ``tokenizer.json``. Under
torchrun each process takes its slice of every batch, so the run makes the same updates at any number of processes;
``--batch-size`` must be a multiple of that number. The window functions are the ones Chapter 2 uses.
Introduced in Chapter 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llmbook.data.shakespeare import encode_plays, load_plays
from llmbook.gpt import GPT, PRESETS, GPTConfig, lm_loss
from llmbook.tokenizer import train_bpe
from llmbook.trainer import History, Trainer, TrainerConfig, seed_everything

# Chapter 2's two scales (its hyperparameter cell): vocabulary, model, batch, steps, peak lr, warmup.
SCALES: dict[str, dict[str, Any]] = {
    "cpu": dict(vocab_size=2048, context_length=64, d_model=128, n_heads=4, n_layers=3, d_ff=512, batch_size=32,
                steps=600, lr=3e-3, warmup_steps=40, dropout=0.0),
    "gpu": dict(vocab_size=8192, context_length=256, d_model=384, n_heads=6, n_layers=6, d_ff=1536, batch_size=64,
                steps=3000, lr=1e-3, warmup_steps=200, dropout=0.1),
}


def random_windows(ids: Tensor, batch_size: int, length: int, starts: Tensor | None = None
                   ) -> Callable[[int], tuple[Tensor]]:
    """``train_batch(step) -> (x,)``: ``batch_size`` windows of ``length`` tokens at random places in ``ids``.

    The places are drawn from a generator seeded with the step, so the batch is a function of the step alone (a
    resumed run sees the batches it would have seen). With ``starts`` (a 1-D tensor of positions in ``ids``, e.g.
    where each line begins) a window begins only at one of them, drawn uniformly among those that leave room for
    ``length`` tokens. Introduced in Chapter 2 (``starts`` in Chapter 4).
    """
    if ids.dim() != 1 or len(ids) <= length:
        raise ValueError(f"ids must be a 1-D tensor longer than length={length}, got shape {tuple(ids.shape)}")
    if starts is not None:
        if starts.dim() != 1 or starts.dtype.is_floating_point:
            raise ValueError(f"starts must be a 1-D integer tensor of positions, got {starts.dtype} "
                             f"{tuple(starts.shape)}")
        if len(starts) and int(starts.min()) < 0:
            raise ValueError(f"starts must be positions in ids (>= 0), got {int(starts.min())}")
        starts = starts[starts < len(ids) - length]
        if not len(starts):
            raise ValueError(f"no position in starts leaves room for a window of length={length} in {len(ids)} ids")

    def train_batch(step: int) -> tuple[Tensor]:
        generator = torch.Generator().manual_seed(step)
        if starts is None:
            places = torch.randint(0, len(ids) - length, (batch_size,), generator=generator)
        else:
            places = starts[torch.randint(0, len(starts), (batch_size,), generator=generator)]
        return (torch.stack([ids[s:s + length] for s in places.tolist()]),)  # (B, T)

    return train_batch


def even_windows(ids: Tensor, n: int, length: int) -> Tensor:
    """(n, length): ``n`` windows evenly spaced from the start to the end of ``ids`` (fixed validation windows).

    Introduced in Chapter 2.
    """
    if ids.dim() != 1 or len(ids) < length:
        raise ValueError(f"ids must be a 1-D tensor of at least length={length} tokens, got shape {tuple(ids.shape)}")
    starts = torch.linspace(0, len(ids) - length, n).long().tolist()
    return torch.stack([ids[s:s + length] for s in starts])


def train_lm(config: GPTConfig, train_batch: Callable[[int], tuple[Tensor]], trainer_config: TrainerConfig,
             val_windows: Tensor | None = None, eval_fn: Callable[[GPT], dict[str, float]] | None = None,
             ) -> tuple[GPT, History]:
    """A fresh ``GPT(config)``, initialised from ``trainer_config.seed``, trained with ``lm_loss`` on
    ``train_batch`` (e.g. ``random_windows``) by the book's ``Trainer``; the validation loss is the mean over
    ``val_windows`` cut into ``trainer_config.eval_batches`` equal batches. Returns the model and its history.
    Introduced in Chapter 4.
    """
    seed_everything(trainer_config.seed)
    model = GPT(config)
    val_batch = None
    if val_windows is not None:
        size = len(val_windows) // trainer_config.eval_batches
        if size < 1:
            raise ValueError(f"val_windows ({len(val_windows)}) must hold at least eval_batches="
                             f"{trainer_config.eval_batches} windows")

        def val_batch(i: int) -> tuple[Tensor]:
            return (val_windows[i * size:(i + 1) * size],)

    trainer = Trainer(model, lambda m, batch: lm_loss(m(batch[0]), batch[0]), train_batch, trainer_config,
                      val_batch=val_batch, eval_fn=eval_fn)  # type: ignore[arg-type]
    return model, trainer.fit()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="gpu")
    parser.add_argument("--steps", type=int, default=None, help="updates (default: the scale's)")
    parser.add_argument("--batch-size", type=int, default=None, help="windows per update, all processes together")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpt.safetensors and tokenizer.json")
    args = parser.parse_args(argv)
    hp = dict(SCALES[args.scale])
    hp.update({k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size)) if v is not None})

    plays = load_plays()
    tokenizer = train_bpe((p.text for p in plays if p.split == "train"), vocab_size=hp["vocab_size"])
    train_ids, val_ids = (encode_plays(tokenizer, plays, split, start_id=tokenizer.start_id)
                          for split in ("train", "validation"))
    config = dataclasses.replace(PRESETS["small"], vocab_size=tokenizer.vocab_size, norm_first=True, final_norm=True,
                                 **{k: hp[k] for k in ("context_length", "d_model", "n_heads", "n_layers", "d_ff",
                                                       "dropout")})
    T, B = config.context_length, hp["batch_size"]
    val_windows = even_windows(val_ids, 4 * B, T)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / "gpt.safetensors"
    torch.manual_seed(args.seed)
    trainer = Trainer(
        GPT(config), lambda model, batch: lm_loss(model(batch[0]), batch[0]), random_windows(train_ids, B, T),
        TrainerConfig(max_steps=hp["steps"], lr=hp["lr"], warmup_steps=min(hp["warmup_steps"], hp["steps"]),
                      schedule="cosine", betas=(0.9, 0.99), weight_decay=0.1, eval_every=max(1, hp["steps"] // 5),
                      eval_batches=4, device=args.device, precision=args.precision, seed=args.seed,
                      checkpoint_path=str(checkpoint), progress=True),
        val_batch=lambda i: (val_windows[i * B:(i + 1) * B],),
    )
    if trainer.rank == 0:
        print(f"{args.scale} scale: {config}; {trainer.world_size} process(es) on {trainer.device}, "
              f"precision {args.precision}, batch {B} x {T}, {hp['steps']} steps", flush=True)
    start = time.perf_counter()
    history = trainer.fit()
    seconds = time.perf_counter() - start
    if trainer.rank == 0:
        tokenizer.save(args.out)
        val_loss = history.eval["val_loss"][-1]
        print(f"{hp['steps']} steps in {seconds:.0f} s ({hp['steps'] * B * T / seconds:,.0f} tokens/s); "
              f"validation loss {val_loss:.3f}, perplexity {math.exp(val_loss):.1f}; wrote {checkpoint} and "
              f"{args.out / 'tokenizer.json'}")


if __name__ == "__main__":
    main()
