"""Decoding: turn a next-token distribution into sequences by greedy search, sampling or beam search.

Nothing here knows about a model. Every function takes ``next_token_logits``, a function from a batch of prefixes
(B, t) to the logits of the next token (B, V); a model becomes one with a small closure (for the encoder-decoder,
``llmbook.transformer.next_token_logits_fn``). Greedy search and sampling extend a batch of prefixes in step; beam
search explores one prefix. All three run without gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

NextTokenLogits = Callable[[Tensor], Tensor]  # (B, t) int64 prefixes -> (B, V) logits for the next token


@dataclass
class Hypothesis:
    """One beam-search result: the whole sequence (prefix + new tokens), its log-probability and its score.

    ``score`` is ``log_prob`` divided by the GNMT length penalty. Introduced in Chapter 1.
    """

    tokens: Tensor
    log_prob: float
    score: float


def length_penalty_factor(length: int, alpha: float) -> float:
    """GNMT length penalty lp(Y) = ((5 + |Y|) / 6) ** alpha (Wu et al. 2016); score = log P(Y) / lp(Y).

    With alpha = 0 the score is the plain log-probability, which favours short outputs. Introduced in Chapter 1.
    """
    return ((5.0 + length) / 6.0) ** alpha


def _check_prefix(prefix: Tensor, dims: int, shape: str) -> None:
    if not isinstance(prefix, Tensor):
        raise TypeError(f"prefix must be a torch.Tensor of token ids, got {type(prefix).__name__}")
    if prefix.dim() != dims:
        raise ValueError(f"prefix must have shape {shape}, got {tuple(prefix.shape)}")
    if prefix.dtype.is_floating_point or prefix.dtype.is_complex or prefix.dtype == torch.bool:
        raise TypeError(f"prefix must hold integer token ids, got dtype {prefix.dtype}")


def _check_common(max_new_tokens: int, eos_id: int | None) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if eos_id is not None and (not isinstance(eos_id, int) or eos_id < 0):
        raise ValueError(f"eos_id must be None or an integer >= 0, got {eos_id!r}")


def _next_logits(next_token_logits: NextTokenLogits, prefixes: Tensor, eos_id: int | None) -> Tensor:
    """Call the user's function and check that it returned (B, V) logits."""
    logits = next_token_logits(prefixes)
    B = prefixes.shape[0]
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != B:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"next_token_logits must return logits of shape (B={B}, V), got {shape}")
    if eos_id is not None and eos_id >= logits.shape[1]:
        raise ValueError(f"eos_id must be < the vocabulary size {logits.shape[1]}, got {eos_id}")
    return logits.float()


def _extend(
    next_token_logits: NextTokenLogits,
    prefix: Tensor,
    max_new_tokens: int,
    eos_id: int | None,
    choose: Callable[[Tensor], Tensor],
    min_new_tokens: Tensor | None = None,
) -> Tensor:
    """Shared loop of greedy search and sampling: append ``choose(logits)`` until max_new_tokens or all hit eos.

    ``min_new_tokens`` (B,) forbids eos in each row until it has that many new tokens.
    """
    tokens = prefix.long()
    finished = torch.zeros(prefix.shape[0], dtype=torch.bool, device=prefix.device)  # (B,)
    for step in range(max_new_tokens):
        logits = _next_logits(next_token_logits, tokens, eos_id)  # (B, V)
        if eos_id is not None and min_new_tokens is not None:
            too_early = (step < min_new_tokens) & ~finished  # (B,)
            logits[too_early, eos_id] = float("-inf")
        next_token = choose(logits)  # (B,)
        if eos_id is not None:
            next_token = next_token.masked_fill(finished, eos_id)  # finished rows are padded with eos
            finished = finished | (next_token == eos_id)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)  # (B, t + 1)
        if eos_id is not None and bool(finished.all()):
            break
    return tokens


