"""Decoding: beam search against brute force, width 1 and top-k 1 against greedy, sampling statistics, errors."""

import itertools
import math

import pytest
import torch
from torch.testing import assert_close

from llmbook.decoding import (
    Hypothesis,
    beam_search,
    beam_search_batch,
    filter_logits,
    greedy_decode,
    length_penalty_factor,
    sample,
)

V, EOS = 4, 3


def make_scorer(seed: int, vocab_size: int = V, scale: float = 2.0):
    """A tiny random 'language model' whose next-token logits depend on the whole prefix, not just its last token."""
    g = torch.Generator().manual_seed(seed)
    by_last = torch.randn(vocab_size, vocab_size, generator=g) * scale
    by_sum = torch.randn(7, vocab_size, generator=g) * scale
    by_length = torch.randn(32, vocab_size, generator=g) * scale

    def next_token_logits(prefix: torch.Tensor) -> torch.Tensor:
        return by_last[prefix[:, -1]] + by_sum[prefix.sum(dim=1) % 7] + by_length[prefix.shape[1]]  # (B, V)

    return next_token_logits


def brute_force(next_token_logits, prefix, max_new_tokens, eos_id, alpha):
    """Every sequence beam search could return (eos-terminated, or max length without eos), scored exactly."""
    others = [t for t in range(V) if t != eos_id]
    sequences = [list(s) + [eos_id] for n in range(max_new_tokens) for s in itertools.product(others, repeat=n)]
    sequences += [list(s) for s in itertools.product(others, repeat=max_new_tokens)]
    results = []
    for new in sequences:
        tokens = torch.cat([prefix, torch.tensor(new)])
        log_prob = sum(
            float(next_token_logits(tokens[None, : len(prefix) + i]).log_softmax(-1)[0, t]) for i, t in enumerate(new)
        )
        results.append((tokens, log_prob, log_prob / length_penalty_factor(len(new), alpha)))
    return sorted(results, key=lambda r: r[2], reverse=True)


@pytest.mark.parametrize("seed, alpha", [(0, 0.6), (1, 0.0), (2, 1.0)])
def test_beam_as_wide_as_the_space_equals_brute_force(seed, alpha):
    fn, prefix, n = make_scorer(seed), torch.tensor([1, 0]), 4
    expected = brute_force(fn, prefix, n, EOS, alpha)
    got = beam_search(fn, prefix, beam_width=V**n, max_new_tokens=n, eos_id=EOS, length_penalty=alpha)
    assert len(got) == len(expected) == sum((V - 1) ** k for k in range(n + 1))
    for hyp, (tokens, log_prob, score) in zip(got, expected, strict=True):
        assert isinstance(hyp, Hypothesis)
        assert hyp.tokens.tolist() == tokens.tolist()
        assert_close(hyp.log_prob, log_prob, rtol=1e-5, atol=1e-5)
        assert_close(hyp.score, score, rtol=1e-5, atol=1e-5)


def test_narrow_beam_returns_sorted_hypotheses_that_brute_force_scores_the_same():
    fn, prefix = make_scorer(3), torch.tensor([2])
    exact = {tuple(t.tolist()): s for t, _, s in brute_force(fn, prefix, 4, EOS, 0.6)}
    got = beam_search(fn, prefix, beam_width=3, max_new_tokens=4, eos_id=EOS)
    assert 1 <= len(got) <= 3
    assert [h.score for h in got] == sorted((h.score for h in got), reverse=True)
    for h in got:
        assert_close(h.score, exact[tuple(h.tokens.tolist())], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_beam_width_one_is_greedy(seed):
    fn, prefix = make_scorer(seed), torch.tensor([seed % 3])
    greedy = greedy_decode(fn, prefix[None, :], max_new_tokens=6, eos_id=EOS)[0]
    (best,) = beam_search(fn, prefix, beam_width=1, max_new_tokens=6, eos_id=EOS)
    assert best.tokens.tolist() == greedy.tolist()


def test_beam_without_eos_returns_full_length_hypotheses():
    hyps = beam_search(make_scorer(4), torch.tensor([0]), beam_width=5, max_new_tokens=3, eos_id=None)
    assert len(hyps) == 5 and all(len(h.tokens) == 4 for h in hyps)
    assert len({tuple(h.tokens.tolist()) for h in hyps}) == 5


def test_zero_new_tokens_returns_the_prefix():
    prefix = torch.tensor([[1, 2], [0, 1]])
    assert torch.equal(greedy_decode(make_scorer(0), prefix, 0), prefix)
    (hyp,) = beam_search(make_scorer(0), prefix[0], beam_width=3, max_new_tokens=0, eos_id=EOS)
    assert hyp.tokens.tolist() == [1, 2] and hyp.log_prob == 0.0


def test_greedy_pads_finished_rows_with_eos_and_stops_when_all_are_done():
    def fn(prefix):  # row b says eos once its length exceeds its first token, otherwise token 1
        done = prefix.shape[1] > prefix[:, 0]
        logits = torch.zeros(prefix.shape[0], V)
        logits[:, 1] = 1.0
        logits[done, EOS] = 2.0
        return logits

    out = greedy_decode(fn, torch.tensor([[1], [2]]), max_new_tokens=10, eos_id=EOS)
    assert out.tolist() == [[1, 1, EOS, EOS], [2, 1, 1, EOS]]  # row 0 padded with eos; stopped at length 4


def test_sample_with_top_k_one_or_tiny_temperature_is_greedy():
    fn, prefix = make_scorer(5, vocab_size=10), torch.tensor([[0], [3], [7]])
    greedy = greedy_decode(fn, prefix, max_new_tokens=12)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample(fn, prefix, 12, top_k=1, generator=g), greedy)
    assert torch.equal(sample(fn, prefix, 12, temperature=1e-4, generator=g), greedy)


