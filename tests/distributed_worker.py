"""Trains a tiny GPT for a few steps; tests/test_distributed.py runs it under torchrun and in one process.

Usage: torchrun --standalone --nproc_per_node=2 tests/distributed_worker.py OUT_DIR
Every process writes OUT_DIR/rank<r>.safetensors: its final weights, and as metadata its loss history, the batch
rows of its steps, how many checkpoints it wrote and the world size. Rank 0 alone writes the trainer checkpoint
OUT_DIR/checkpoint.safetensors.
"""

from __future__ import annotations

import json
import sys

import torch
from safetensors.torch import save_file

from llmbook.gpt import GPT, PRESETS, lm_loss
from llmbook.trainer import Trainer, TrainerConfig

BATCH_SIZE, STEPS = 8, 4


def batch(step: int) -> tuple[torch.Tensor]:
    """The whole batch of update ``step``: 8 random windows of the tiny vocabulary (a function of the step only)."""
    config = PRESETS["tiny"]
    generator = torch.Generator().manual_seed(step)
    return (torch.randint(0, config.vocab_size, (BATCH_SIZE, config.context_length), generator=generator),)


ROWS_SEEN: list[int] = []  # the batch rows each training step of this process computed


def loss_fn(model: torch.nn.Module, batch: tuple[torch.Tensor]) -> torch.Tensor:
    if model.training:
        ROWS_SEEN.append(batch[0].shape[0])
    return lm_loss(model(batch[0]), batch[0])


def make_trainer(checkpoint_path: str | None = None) -> Trainer:
    torch.manual_seed(0)
    model = GPT(PRESETS["tiny"])  # no dropout: the processes' slices then add up exactly to the whole batch
    config = TrainerConfig(max_steps=STEPS, lr=1e-2, warmup_steps=1, schedule="cosine", device="cpu",
                           checkpoint_path=checkpoint_path, progress=checkpoint_path is not None)
    return Trainer(model, loss_fn, batch, config)


def main(out: str) -> None:
    trainer = make_trainer(checkpoint_path=f"{out}/checkpoint.safetensors")
    checkpoints = []
    trainer.add_callback("on_checkpoint", lambda t: checkpoints.append(t.step))
    history = trainer.fit()
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}  # clones: tied weights
    metadata = {"world_size": str(trainer.world_size), "checkpoints": json.dumps(checkpoints),
                "train_loss": json.dumps(history.train_loss), "rows_seen": json.dumps(ROWS_SEEN)}
    save_file(weights, f"{out}/rank{trainer.rank}.safetensors", metadata=metadata)


if __name__ == "__main__":
    main(sys.argv[1])
