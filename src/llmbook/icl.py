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

``Repeats`` are the other half of Chapter 6's training mixture: random tokens followed by the same tokens again,
rotated by a random offset, so that every token of the second half is predicted by finding it in the first half
and copying what came next (and by nothing else: the tokens of a sequence are distinct). ``counting_baseline`` is
the shortcut a model can find in the episodes without looking up keys, ``induction_scores`` and
``previous_token_scores`` measure the two heads of the circuit that does look them up (Olsson et al. 2022).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmbook.config import check_bool, check_int
from llmbook.gpt import GPT, GPTConfig
from llmbook.trainer import History, Trainer, TrainerConfig, seed_everything


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


@dataclass(frozen=True)
class Repeats:
    """Sequences ``x_1 .. x_L`` of distinct random tokens followed by the same tokens rotated by a random offset r,
    ``x_{r+1} .. x_L x_1 .. x_r``: 2 L tokens. From the second token of the second half on, each token is the one
    that followed its predecessor in the first half (except at the wrap-around, ``x_1`` after ``x_L``)."""

    vocab_size: int = 48
    length: int = 16  # L, half the sequence

    def __post_init__(self) -> None:
        check_int(self, "vocab_size", 2)
        check_int(self, "length", 2, self.vocab_size, allowed=f"an integer in [2, vocab_size={self.vocab_size}]")

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n sequences (n, 2 length)."""
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        L = self.length
        first = torch.rand(n, self.vocab_size, generator=generator).argsort(dim=1)[:, :L]  # distinct tokens
        offset = torch.randint(0, L, (n, 1), generator=generator)
        second = first.gather(1, (torch.arange(L) + offset) % L)
        return torch.cat([first, second], dim=1)


def repeat_loss(model: nn.Module, tokens: Tensor) -> Tensor:
    """Mean cross-entropy of the second half of ``Repeats`` sequences (B, 2L), its first token excluded (the
    offset makes it unpredictable). Introduced in Chapter 6."""
    L = tokens.shape[1] // 2
    logits = model(tokens)[:, L:-1, :]  # the positions L .. 2L - 2 predict tokens L + 1 .. 2L - 1
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, L + 1:].reshape(-1))


def mixture_batch(episodes: Episodes, repeats: Repeats, batch_size: int, repeat_share: float
                  ) -> Callable[[int], tuple[Tensor, Tensor]]:
    """``batch(step) -> (episode tokens, repeat tokens)``: of ``batch_size`` sequences, ``round(repeat_share *
    batch_size)`` are ``Repeats`` and the rest episodes (either part may be empty), drawn from a generator seeded
    with the step. Pair it with ``mixture_loss``."""
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not (isinstance(repeat_share, (int, float)) and 0 <= repeat_share <= 1):
        raise ValueError(f"repeat_share must be a number in [0, 1], got {repeat_share!r}")
    if repeats.vocab_size > episodes.vocab_size:
        raise ValueError(f"repeats.vocab_size ({repeats.vocab_size}) must be at most the episodes' vocab_size "
                         f"({episodes.vocab_size}): the model has one vocabulary")
    n_repeats = round(repeat_share * batch_size)

    def part(sample: Callable[[int, torch.Generator], Tensor], n: int, length: int,
             generator: torch.Generator) -> Tensor:
        return sample(n, generator) if n else torch.zeros(0, length, dtype=torch.long)

    def batch(step: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(step)
        tokens = part(lambda n, g: episodes.sample(n, g)[0], batch_size - n_repeats, episodes.length, generator)
        return tokens, part(repeats.sample, n_repeats, 2 * repeats.length, generator)

    return batch


def mixture_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """The loss of a ``mixture_batch``: the mean cross-entropy over all its predictions, the values of the episodes
    (``episode_loss``) and the second halves of the repeats (``repeat_loss``). Introduced in Chapter 6."""
    episodes, repeats = batch
    parts = [(episode_loss(model, episodes), episodes.shape[0] * (episodes.shape[1] // 2)),
             (repeat_loss(model, repeats), repeats.shape[0] * (repeats.shape[1] // 2 - 1))]
    parts = [(loss, n) for loss, n in parts if n]
    if not parts:
        raise ValueError("the batch holds no sequence")
    return torch.stack([loss * n for loss, n in parts]).sum() / sum(n for _, n in parts)


def train_on_mixture(config: GPTConfig, episodes: Episodes, repeats: Repeats, batch_size: int, repeat_steps: int,
                     repeat_share: float, trainer_config: TrainerConfig,
                     eval_fn: Callable[[GPT], dict[str, float]] | None = None) -> tuple[GPT, History]:
    """Chapter 6's recipe: a fresh ``GPT(config)``, initialised from ``trainer_config.seed``, trained by the book's
    ``Trainer`` with ``mixture_loss`` on repeats only for the first ``repeat_steps`` steps, then on
    ``mixture_batch`` with ``repeat_share`` repeats. Returns the model and its history. Introduced in Chapter 6."""
    if not (isinstance(repeat_steps, int) and repeat_steps >= 0):
        raise ValueError(f"repeat_steps must be an integer >= 0, got {repeat_steps!r}")
    first = mixture_batch(episodes, repeats, batch_size, 1.0)
    then = mixture_batch(episodes, repeats, batch_size, repeat_share)
    seed_everything(trainer_config.seed)
    model = GPT(config)
    trainer = Trainer(model, mixture_loss, lambda step: first(step) if step < repeat_steps else then(step),
                      trainer_config, eval_fn=eval_fn)  # type: ignore[arg-type]
    return model, trainer.fit()


def counting_baseline(episodes: Episodes, tokens: Tensor, shots: Tensor, max_shots: int) -> Tensor:
    """Accuracy by shots (as ``score_by_shots``) of the shortcut that ignores which key is asked: answer the value
    seen most often so far in the episode (ties shared, so the expected accuracy of a random tie-break). It beats
    chance because the asked key tends to be one that occurred often. tokens (B, 2P), shots (B, P) of
    ``episodes``."""
    if not (isinstance(max_shots, int) and max_shots >= 0):
        raise ValueError(f"max_shots must be an integer >= 0, got {max_shots!r}")
    values = tokens[:, 1::2] - episodes.n_keys  # (B, P)
    if bool((values < 0).any() | (values >= episodes.n_values).any()):
        raise ValueError(f"every odd position must hold a value token: ids in [{episodes.n_keys}, "
                         f"{episodes.vocab_size})")
    counts = F.one_hot(values, episodes.n_values).cumsum(1)  # (B, P, n_values): counts up to pair i
    before = torch.cat([torch.zeros_like(counts[:, :1]), counts[:, :-1]], 1)  # strictly before pair i
    best = before == before.max(-1, keepdim=True).values
    hit = best.gather(-1, values[..., None])[..., 0] / best.sum(-1)
    bucket = shots.clamp(max=max_shots)
    for k in range(max_shots + 1):
        if not bool((bucket == k).any()):  # a mean over nothing would be NaN
            raise ValueError(f"no value has {k} shots in these episodes: pass more episodes or a smaller max_shots")
    return torch.stack([hit[bucket == k].float().mean() for k in range(max_shots + 1)])


@torch.no_grad()
def induction_scores(model: GPT, tokens: Tensor, positions: Tensor | None = None) -> Tensor:
    """(n_layers, n_heads): the attention weight each head puts, from a token that occurred before, on the tokens
    that followed its earlier occurrences (an induction head: 1 when it attends only there), averaged over the
    query positions where such an earlier occurrence exists (and ``positions`` (B, T), a boolean mask, allows).
    ``model`` is a GPT (its ``attention_weights``). Introduced in Chapter 6."""
    B, T = tokens.shape
    same = tokens[:, :, None] == tokens[:, None, :]  # (B, T, T): query i, key j hold the same token
    earlier = same & torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril(-1)
    target = torch.zeros_like(earlier)
    target[:, :, 1:] = earlier[:, :, :-1]  # j + 1 follows an earlier occurrence j of token i (j + 1 <= i)
    query = earlier.any(-1) if positions is None else earlier.any(-1) & positions
    if not bool(query.any()):
        raise ValueError("no query position has an earlier occurrence of its token")
    return _mean_mass(model, tokens, target, query)


@torch.no_grad()
def previous_token_scores(model: GPT, tokens: Tensor, positions: Tensor | None = None) -> Tensor:
    """(n_layers, n_heads): the attention weight each head puts on the position just before the query, averaged
    over the query positions 1 .. T - 1 (those ``positions`` (B, T) allows). Introduced in Chapter 6."""
    B, T = tokens.shape
    target = torch.zeros(B, T, T, dtype=torch.bool, device=tokens.device)
    target[:, torch.arange(1, T), torch.arange(T - 1)] = True
    query = target.any(-1) if positions is None else target.any(-1) & positions
    if not bool(query.any()):
        raise ValueError("positions allows no query position after the first")
    return _mean_mass(model, tokens, target, query)


def _mean_mass(model: GPT, tokens: Tensor, target: Tensor, query: Tensor) -> Tensor:
    was_training = model.training
    model.eval()
    weights = torch.stack(model.attention_weights(tokens), 1).float()  # (B, n_layers, H, T, T)
    model.train(was_training)
    mass = (weights * target[:, None, None]).sum(-1)  # (B, n_layers, H, T)
    return (mass * query[:, None, None]).sum((0, 3)) / query.sum()