def test_seeded_sampling_is_reproducible_and_the_seed_matters():
    fn, prefix = make_scorer(6, vocab_size=10, scale=0.5), torch.zeros(4, 1, dtype=torch.long)
    draw = lambda seed: sample(fn, prefix, 20, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(1), draw(1))
    assert not torch.equal(draw(1), draw(2))


@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.5, None), (2.0, 3)])
def test_sampling_frequencies_follow_the_tempered_top_k_distribution(temperature, top_k):
    logits = torch.tensor([1.0, 0.0, -0.5, 2.0, 0.3])
    n = 40_000
    tokens = sample(lambda p: logits.expand(p.shape[0], -1), torch.zeros(n, 1, dtype=torch.long), 1,
                    temperature=temperature, top_k=top_k, generator=torch.Generator().manual_seed(0))[:, 1]
    expected = logits / temperature
    if top_k is not None:
        expected = expected.masked_fill(logits < logits.topk(top_k).values[-1], -math.inf)
    frequencies = torch.bincount(tokens, minlength=5).float() / n
    assert_close(frequencies, expected.softmax(-1), atol=0.01, rtol=0)


def nucleus(probs: list[float], p: float) -> list[float]:
    """Oracle: walk the tokens from the most likely, keep them until their mass reaches p, renormalise."""
    kept, mass = set(), 0.0
    for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
        if mass >= p:
            break
        kept.add(i)
        mass += probs[i]
    return [probs[i] / mass if i in kept else 0.0 for i in range(len(probs))]


LOGITS = torch.tensor([1.0, 0.0, -0.5, 2.0, 0.3])  # probabilities 0.208, 0.077, 0.046, 0.566, 0.103 (rounded)


# Sorted, the cumulative probabilities are 0.566, 0.774, 0.877, 0.954, 1: p = 0.6 keeps 2 tokens, 0.566 + 0.208.
@pytest.mark.parametrize("top_p, n_kept", [(0.5, 1), (0.6, 2), (0.8, 3), (0.9, 4), (0.96, 5)])
def test_top_p_keeps_the_smallest_set_that_reaches_p_and_the_token_that_crosses_it(top_p, n_kept):
    probs = filter_logits(LOGITS[None], top_p=top_p).softmax(-1)[0]
    expected = nucleus(LOGITS.softmax(-1).tolist(), top_p)
    assert int((probs > 0).sum()) == n_kept
    assert_close(probs, torch.tensor(expected), rtol=1e-6, atol=1e-7)


def test_top_p_one_is_plain_sampling_and_a_tiny_top_p_is_greedy():
    fn, prefix = make_scorer(7, vocab_size=10, scale=0.5), torch.tensor([[0], [4], [9]])
    plain = sample(fn, prefix, 15, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample(fn, prefix, 15, top_p=1.0, generator=torch.Generator().manual_seed(3)), plain)
    assert torch.equal(sample(fn, prefix, 15, top_p=1e-6, generator=torch.Generator().manual_seed(3)),
                       greedy_decode(fn, prefix, 15))


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, 0.7), (0.5, None, 0.9), (2.0, 3, 0.6),
                                                       (2.0, 4, 0.8)])