@torch.no_grad()
def greedy_decode(
    next_token_logits: NextTokenLogits,
    prefix: Tensor,
    max_new_tokens: int,
    eos_id: int | None = None,
    min_new_tokens: Tensor | int | None = None,
) -> Tensor:
    """Append the most likely next token, step by step: (B, t0) -> (B, t0 + n), n <= max_new_tokens.

    Rows that produced ``eos_id`` are padded with it; decoding stops early once every row has. ``min_new_tokens``
    (an int, or one per row) forbids ``eos_id`` until a row has that many new tokens: it forces the output
    length, to separate the decision to stop from what is written. Introduced in Chapter 1.
    """
    _check_prefix(prefix, 2, "(B, t0)")
    _check_common(max_new_tokens, eos_id)
    minimum = None
    if min_new_tokens is not None:
        if eos_id is None:
            raise ValueError("min_new_tokens needs an eos_id to forbid")
        minimum = torch.as_tensor(min_new_tokens, device=prefix.device).long().expand(prefix.shape[0])  # (B,)
        if bool((minimum < 0).any()) or bool((minimum > max_new_tokens).any()):
            raise ValueError(f"min_new_tokens must be between 0 and max_new_tokens={max_new_tokens}, "
                             f"got {min_new_tokens!r}")
    return _extend(next_token_logits, prefix, max_new_tokens, eos_id, lambda logits: logits.argmax(dim=-1), minimum)


def filter_logits(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """The logits ``sample`` draws from: (B, V) -> (B, V), divided by temperature, -inf outside the kept tokens.

    In Hugging Face's order: temperature first, then top-k (the k most likely tokens), then top-p, nucleus
    sampling (Holtzman et al. 2020): the smallest set of most likely tokens whose probability reaches p, the token
    that crosses p included, measured on the distribution that temperature and top-k left. A softmax of the result
    renormalises over the kept tokens. top_k >= V and top_p = 1 keep every token. Introduced in Chapter 1 (top-p in
    Chapter 4).
    """
    logits = logits / temperature  # (B, V)
    if top_k is not None and top_k < logits.shape[-1]:
        kth_best = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V), most likely first
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # (B, V): probability of the more likely tokens
        drop_sorted = mass_before >= top_p  # p already reached without this token; never the first (p > 0)
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # (B, V), back in vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def sample(
    next_token_logits: NextTokenLogits,
    prefix: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    top_p: float | None = None,
) -> Tensor:
    """Draw each next token from softmax(logits / temperature), optionally only among the top_k most likely and
    the top_p nucleus (``filter_logits``: temperature, then top-k, then top-p).

    (B, t0) -> (B, t0 + n); eos handling as in ``greedy_decode``. Pass a seeded ``torch.Generator`` for
    reproducible samples. Introduced in Chapter 1 (top_p in Chapter 4).
    """
    _check_prefix(prefix, 2, "(B, t0)")
    _check_common(max_new_tokens, eos_id)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (use greedy_decode for temperature 0), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a real number in (0, 1], got {top_p!r}")

    def choose(logits: Tensor) -> Tensor:
        probs = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1)  # (B, V)
        return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]  # (B,)

    return _extend(next_token_logits, prefix, max_new_tokens, eos_id, choose)


def _check_beam(beam_width: int, length_penalty: float) -> None:
    if not isinstance(beam_width, int) or beam_width < 1:
        raise ValueError(f"beam_width must be an integer >= 1, got {beam_width!r}")
    if length_penalty < 0:
        raise ValueError(f"length_penalty must be >= 0, got {length_penalty!r}")


def _best(candidates: list[tuple[Tensor, float, int]], beam_width: int, length_penalty: float) -> list[Hypothesis]:
    """The ``beam_width`` best of (tokens, log_prob, new-token count) by penalised score, best first."""
    hypotheses = [Hypothesis(seq, lp, lp / length_penalty_factor(n, length_penalty)) for seq, lp, n in candidates]
    hypotheses.sort(key=lambda h: h.score, reverse=True)
    return hypotheses[:beam_width]


