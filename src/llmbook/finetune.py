"""Fine-tuning a classifier on labelled examples, one protocol for every chapter, and the arithmetic of its results.

The protocol (``finetune``): the labelled examples are read in shuffled passes (``epochs``, capped at ``max_steps``
updates), the classifier is evaluated on held-out validation examples ``evals`` times along the way, and the
weights of the best validation accuracy are the ones kept, so a run that overfits in its last pass is judged by its
best point, chosen without looking at the test set. Everything a task needs is given as functions:
- ``collate(inputs) -> tuple of tensors``: the model inputs of a list of examples' inputs (token lists, pairs...);
- ``loss_fn(model, inputs, labels) -> Tensor``: the training loss of a batch (with an auxiliary LM term or not);
- ``classify(model, inputs) -> (B, n_classes) logits``.
Training runs through ``llmbook.trainer.Trainer`` (its AdamW, schedule, precision and device).

A result measured once is one draw: ``Spread`` summarises accuracies over seeds (mean, standard deviation, standard
error of the mean), ``accuracy_se`` is the standard error of one accuracy on n test examples, ``difference_se``
that of the difference of two accuracies measured on independent test examples. Introduced in Chapter 2.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from llmbook.config import check_choice, check_int, check_real
from llmbook.trainer import DEVICES, PRECISIONS, History, Trainer, TrainerConfig, move_to

Collate = Callable[[list[Any]], tuple[Tensor, ...]]
ClassifierLoss = Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor]
Classify = Callable[[nn.Module, tuple[Tensor, ...]], Tensor]


@dataclass(frozen=True)
class Examples:
    """Labelled examples: ``inputs[i]`` (anything ``collate`` takes) has class ``labels[i]``."""

    inputs: Sequence[Any]
    labels: Tensor  # (N,) class ids

    def __post_init__(self) -> None:
        if not isinstance(self.labels, Tensor) or self.labels.dim() != 1 or self.labels.dtype != torch.long:
            raise ValueError("labels must be a 1-D tensor of class ids (dtype torch.long)")
        if len(self.inputs) != len(self.labels) or not len(self.labels):
            raise ValueError(f"inputs and labels must be as many and not empty, got {len(self.inputs)} and "
                             f"{len(self.labels)}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Sequence[int]) -> Examples:
        return Examples([self.inputs[i] for i in index], self.labels[list(index)])


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning protocol: passes over the data, the cap on updates, the optimizer. Introduced in Chapter 2."""

    epochs: int = 3  # shuffled passes over the labelled examples (GPT-1 and BERT: 3)
    max_steps: int = 300  # updates at most: a large labelled set stops here, before its last pass
    batch_size: int = 12
    lr: float = 5e-4  # peak, after a warmup over warmup_frac of the updates, then linear decay to 0
    warmup_frac: float = 0.1
    weight_decay: float = 0.01
    evals: int = 6  # validation accuracy this many times, evenly spaced over the updates, the last one included
    eval_batch_size: int = 100
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self) -> None:
        check_int(self, "epochs", 1)
        check_int(self, "max_steps", 1)
        check_int(self, "batch_size", 1)
        check_real(self, "lr", 0, min_open=True)
        check_real(self, "warmup_frac", 0, 1)
        check_real(self, "weight_decay", 0)
        check_int(self, "evals", 1)
        check_int(self, "eval_batch_size", 1)
        check_choice(self, "device", DEVICES)
        check_choice(self, "precision", PRECISIONS)

    def steps_for(self, n_examples: int) -> int:
        """Updates for ``n_examples`` labelled examples: ``epochs`` passes, at most ``max_steps``."""
        return min(self.max_steps, math.ceil(self.epochs * n_examples / self.batch_size))


@dataclass
class FinetuneResult:
    """What ``finetune`` returns: the model with its best-on-validation weights loaded, and how it got there."""

    model: nn.Module
    val_accuracy: float  # the best validation accuracy, that of the weights kept
    best_step: int
    steps: int
    history: History = field(repr=False)


def epoch_batches(n: int, batch_size: int, seed: int) -> Callable[[int], Tensor]:
    """``rows(step)``: the example indices of update ``step`` (1, 2, ...), reading shuffled passes one after another.

    Pass e is a permutation drawn from a generator seeded with (seed, e), so the rows are a function of the step.
    """
    if not isinstance(n, int) or n < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"n and batch_size must be positive integers, got n={n!r}, batch_size={batch_size!r}")

    def rows(step: int) -> Tensor:
        positions = torch.arange((step - 1) * batch_size, step * batch_size)
        epochs = (positions // n).tolist()
        perms = {e: torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + e))
                 for e in set(epochs)}
        return torch.stack([perms[e][p % n] for e, p in zip(epochs, positions.tolist(), strict=True)])

    return rows


