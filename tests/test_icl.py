"""llmbook.icl: episodes hold one mapping each (fresh or fixed), shots are counted right, the scorer is exact;
repeats are rotated copies; the counting baseline and the head scores are exact on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmbook.gpt import GPT, GPTConfig
from llmbook.icl import (
    Episodes,
    Repeats,
    counting_baseline,
    episode_loss,
    induction_scores,
    mixture_batch,
    mixture_loss,
    previous_token_scores,
    repeat_loss,
    score_by_shots,
    train_on_mixture,
)


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


def test_repeats_are_distinct_tokens_then_the_same_tokens_rotated():
    repeats = Repeats(vocab_size=20, length=7)
    tokens = repeats.sample(64, torch.Generator().manual_seed(0))
    assert tokens.shape == (64, 14) and int(tokens.max()) < 20
    offsets = set()
    for row in tokens.tolist():
        first, second = row[:7], row[7:]
        assert len(set(first)) == 7
        offset = first.index(second[0])
        assert second == first[offset:] + first[:offset]
        offsets.add(offset)
    assert offsets == set(range(7))  # every rotation occurs
    assert torch.equal(tokens, repeats.sample(64, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("bad", [dict(vocab_size=1), dict(length=1), dict(vocab_size=5, length=6)])
def test_bad_repeats_are_refused(bad):
    with pytest.raises(ValueError, match="vocab_size|length"):
        Repeats(**bad)


def test_repeat_loss_scores_the_second_half_after_its_first_token():
    model = GPT(GPTConfig(vocab_size=20, context_length=14, d_model=16, n_heads=2, n_layers=1, d_ff=0,
                          dropout=0.0))
    tokens = Repeats(vocab_size=20, length=7).sample(3, torch.Generator().manual_seed(1))
    logits = model(tokens)
    manual = F.cross_entropy(logits[:, 7:13].reshape(-1, 20), tokens[:, 8:].reshape(-1))
    torch.testing.assert_close(repeat_loss(model, tokens), manual)


def test_mixture_batches_and_loss():
    episodes, repeats = Episodes(n_keys=8, n_values=4, keys_per_episode=3, n_pairs=5), Repeats(12, 4)
    batch = mixture_batch(episodes, repeats, 8, repeat_share=0.75)
    first = batch(4)
    assert [t.shape for t in first] == [(2, 10), (6, 8)]
    assert all(torch.equal(a, b) for a, b in zip(first, batch(4), strict=True))
    assert [t.shape for t in mixture_batch(episodes, repeats, 8, 0.0)(4)] == [(8, 10), (0, 8)]
    model = GPT(GPTConfig(vocab_size=12, context_length=10, d_model=16, n_heads=2, n_layers=1, d_ff=0,
                          dropout=0.0))
    # 2 episodes x 5 values and 6 repeats x 3 predicted tokens: the mean over all 28 predictions
    both = (10 * episode_loss(model, first[0]) + 18 * repeat_loss(model, first[1])) / 28
    torch.testing.assert_close(mixture_loss(model, first), both)
    only_episodes = mixture_batch(episodes, repeats, 8, 0.0)(4)
    torch.testing.assert_close(mixture_loss(model, only_episodes), episode_loss(model, only_episodes[0]))
    with pytest.raises(ValueError, match="vocab_size"):
        mixture_batch(episodes, Repeats(13, 5), 6, 0.5)
    with pytest.raises(ValueError, match="batch_size"):
        mixture_batch(episodes, repeats, 0, 0.5)
    with pytest.raises(ValueError, match="repeat_share"):
        mixture_batch(episodes, repeats, 8, 1.5)


def test_counting_baseline_on_a_hand_made_episode():
    # keys 0, 1, 2; values 3, 4, 5, 6. Pairs (0, 3) (1, 4) (0, 3) (2, 4) (0, 3), shots 0 0 1 0 2.
    episodes = Episodes(n_keys=3, n_values=4, keys_per_episode=3, n_pairs=5)
    tokens = torch.tensor([[0, 3, 1, 4, 0, 3, 2, 4, 0, 3]])
    shots = torch.tensor([[0, 0, 1, 0, 2]])
    # pair 1: nothing seen, a tie of 4 values (1/4); pair 2: answers 3, wrong; pair 3: tie of 3 and 4 (1/2);
    # pair 4: answers 3 (seen twice), wrong; pair 5: tie of 3 and 4 (1/2)
    baseline = counting_baseline(episodes, tokens, shots, max_shots=2)
    torch.testing.assert_close(baseline, torch.tensor([(0.25 + 0 + 0) / 3, 0.5, 0.5]))
    with pytest.raises(ValueError, match="value token"):
        counting_baseline(episodes, tokens - 1, shots, max_shots=2)
    with pytest.raises(ValueError, match="no value has 3 shots"):  # an empty bucket, not a NaN
        counting_baseline(episodes, tokens, shots, max_shots=3)


class FixedAttention(nn.Module):
    """A stand-in for a GPT whose attention_weights are given: 1 layer, 2 heads."""

    def __init__(self, weights):
        super().__init__()
        self.weights = weights

    def attention_weights(self, tokens):
        return [self.weights]


def test_induction_and_previous_token_scores_of_hand_made_heads():
    tokens = torch.tensor([[5, 6, 7, 5, 6, 7]])
    T = 6
    induction = torch.zeros(1, T, T)  # head 0: from the second 5, 6, 7 to the 6, 7, 5 after the first ones
    for i, j in ((3, 1), (4, 2), (5, 3)):
        induction[0, i, j] = 1
    for i in range(3):  # positions without an earlier occurrence: anywhere (not scored)
        induction[0, i, 0] = 1
    previous = torch.zeros(1, T, T)  # head 1: always the token before
    previous[0, 0, 0] = 1
    for i in range(1, T):
        previous[0, i, i - 1] = 1
    model = FixedAttention(torch.stack([induction, previous], 1))  # (B, H, T, T)
    torch.testing.assert_close(induction_scores(model, tokens), torch.tensor([[1.0, 0.0]]))
    # head 0 attends from position 1 to 0, the previous token: 1 of the 5 scored positions
    torch.testing.assert_close(previous_token_scores(model, tokens), torch.tensor([[0.2, 1.0]]))
    only_last = torch.zeros(1, T, dtype=torch.bool)
    only_last[0, 5] = True  # position 5: head 0 attends to 3, not to 4
    torch.testing.assert_close(previous_token_scores(model, tokens, only_last), torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="earlier occurrence"):
        induction_scores(model, torch.tensor([[0, 1, 2, 3, 4, 5]]))


def test_train_on_mixture_reads_repeats_first_then_the_mixture():
    from llmbook.trainer import Trainer, TrainerConfig, seed_everything

    episodes, repeats = Episodes(n_keys=8, n_values=4, keys_per_episode=3, n_pairs=5), Repeats(12, 5)
    config = GPTConfig(vocab_size=12, context_length=10, d_model=16, n_heads=2, n_layers=2, d_ff=0, dropout=0.0)
    trainer_config = TrainerConfig(max_steps=4, lr=1e-2, device="cpu", seed=3)
    model, history = train_on_mixture(config, episodes, repeats, 4, 2, 0.5, trainer_config)
    # the same run by hand: steps 0 and 1 repeats only, steps 2 and 3 half and half
    first, then = mixture_batch(episodes, repeats, 4, 1.0), mixture_batch(episodes, repeats, 4, 0.5)
    assert [t.shape[0] for t in first(0)] == [0, 4] and [t.shape[0] for t in then(2)] == [2, 2]
    seed_everything(3)
    reference = GPT(config)
    expected = Trainer(reference, mixture_loss, lambda step: first(step) if step < 2 else then(step),
                       trainer_config).fit()
    assert history.train_loss == expected.train_loss and len(history.train_loss) == 4
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="repeat_steps"):
        train_on_mixture(config, episodes, repeats, 4, -1, 0.5, trainer_config)
