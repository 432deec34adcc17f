"""The baselines a trained model must beat before it shows anything: counts, tables and linear models.

- n-gram language models with one smoothing, add-alpha: ``unigram_log_probs``, ``bigram_log_probs`` and the mean
  loss they give held-out text, ``ngram_loss`` (nats per token);
- for masked tokens, the context-free guess (the most frequent token) and the both-sides table,
  ``BothSidesTable``: the token seen most often between the same left and right neighbours;
- for classification, ``bag_of_words`` features and a multinomial logistic regression (``logistic_regression``),
  which is also the linear probe on a frozen network's vectors (``mean_pooled``).
Introduced in Chapter 2.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_ids(ids: Tensor, vocab_size: int, name: str = "ids") -> None:
    if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.dtype != torch.long or not len(ids):
        raise ValueError(f"{name} must be a non-empty 1-D tensor of token ids (torch.long)")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise ValueError(f"{name} must hold ids in [0, vocab_size={vocab_size})")


def unigram_log_probs(ids: Tensor, vocab_size: int, alpha: float = 0.5) -> Tensor:
    """(V,) log P(token): (count + alpha) / (N + alpha V). Introduced in Chapter 2."""
    _check_ids(ids, vocab_size)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0 (no token may get probability 0), got {alpha}")
    counts = torch.bincount(ids, minlength=vocab_size).double() + alpha
    return (counts / counts.sum()).log()


def bigram_log_probs(ids: Tensor, vocab_size: int, alpha: float = 0.5) -> Tensor:
    """(V, V) log P(next | previous): (count(previous, next) + alpha) / (count(previous) + alpha V).

    Introduced in Chapter 2.
    """
    _check_ids(ids, vocab_size)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0 (no pair may get probability 0), got {alpha}")
    V = vocab_size
    counts = torch.bincount(ids[:-1] * V + ids[1:], minlength=V * V).double().view(V, V) + alpha
    return (counts / counts.sum(dim=1, keepdim=True)).log()


def ngram_loss(train_ids: Tensor, eval_ids: Tensor, vocab_size: int, order: int, alpha: float = 0.5) -> float:
    """Mean cross-entropy (nats per token) of ``eval_ids`` under the add-alpha n-gram of ``train_ids``.

    ``order`` 0 is the uniform guess (ln V), 1 the unigram, 2 the bigram (which scores tokens 2..N of eval_ids).
    Introduced in Chapter 2.
    """
    _check_ids(eval_ids, vocab_size, "eval_ids")
    if order == 0:
        return float(torch.tensor(float(vocab_size)).log())
    if order == 1:
        return float(-unigram_log_probs(train_ids, vocab_size, alpha)[eval_ids].mean())
    if order == 2:
        return float(-bigram_log_probs(train_ids, vocab_size, alpha)[eval_ids[:-1], eval_ids[1:]].mean())
    raise ValueError(f"order must be 0, 1 or 2, got {order!r}")


class BothSidesTable:
    """The masked-token guess from both neighbours: the token seen most often between ``left`` and ``right``.

    Counted on the training ids; a pair of neighbours never seen gives the most frequent token. Ties go to the
    smaller token id. Introduced in Chapter 3.
    """

    def __init__(self, ids: Tensor, vocab_size: int) -> None:
        _check_ids(ids, vocab_size)
        V = vocab_size
        self.vocab_size = V
        self.fallback = int(torch.bincount(ids, minlength=V).argmax())
        triples, counts = torch.unique((ids[:-2] * V + ids[2:]) * V + ids[1:-1], return_counts=True)
        pairs, middles = triples // V, triples % V
        # Sort by pair, then by count descending, then by middle ascending: the first row of each pair wins.
        order = torch.argsort(middles, stable=True)
        order = order[torch.argsort(-counts[order], stable=True)]
        order = order[torch.argsort(pairs[order], stable=True)]
        pairs, middles = pairs[order], middles[order]
        first = torch.ones_like(pairs, dtype=torch.bool)
        first[1:] = pairs[1:] != pairs[:-1]
        self.pairs, self.best = pairs[first], middles[first]  # sorted pairs and their most frequent middle

    def __len__(self) -> int:
        return len(self.pairs)

    def predict(self, left: Tensor, right: Tensor) -> Tensor:
        """The guessed middle token for every (left, right) pair of neighbour ids (same shapes)."""
        keys = left.long() * self.vocab_size + right.long()
        where = torch.searchsorted(self.pairs, keys.flatten()).clamp(max=len(self.pairs) - 1)
        found = self.pairs[where] == keys.flatten()
        guess = torch.where(found, self.best[where], torch.full_like(where, self.fallback))
        return guess.view(keys.shape)


def bag_of_words(sequences: Sequence[Sequence[int]], vocab_size: int) -> Tensor:
    """(N, V) features: 1 where a token occurs in the sequence, 0 elsewhere. Introduced in Chapter 2."""
    features = torch.zeros(len(sequences), vocab_size)
    for i, sequence in enumerate(sequences):
        features[i, list(sequence)] = 1.0
    return features


@torch.no_grad()
def mean_pooled(hidden_states: Callable[[Tensor], Tensor], sequences: Sequence[Sequence[int]],
                device: torch.device | str = "cpu") -> Tensor:
    """(N, D) features for a probe: the mean over positions of ``hidden_states(tokens (1, T)) -> (1, T, D)``.

    Introduced in Chapter 2.
    """
    return torch.stack([hidden_states(torch.tensor([list(s)], device=device))[0].mean(dim=0).float().cpu()
                        for s in sequences])


def logistic_regression(train_x: Tensor, train_y: Tensor, n_classes: int, l2: float = 1e-3,
                        max_iter: int = 200) -> Callable[[Tensor], Tensor]:
    """Fit a multinomial logistic regression on standardised features with L-BFGS; return ``predict(x) -> labels``.

    The loss is the mean cross-entropy plus ``l2`` times the squared weights (not the bias). Features are scaled by
    the training mean and standard deviation (at least 0.01, for features constant in training). Used as the
    bag-of-words baseline and as the linear probe. Introduced in Chapter 2.
    """
    if train_x.dim() != 2 or train_y.shape != (train_x.shape[0],):
        raise ValueError(f"train_x must be (N, F) and train_y (N,), got {tuple(train_x.shape)} and "
                         f"{tuple(train_y.shape)}")
    mean, std = train_x.mean(dim=0), train_x.std(dim=0).nan_to_num(1.0).clamp(min=1e-2)
    weights = torch.zeros(train_x.shape[1], n_classes, requires_grad=True)
    bias = torch.zeros(n_classes, requires_grad=True)
    x = (train_x - mean) / std
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def objective() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weights + bias, train_y) + l2 * weights.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(objective)
    w, b = weights.detach(), bias.detach()
    return lambda features: (((features - mean) / std) @ w + b).argmax(dim=-1)


def probe_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, n_classes: int,
                   l2: float = 1e-3) -> float:
    """Test accuracy of ``logistic_regression`` fitted on the training features. Introduced in Chapter 2."""
    predict = logistic_regression(train_x, train_y, n_classes, l2)
    return float((predict(test_x) == test_y).float().mean())
