"""In-context learning in miniature: episodes of key-value pairs whose mapping is drawn afresh for every episode.

An episode is a sequence ``k1 v1 k2 v2 ... kP vP``. For every episode a few keys are drawn from ``n_keys`` key
tokens and each is given a value drawn from ``n_values`` value tokens; the P pairs then repeat those keys in a
random order, always with their episode's value. Since the mapping changes from one episode to the next, no weight
of a model can store it: the only way to predict ``v_i`` after ``k_i`` is to find an earlier pair with the same key
in the context and copy its value. The number of earlier occurrences of a key is the number of *shots* the model
has for it; at 0 shots its value is unpredictable, and an honest model is at chance, 1 / n_values (the leak check).
With ``fixed_mapping`` every episode uses one mapping, which a model can learn in its weights instead (the
control: it then answers at 0 shots too).

The model is trained and scored only on the value positions (``episode_loss``, ``score_by_shots``). Tokens:
keys are ids 0 .. n_keys - 1, values n_keys .. n_keys + n_values - 1. Introduced in Chapter 6.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmbook.config import check_bool, check_int


@dataclass(frozen=True)
class Episodes:
    """The distribution of episodes; see the module docstring."""

    n_keys: int = 32
    n_values: int = 16
    keys_per_episode: int = 6  # distinct keys in one episode
    n_pairs: int = 16  # pairs per episode: the sequence has 2 n_pairs tokens
    fixed_mapping: bool = False
    mapping_seed: int = 0  # the one mapping, when fixed_mapping

    def __post_init__(self) -> None:
        check_int(self, "n_keys", 1)
        check_int(self, "n_values", 2)
        check_int(self, "keys_per_episode", 1, self.n_keys, allowed=f"an integer in [1, n_keys={self.n_keys}]")
        check_int(self, "n_pairs", 1)
        check_bool(self, "fixed_mapping")
        check_int(self, "mapping_seed", 0)

    @property
    def vocab_size(self) -> int:
        return self.n_keys + self.n_values

    @property
    def length(self) -> int:
        return 2 * self.n_pairs

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """n episodes: tokens (n, 2 n_pairs) and shots (n, n_pairs), the number of earlier pairs in the episode
        with the same key as pair i."""
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        K, P = self.keys_per_episode, self.n_pairs
        keys = torch.rand(n, self.n_keys, generator=generator).argsort(dim=1)[:, :K]  # (n, K) distinct keys
        if self.fixed_mapping:
            table = torch.randint(0, self.n_values, (self.n_keys,), generator=torch.Generator().manual_seed(
                self.mapping_seed))
            values = table[keys]  # (n, K): the same value for a key in every episode
        else:
            values = torch.randint(0, self.n_values, (n, K), generator=generator)  # a fresh mapping per episode
        slot = torch.randint(0, K, (n, P), generator=generator)  # which of the episode's keys each pair uses
        pair_keys = keys.gather(1, slot)  # (n, P)
        pair_values = values.gather(1, slot) + self.n_keys  # (n, P) value token ids
        tokens = torch.stack([pair_keys, pair_values], dim=2).reshape(n, 2 * P)  # k1 v1 k2 v2 ...
        same = slot[:, :, None] == slot[:, None, :]  # (n, P, P): pair i and pair j share a key
        shots = (same & torch.ones(P, P, dtype=torch.bool).tril(-1)).sum(-1)  # earlier pairs j < i
        return tokens, shots

    def train_batch(self, batch_size: int) -> Callable[[int], tuple[Tensor]]:
        """``train_batch(step) -> (tokens,)`` for the book's Trainer: ``batch_size`` episodes drawn from a generator
        seeded with the step (a batch is a function of the step alone)."""
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")

        def batch(step: int) -> tuple[Tensor]:
            return (self.sample(batch_size, torch.Generator().manual_seed(step))[0],)

        return batch


def _value_logits(model: nn.Module, tokens: Tensor) -> Tensor:
    """Logits (B, P, V) at the key positions 0, 2, 4, ..., each of which predicts the value after it."""
    return model(tokens)[:, 0::2, :]


def episode_loss(model: nn.Module, tokens: Tensor) -> Tensor:
    """Mean cross-entropy of every value given the episode up to its key (keys are not predicted: they are
    random). Introduced in Chapter 6."""
    logits = _value_logits(model, tokens)  # (B, P, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1::2].reshape(-1))


@torch.no_grad()
def score_by_shots(model: nn.Module, tokens: Tensor, shots: Tensor, max_shots: int) -> dict[str, Tensor]:
    """Per number of shots 0 .. max_shots (the last bucket holds max_shots or more): ``accuracy`` (the argmax over
    the whole vocabulary is the value), ``log_prob`` (mean log-probability of the value) and ``count`` (values
    scored). Every bucket must hold at least one value. Introduced in Chapter 6."""
    if not (isinstance(max_shots, int) and max_shots >= 0):
        raise ValueError(f"max_shots must be an integer >= 0, got {max_shots!r}")
    if tokens.shape[1] != 2 * shots.shape[1] or tokens.shape[0] != shots.shape[0]:
        raise ValueError(f"tokens {tuple(tokens.shape)} must be (B, 2P) for shots {tuple(shots.shape)} (B, P)")
    was_training = model.training
    model.eval()
    log_probs = _value_logits(model, tokens).float().log_softmax(-1)  # (B, P, V)
    model.train(was_training)
    targets = tokens[:, 1::2]
    correct = (log_probs.argmax(-1) == targets).float()
    target_lp = log_probs.gather(-1, targets[..., None])[..., 0]
    bucket = shots.clamp(max=max_shots)
    out = {name: torch.zeros(max_shots + 1) for name in ("accuracy", "log_prob", "count")}
    for k in range(max_shots + 1):
        where = bucket == k
        if not bool(where.any()):  # a mean over nothing would be NaN
            raise ValueError(f"no value has {k} shots in these episodes: pass more episodes or a smaller max_shots")
        out["count"][k] = where.sum()
        out["accuracy"][k] = correct[where].mean()
        out["log_prob"][k] = target_lp[where].mean()
    return out
