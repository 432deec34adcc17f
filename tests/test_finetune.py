"""The fine-tuning protocol: passes over the data, the best-on-validation weights kept, the accuracy, the spread."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmbook.finetune import (
    Examples,
    FinetuneConfig,
    Spread,
    accuracy,
    accuracy_se,
    difference_se,
    epoch_batches,
    finetune,
)

CONFIG = FinetuneConfig(epochs=10, max_steps=200, batch_size=16, lr=3e-2, evals=10, device="cpu")


def toy_examples(n: int, seed: int) -> Examples:
    """Sequences of 6 token ids; the class is whether token 1 occurs (a task a bag of embeddings solves)."""
    tokens = torch.randint(0, 8, (n, 6), generator=torch.Generator().manual_seed(seed))
    return Examples([row.tolist() for row in tokens], (tokens == 1).any(dim=1).long())


class BagClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.out = nn.Embedding(8, 16), nn.Linear(16, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(tokens).max(dim=1).values)


def collate(inputs):
    return (torch.tensor(inputs),)


def classify(model, inputs):
    return model(*inputs)


def loss_fn(model, inputs, labels):
    return F.cross_entropy(model(*inputs), labels)


def test_epoch_batches_read_every_example_once_per_pass():
    rows = epoch_batches(10, 4, seed=3)
    first_pass = torch.cat([rows(1), rows(2), rows(3)[:2]])
    assert sorted(first_pass.tolist()) == list(range(10))
    second_pass = torch.cat([rows(3)[2:], rows(4), rows(5)])
    assert sorted(second_pass.tolist()) == list(range(10)) and not torch.equal(first_pass, second_pass)
    assert torch.equal(rows(4), epoch_batches(10, 4, seed=3)(4))  # a function of the step
    assert CONFIG.steps_for(100) == 63 and CONFIG.steps_for(10_000) == 200


def test_finetune_learns_and_keeps_the_best_validation_weights():
    torch.manual_seed(0)
    train, val, test = toy_examples(160, 0), toy_examples(100, 1), toy_examples(300, 2)
    model = BagClassifier()
    before = accuracy(model, test, collate, classify)
    result = finetune(model, train, val, collate, loss_fn, classify, CONFIG, seed=0)
    assert result.steps == 100 and result.history.eval_step == list(range(10, 101, 10))  # evals=10: every 10 updates
    assert result.val_accuracy == max(result.history.eval["val_accuracy"])
    assert result.best_step == result.history.eval_step[result.history.eval["val_accuracy"].index(
        result.val_accuracy)]
    assert accuracy(result.model, val, collate, classify) == result.val_accuracy  # the kept weights are those
    assert accuracy(result.model, test, collate, classify) > max(0.9, before + 0.2)


def test_bad_examples_and_configs_are_named():
    with pytest.raises(ValueError, match="labels must be a 1-D tensor"):
        Examples([[1]], torch.tensor([0.0]))
    with pytest.raises(ValueError, match="as many"):
        Examples([[1], [2]], torch.tensor([0]))
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        replace(CONFIG, epochs=0)
    with pytest.raises(ValueError, match="precision must be one of"):
        replace(CONFIG, precision="fp8")


def test_spread_and_standard_errors():
    spread = Spread.of([0.30, 0.34, 0.38])
    assert spread.mean == pytest.approx(0.34) and spread.std == pytest.approx(0.04)
    assert spread.se == pytest.approx(0.04 / math.sqrt(3))
    assert spread.format() == "34.0 ± 2.3 (3 seeds, 30.0 to 38.0)"
    assert Spread.of([0.5]).std == 0.0
    with pytest.raises(ValueError, match="finite numbers"):
        Spread.of([float("nan")])
    assert accuracy_se(0.5, 600) == pytest.approx(0.0204, abs=1e-4)  # Chapter 2's "at most 2.0 points"
    assert difference_se(0.5, 600, 0.5, 600) == pytest.approx(0.0289, abs=1e-4)  # the 2.8-point rule of issue 11


def test_evaluations_are_at_most_evals_and_include_the_last_update():
    train, val = toy_examples(50, 0), toy_examples(20, 1)
    for evals, expected in ((6, [6, 12, 18, 24, 30, 32]), (3, [11, 22, 32]), (100, list(range(1, 33)))):
        config = replace(CONFIG, epochs=10, max_steps=32, evals=evals)
        result = finetune(BagClassifier(), train, val, collate, loss_fn, classify, config, seed=0)
        assert result.history.eval_step == expected