def test_sampling_frequencies_follow_the_tempered_top_k_then_top_p_distribution(temperature, top_k, top_p):
    n = 40_000
    tokens = sample(lambda p: LOGITS.expand(p.shape[0], -1), torch.zeros(n, 1, dtype=torch.long), 1,
                    temperature=temperature, top_k=top_k, top_p=top_p, generator=torch.Generator().manual_seed(0))[:, 1]
    tempered = LOGITS / temperature  # temperature first, then top-k, then top-p on what is left
    if top_k is not None:
        tempered = tempered.masked_fill(LOGITS < LOGITS.topk(top_k).values[-1], -math.inf)
    expected = torch.tensor(nucleus(tempered.softmax(-1).tolist(), top_p))
    frequencies = torch.bincount(tokens, minlength=5).float() / n
    assert_close(frequencies, expected, atol=0.01, rtol=0)
    assert bool((frequencies[expected == 0] == 0).all())  # a token cut off is never drawn


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, None, 0.8), (0.7, 20, 0.9), (1.3, 5, 0.5),
                                                       (1.0, 50, None)])
def test_filter_logits_equals_hugging_faces_warpers_in_their_order(temperature, top_k, top_p):
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1)) * 2  # (B, V)
    expected = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k is not None:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p is not None:
        expected = TopPLogitsWarper(top_p)(None, expected)
    got = filter_logits(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    assert_close(got.softmax(-1), expected.softmax(-1), rtol=1e-6, atol=1e-7)


def test_errors():
    fn, prefix = make_scorer(0), torch.tensor([[1]])
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(fn, prefix[0], beam_width=0, max_new_tokens=3, eos_id=EOS)
    with pytest.raises(ValueError, match="temperature"):
        sample(fn, prefix, 3, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        sample(fn, prefix, 3, top_k=0)
    for bad in (0, 0.0, 1.5, -0.1, float("nan"), True, "0.9"):
        with pytest.raises(ValueError, match=r"top_p must be None or a real number in \(0, 1\]"):
            sample(fn, prefix, 3, top_p=bad)
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_decode(fn, prefix, -1)
    with pytest.raises(ValueError, match=r"prefix must have shape \(B, t0\)"):
        greedy_decode(fn, prefix[0], 3)
    with pytest.raises(ValueError, match=r"prefix must have shape \(t0,\)"):
        beam_search(fn, prefix, beam_width=2, max_new_tokens=3, eos_id=EOS)
    with pytest.raises(TypeError, match="integer token ids"):
        greedy_decode(fn, prefix.float(), 3)
    with pytest.raises(ValueError, match="eos_id must be <"):
        greedy_decode(fn, prefix, 3, eos_id=V)
    with pytest.raises(ValueError, match="next_token_logits must return"):
        greedy_decode(lambda p: torch.zeros(V), prefix, 3)


@pytest.mark.parametrize("width, alpha", [(1, 0.6), (3, 0.0), (3, 0.6), (8, 1.0)])
def test_batched_beam_search_equals_one_example_at_a_time(width, alpha):
    fn = make_scorer(5, vocab_size=6)
    prefixes = torch.tensor([[0, 1], [2, 2], [4, 0], [1, 5]])

    def batched_fn(rows: torch.Tensor) -> torch.Tensor:  # (B * width, t): each row scored on its own
        return fn(rows)

    got = beam_search_batch(batched_fn, prefixes, width, max_new_tokens=6, eos_id=EOS, length_penalty=alpha)
    assert len(got) == len(prefixes)
    for prefix, hyps in zip(prefixes, got, strict=True):
        expected = beam_search(fn, prefix, width, max_new_tokens=6, eos_id=EOS, length_penalty=alpha)
        assert [h.tokens.tolist() for h in hyps] == [h.tokens.tolist() for h in expected]
        assert_close(torch.tensor([h.log_prob for h in hyps]), torch.tensor([h.log_prob for h in expected]))
        assert_close(torch.tensor([h.score for h in hyps]), torch.tensor([h.score for h in expected]))


def test_greedy_with_a_minimum_length_never_stops_early():
    def fn(prefix):  # eos is always the most likely token, token 1 the second
        logits = torch.zeros(prefix.shape[0], V)
        logits[:, EOS], logits[:, 1] = 5.0, 1.0
        return logits

    out = greedy_decode(fn, torch.zeros(3, 1, dtype=torch.long), 6, eos_id=EOS, min_new_tokens=torch.tensor([0, 2, 4]))
    assert out[:, 1:].tolist() == [[EOS] * 5, [1, 1, EOS, EOS, EOS], [1, 1, 1, 1, EOS]]  # stops once all ended
    with pytest.raises(ValueError, match="min_new_tokens"):
        greedy_decode(fn, torch.zeros(1, 1, dtype=torch.long), 3, eos_id=EOS, min_new_tokens=4)
    with pytest.raises(ValueError, match="needs an eos_id"):
        greedy_decode(fn, torch.zeros(1, 1, dtype=torch.long), 3, min_new_tokens=1)
