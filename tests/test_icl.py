"""llmbook.icl: episodes hold one mapping each (fresh or fixed), shots are counted right, the scorer is exact."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmbook.gpt import GPT, GPTConfig
from llmbook.icl import Episodes, episode_loss, score_by_shots


def _mapping(keys, values):
    pairs = {}
    for k, v in zip(keys.tolist(), values.tolist(), strict=True):
        assert pairs.setdefault(k, v) == v, "a key changed its value within an episode"
    return pairs


def test_episodes_alternate_keys_and_values_with_one_mapping_each():
    task = Episodes(n_keys=10, n_values=5, keys_per_episode=3, n_pairs=12)
    tokens, shots = task.sample(200, torch.Generator().manual_seed(0))
    assert tokens.shape == (200, 24) and shots.shape == (200, 12)
    keys, values = tokens[:, 0::2], tokens[:, 1::2]
    assert keys.max() < 10 and values.min() >= 10 and values.max() < 15
    for i in range(200):
        assert len(_mapping(keys[i], values[i])) <= 3
        expected = [keys[i, :j].tolist().count(keys[i, j].item()) for j in range(12)]
        assert shots[i].tolist() == expected


def test_fresh_mappings_change_between_episodes_and_a_fixed_one_does_not():
    fresh = Episodes(n_keys=4, n_values=8, keys_per_episode=4, n_pairs=8)
    fixed = Episodes(n_keys=4, n_values=8, keys_per_episode=4, n_pairs=8, fixed_mapping=True)
    for task, distinct in ((fresh, 8), (fixed, 1)):
        tokens, _ = task.sample(400, torch.Generator().manual_seed(1))
        seen = {}
        for row in tokens:
            for k, v in _mapping(row[0::2], row[1::2]).items():
                seen.setdefault(k, set()).add(v)
        assert all(len(v) == distinct for v in seen.values()), (task, seen)


def test_batches_are_a_function_of_the_step():
    batch = Episodes().train_batch(8)
    assert torch.equal(batch(3)[0], batch(3)[0]) and not torch.equal(batch(3)[0], batch(4)[0])
    a, _ = Episodes().sample(5, torch.Generator().manual_seed(7))
    b, _ = Episodes().sample(5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [dict(keys_per_episode=40), dict(n_values=1), dict(n_pairs=0),
                                 dict(fixed_mapping=1)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Episodes(**bad)
    with pytest.raises(ValueError, match="batch_size"):
        Episodes().train_batch(0)


class CopyLastValue(nn.Module):
    """An oracle: at a key, put all mass on the value that followed its latest earlier occurrence (else token 0)."""

    def __init__(self, vocab_size):
        super().__init__()
        self.V = vocab_size

    def forward(self, tokens):
        logits = torch.full((*tokens.shape, self.V), -30.0)
        for b in range(tokens.shape[0]):
            for t in range(0, tokens.shape[1], 2):
                earlier = [s for s in range(0, t, 2) if tokens[b, s] == tokens[b, t]]
                logits[b, t, tokens[b, earlier[-1] + 1] if earlier else 0] = 30.0
        return logits


class Uniform(CopyLastValue):
    def forward(self, tokens):
        return torch.zeros(*tokens.shape, self.V)


def test_score_by_shots_of_an_oracle_and_of_a_uniform_model():
    task = Episodes(n_keys=8, n_values=4, keys_per_episode=3, n_pairs=10)
    tokens, shots = task.sample(50, torch.Generator().manual_seed(2))
    oracle = score_by_shots(CopyLastValue(task.vocab_size), tokens, shots, max_shots=3)
    assert oracle["accuracy"][0] == 0 and torch.all(oracle["accuracy"][1:] == 1)  # token 0 is a key, never a value
    assert int(oracle["count"].sum()) == 50 * 10 and int(oracle["count"][0]) == int((shots == 0).sum())
    uniform = score_by_shots(Uniform(task.vocab_size), tokens, shots, max_shots=3)
    torch.testing.assert_close(uniform["log_prob"], torch.full((4,), -math.log(task.vocab_size)))
    with pytest.raises(ValueError, match="shots"):
        score_by_shots(CopyLastValue(task.vocab_size), tokens, shots, max_shots=50)


def test_episode_loss_is_the_cross_entropy_of_the_values_only():
    task = Episodes(n_keys=8, n_values=4, keys_per_episode=3, n_pairs=6)
    model = GPT(GPTConfig(vocab_size=task.vocab_size, context_length=task.length, d_model=16, n_heads=2,
                          n_layers=1, d_ff=32, dropout=0.0))
    tokens, _ = task.sample(4, torch.Generator().manual_seed(3))
    logits = model(tokens)
    manual = F.cross_entropy(logits[:, 0::2].reshape(-1, task.vocab_size), tokens[:, 1::2].reshape(-1))
    torch.testing.assert_close(episode_loss(model, tokens), manual)
