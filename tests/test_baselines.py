"""Baselines: n-gram losses against hand counts, the both-sides table against brute force, the logistic regression
against separable data and scikit-style closed cases."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from llmbook.baselines import (
    BothSidesTable,
    bag_of_words,
    bigram_log_probs,
    logistic_regression,
    mean_pooled,
    ngram_loss,
    probe_accuracy,
    unigram_log_probs,
)


def test_unigram_and_bigram_are_add_alpha_counts():
    ids = torch.tensor([0, 1, 1, 2, 1, 0])
    V, alpha = 4, 0.5
    expected = [(2 + alpha) / (6 + alpha * V), (3 + alpha) / (6 + alpha * V)]
    assert torch.allclose(unigram_log_probs(ids, V, alpha)[:2].exp(), torch.tensor(expected, dtype=torch.double))
    bigram = bigram_log_probs(ids, V, alpha).exp()
    # after 1: 1 -> 1, 1 -> 2, 1 -> 0 (three pairs start with 1)
    assert bigram[1, 2].item() == pytest.approx((1 + alpha) / (3 + alpha * V))
    assert torch.allclose(bigram.sum(dim=1), torch.ones(V, dtype=torch.double))
    assert ngram_loss(ids, ids, V, order=0) == pytest.approx(math.log(V))
    assert ngram_loss(ids, ids, V, order=1, alpha=alpha) == pytest.approx(
        -sum(math.log((Counter(ids.tolist())[t] + alpha) / (6 + alpha * V)) for t in ids.tolist()) / 6)
    assert ngram_loss(ids, ids, V, 2) < ngram_loss(ids, ids, V, 1)  # on its own training text


@pytest.mark.parametrize("call, message", [
    (lambda: unigram_log_probs(torch.tensor([0, 5]), 4), r"ids in \[0, vocab_size=4\)"),
    (lambda: unigram_log_probs(torch.tensor([0, 1]), 4, alpha=0), "alpha must be > 0"),
    (lambda: ngram_loss(torch.tensor([0, 1]), torch.tensor([0, 1]), 4, order=3), "order must be 0, 1 or 2"),
    (lambda: bigram_log_probs(torch.tensor([[0, 1]]), 4), "1-D tensor"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_both_sides_table_equals_brute_force_counts():
    torch.manual_seed(0)
    ids = torch.randint(0, 6, (400,))
    table = BothSidesTable(ids, 6)
    counts: dict[tuple[int, int], Counter] = {}
    for a, m, b in zip(ids[:-2].tolist(), ids[1:-1].tolist(), ids[2:].tolist(), strict=True):
        counts.setdefault((a, b), Counter())[m] += 1
    left, right = torch.tensor([k[0] for k in counts]), torch.tensor([k[1] for k in counts])
    expected = [max(c.items(), key=lambda item: (item[1], -item[0]))[0] for c in counts.values()]  # ties: smaller id
    assert table.predict(left, right).tolist() == expected
    assert len(table) == len(counts)
    unseen = BothSidesTable(torch.tensor([0, 1, 0, 2, 2, 2]), 4)
    assert unseen.predict(torch.tensor([3]), torch.tensor([3])).item() == 2  # the most frequent token


def test_logistic_regression_separates_separable_classes_and_probes_features():
    torch.manual_seed(0)
    x = torch.randn(300, 5)
    y = (x @ torch.randn(5, 3)).argmax(dim=1)  # 3 linearly separable classes
    predict = logistic_regression(x[:200], y[:200], 3)
    assert (predict(x[200:]) == y[200:]).float().mean() > 0.9
    noise = torch.randn(300, 5)
    assert probe_accuracy(noise[:200], y[:200], noise[200:], y[200:], 3) < 0.6  # nothing to find
    with pytest.raises(ValueError, match="train_x must be"):
        logistic_regression(x, y[:10], 3)


def test_bag_of_words_and_mean_pooling():
    features = bag_of_words([[1, 1, 3], [0]], 4)
    assert features.tolist() == [[0, 1, 0, 1], [1, 0, 0, 0]]
    hidden = lambda tokens: tokens[..., None].float().expand(*tokens.shape, 2)  # noqa: E731  (1, T, 2)
    assert mean_pooled(hidden, [[1, 2, 3], [4]]).tolist() == [[2.0, 2.0], [4.0, 4.0]]