@torch.no_grad()
def accuracy(model: nn.Module, examples: Examples, collate: Collate, classify: Classify, batch_size: int = 100,
             device: torch.device | str | None = None) -> float:
    """Share of ``examples`` whose highest-scoring class is the label. Runs in eval mode, restores the mode."""
    device = next(model.parameters()).device if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples.subset(range(start, min(start + batch_size, len(examples))))
        logits = classify(model, move_to(collate(list(chunk.inputs)), device))
        if logits.dim() != 2 or logits.shape[0] != len(chunk):
            raise ValueError(f"classify must return (B={len(chunk)}, n_classes) logits, got {tuple(logits.shape)}")
        correct += int((logits.argmax(dim=-1).cpu() == chunk.labels).sum())
    model.train(was_training)
    return correct / len(examples)


def finetune(model: nn.Module, train: Examples, val: Examples, collate: Collate, loss_fn: ClassifierLoss,
             classify: Classify, config: FinetuneConfig | None = None, seed: int = 0) -> FinetuneResult:
    """Fine-tune ``model`` on ``train``, keep the weights of the best accuracy on ``val``; see the module docstring.

    Introduced in Chapter 2.
    """
    config = config if config is not None else FinetuneConfig()
    steps = config.steps_for(len(train))
    eval_every = math.ceil(steps / config.evals)  # at most evals evaluations, the last at the last update
    rows = epoch_batches(len(train), config.batch_size, seed)

    def train_batch(step: int) -> tuple[Tensor, ...]:
        chosen = rows(step)
        return (*collate([train.inputs[i] for i in chosen.tolist()]), train.labels[chosen])

    trainer = Trainer(
        model, lambda m, batch: loss_fn(m, tuple(batch[:-1]), batch[-1]), train_batch,
        TrainerConfig(max_steps=steps, lr=config.lr, warmup_steps=round(config.warmup_frac * steps),
                      schedule="linear", weight_decay=config.weight_decay, eval_every=eval_every, seed=seed,
                      device=config.device, precision=config.precision),
        eval_fn=lambda m: {"val_accuracy": accuracy(m, val, collate, classify, config.eval_batch_size)},
    )
    best_accuracy, best_step, best_state = -1.0, 0, {}

    def keep_best(t: Trainer) -> None:
        nonlocal best_accuracy, best_step, best_state
        if t.metrics["val_accuracy"] > best_accuracy:  # the first of equal accuracies: fewer updates
            best_accuracy, best_step = t.metrics["val_accuracy"], t.step
            best_state = {k: v.detach().clone() for k, v in t.model.state_dict().items()}

    trainer.add_callback("on_eval", keep_best)
    history = trainer.fit()
    trainer.model.load_state_dict(best_state)
    return FinetuneResult(trainer.model, best_accuracy, best_step, steps, history)


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and standard error of the mean of a result over seeds.

    Introduced in Chapter 2.
    """

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values or not all(math.isfinite(v) for v in values):
            raise ValueError(f"values must be finite numbers, at least one, got {list(values)}")
        return cls(tuple(float(v) for v in values))

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1 in the denominator); 0 for one value."""
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def se(self) -> float:
        """Standard error of the mean: std / sqrt(n)."""
        return self.std / math.sqrt(len(self.values))

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """E.g. "38.7 ± 1.2 (3 seeds, 37.1 to 40.0)": mean ± standard error, times ``scale``."""
        lo, hi = min(self.values) * scale, max(self.values) * scale
        return (f"{self.mean * scale:.{digits}f} ± {self.se * scale:.{digits}f} ({len(self.values)} seeds, "
                f"{lo:.{digits}f} to {hi:.{digits}f})")


def accuracy_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` independent test examples: sqrt(p (1 - p) / n)."""
    if not 0 <= p <= 1 or n < 1:
        raise ValueError(f"p must be in [0, 1] and n >= 1, got p={p}, n={n}")
    return math.sqrt(p * (1 - p) / n)


def difference_se(p1: float, n1: int, p2: float, n2: int) -> float:
    """Standard error of p1 - p2, two accuracies on independent test sets: sqrt(se1^2 + se2^2).

    On the same test examples the two errors are correlated and this overstates the error of the difference.
    Introduced in Chapter 2.
    """
    return math.hypot(accuracy_se(p1, n1), accuracy_se(p2, n2))