@torch.no_grad()
def beam_search(
    next_token_logits: NextTokenLogits,
    prefix: Tensor,
    beam_width: int,
    max_new_tokens: int,
    eos_id: int | None,
    length_penalty: float = 0.6,
) -> list[Hypothesis]:
    """Keep the ``beam_width`` most probable continuations of ``prefix`` (t0,) at every step; best first.

    A hypothesis that emits ``eos_id`` is finished and leaves the beam, which shrinks (as in Marian and Nematus);
    the search stops when the beam is empty or after ``max_new_tokens``. Finished and unfinished hypotheses are
    ranked by log_prob / ((5 + n) / 6) ** length_penalty, n = number of new tokens (eos included); at most
    ``beam_width`` are returned. Width 1 is greedy search. Introduced in Chapter 1.
    """
    _check_prefix(prefix, 1, "(t0,)")
    _check_common(max_new_tokens, eos_id)
    _check_beam(beam_width, length_penalty)

    alive = prefix.long()[None, :]  # (K, t): the K live beams, all of the same length
    alive_log_probs = torch.zeros(1, device=prefix.device)  # (K,)
    finished: list[tuple[Tensor, float, int]] = []  # (tokens, log_prob, new-token count)
    for step in range(1, max_new_tokens + 1):
        log_probs = _next_logits(next_token_logits, alive, eos_id).log_softmax(dim=-1)  # (K, V)
        V = log_probs.shape[1]
        candidates = (alive_log_probs[:, None] + log_probs).flatten()  # (K * V,) log P of every one-token extension
        # Equal lengths within a step, so ranking by log-probability equals ranking by penalised score.
        top = candidates.topk(min(beam_width, candidates.numel()))
        beam_index, token = top.indices // V, top.indices % V  # (k,), (k,)
        extended = torch.cat([alive[beam_index], token[:, None]], dim=1)  # (k, t + 1)
        ended = token == eos_id if eos_id is not None else torch.zeros_like(token, dtype=torch.bool)  # (k,)
        for seq, lp in zip(extended[ended], top.values[ended].tolist(), strict=True):
            finished.append((seq, lp, step))
        alive, alive_log_probs = extended[~ended], top.values[~ended]
        if alive.shape[0] == 0:
            break

    n_alive_new = alive.shape[1] - prefix.shape[0]
    everything = finished + [(seq, lp, n_alive_new) for seq, lp in zip(alive, alive_log_probs.tolist(), strict=True)]
    return _best(everything, beam_width, length_penalty)


@torch.no_grad()
def beam_search_batch(
    next_token_logits: NextTokenLogits,
    prefixes: Tensor,
    beam_width: int,
    max_new_tokens: int,
    eos_id: int,
    length_penalty: float = 0.6,
) -> list[list[Hypothesis]]:
    """``beam_search`` for B prefixes (B, t0) at once: the same hypotheses, one decoder call per step for all.

    ``next_token_logits`` receives (B * beam_width, t) prefixes, example-major (rows b * beam_width ... of example
    b), e.g. ``next_token_logits_fn`` of the sources repeated ``beam_width`` times. Dead beam slots carry a
    log-probability of -inf and are never chosen. Introduced in Chapter 1.
    """
    _check_prefix(prefixes, 2, "(B, t0)")
    _check_common(max_new_tokens, eos_id)
    _check_beam(beam_width, length_penalty)
    B, W = prefixes.shape[0], beam_width
    alive = prefixes.long()[:, None, :].repeat(1, W, 1)  # (B, W, t)
    alive_log_probs = torch.full((B, W), float("-inf"), device=prefixes.device)
    alive_log_probs[:, 0] = 0.0  # one live beam per example at the start, as in beam_search
    finished: list[list[tuple[Tensor, float, int]]] = [[] for _ in range(B)]
    for step in range(1, max_new_tokens + 1):
        t = alive.shape[2]
        log_probs = _next_logits(next_token_logits, alive.reshape(B * W, t), eos_id).log_softmax(dim=-1)
        V = log_probs.shape[1]
        candidates = (alive_log_probs[:, :, None] + log_probs.view(B, W, V)).view(B, W * V)  # (B, W * V)
        top = candidates.topk(min(W, W * V), dim=1)  # (B, k): the best one-token extensions of each example
        beam_index, token = top.indices // V, top.indices % V  # (B, k)
        extended = torch.cat([alive.gather(1, beam_index[:, :, None].expand(-1, -1, t)), token[:, :, None]], dim=2)
        live = torch.isfinite(top.values)  # (B, k): False where an example had fewer live candidates
        ended = live & (token == eos_id)
        for b, j in ended.nonzero().tolist():
            finished[b].append((extended[b, j], top.values[b, j].item(), step))
        alive = extended
        alive_log_probs = top.values.masked_fill(~live | ended, float("-inf"))
        if not bool(torch.isfinite(alive_log_probs).any()):
            break
    n_alive_new = alive.shape[2] - prefixes.shape[1]
    results = []
    for b in range(B):
        rest = [(alive[b, j], alive_log_probs[b, j].item(), n_alive_new) for j in range(alive.shape[1])
                if bool(torch.isfinite(alive_log_probs[b, j]))]
        results.append(_best(finished[b] + rest, beam_width, length_penalty))
    return results
