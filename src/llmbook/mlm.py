"""BERT's pre-training data: masked language modelling and (optionally) next-sentence prediction.

Masked LM (Devlin et al., 2018, section 3.1): pick 15% of the non-special tokens; the model must predict the original
token at those positions. Of the picked tokens, 80% are replaced by [MASK], 10% by a random token and 10% are left
unchanged, so the model cannot learn that only [MASK] positions matter ([MASK] never appears at fine-tuning time).
Next-sentence prediction pairs sentence A with its true successor half of the time and with a random sentence
otherwise; later work (RoBERTa) found it unnecessary, so the book treats it as optional.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from llmbook.config import check_token_ids

IGNORE_INDEX = -100  # label of positions that are not predicted; F.cross_entropy's default ignore_index


def mask_tokens(
    tokens: Tensor,
    vocab_size: int,
    mask_id: int,
    special_ids: Iterable[int],
    mask_prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """BERT's masking: returns (inputs, labels), both shaped like ``tokens``.

    Each non-special token is selected with probability ``mask_prob``; a selected token becomes [MASK] (80%), a
    random non-special token (10%) or stays (10%). ``labels`` holds the original token where selected and
    IGNORE_INDEX (-100) elsewhere. ``mask_id`` is always treated as special. Introduced in Chapter 3.
    """
    check_token_ids(tokens, vocab_size, ndim=None)  # any shape: (T,) or (B, T)
    if not 0.0 < mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob!r}")
    special = sorted(set(int(i) for i in special_ids) | {mask_id})
    if special[0] < 0 or special[-1] >= vocab_size:
        raise ValueError(f"mask_id and special_ids must be ids in [0, vocab_size={vocab_size}), got {special}")
    is_candidate = torch.ones(vocab_size, dtype=torch.bool)  # (V,)
    is_candidate[special] = False
    candidates = is_candidate.nonzero().squeeze(1)  # ids a random replacement may take
    if len(candidates) == 0:
        raise ValueError("special_ids cover the whole vocabulary: there is no token to mask")

    # Draw on the CPU so that a CPU generator gives the same masks whatever the device of tokens.
    selected = torch.rand(tokens.shape, generator=generator) < mask_prob
    selected = selected.to(tokens.device) & is_candidate.to(tokens.device)[tokens]
    action = torch.rand(tokens.shape, generator=generator).to(tokens.device)  # < 0.8 mask, < 0.9 random, else keep
    random_tokens = candidates[torch.randint(len(candidates), tokens.shape, generator=generator)].to(tokens)

    labels = torch.where(selected, tokens, torch.full_like(tokens, IGNORE_INDEX))
    inputs = torch.where(selected & (action < 0.8), torch.full_like(tokens, mask_id), tokens)
    inputs = torch.where(selected & (action >= 0.8) & (action < 0.9), random_tokens, inputs)
    return inputs, labels


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the selected positions (labels != -100). logits (B, T, V), labels (B, T).

    Introduced in Chapter 3.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits (B, T, V) {tuple(logits.shape)} and labels (B, T) {tuple(labels.shape)} disagree")
    if not bool((labels != IGNORE_INDEX).any()):
        raise ValueError("labels select no position (all are -100): the masked-LM loss is undefined")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


@dataclass(frozen=True)
class NSPPair:
    """One next-sentence example: [CLS] A [SEP] B [SEP], segment 0 for [CLS] A [SEP] and 1 for B [SEP].

    Introduced in Chapter 3.
    """

    tokens: tuple[int, ...]
    segments: tuple[int, ...]
    is_next: bool


def make_nsp_pairs(
    documents: Sequence[Sequence[Sequence[int]]],
    cls_id: int,
    sep_id: int,
    max_length: int | None = None,
    seed: int = 0,
) -> list[NSPPair]:
    """Next-sentence-prediction pairs from documents given as lists of tokenized sentences (optional in the book).

    For each sentence A that has a successor, B is the successor with probability 1/2 (IsNext) and otherwise a
    random sentence of another document (NotNext). Pairs longer than ``max_length`` are cut, longest side first.
    Introduced in Chapter 3.
    """
    documents = [[list(s) for s in doc if len(s) > 0] for doc in documents]
    usable = [i for i, doc in enumerate(documents) if doc]
    if len(usable) < 2:
        raise ValueError(f"documents must hold at least 2 non-empty documents to draw NotNext pairs, got {len(usable)}")
    if max_length is not None and max_length < 5:
        raise ValueError(f"max_length must be at least 5 ([CLS] a [SEP] b [SEP]), got {max_length}")
    rng = random.Random(seed)
    pairs = []
    for d, doc in enumerate(documents):
        for i in range(len(doc) - 1):
            is_next = rng.random() < 0.5
            if is_next:
                b = doc[i + 1]
            else:
                other = rng.choice([j for j in usable if j != d])
                b = rng.choice(documents[other])
            a, b = list(doc[i]), list(b)
            while max_length is not None and len(a) + len(b) + 3 > max_length:
                (a if len(a) >= len(b) else b).pop()
            tokens = [cls_id, *a, sep_id, *b, sep_id]
            segments = [0] * (len(a) + 2) + [1] * (len(b) + 1)
            pairs.append(NSPPair(tuple(tokens), tuple(segments), is_next))
    return pairs


def nsp_batch(pairs: Sequence[NSPPair], pad_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pad NSP pairs into (tokens, segments, attention_mask) of shape (B, T) and is_next (B,), 1 = IsNext.

    Introduced in Chapter 3.
    """
    if not pairs:
        raise ValueError("pairs must not be empty")
    T = max(len(p.tokens) for p in pairs)
    tokens = torch.full((len(pairs), T), pad_id, dtype=torch.long)  # (B, T)
    segments = torch.zeros(len(pairs), T, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros(len(pairs), T, dtype=torch.long)  # (B, T)
    for row, p in enumerate(pairs):
        n = len(p.tokens)
        tokens[row, :n] = torch.tensor(p.tokens)
        segments[row, :n] = torch.tensor(p.segments)
        attention_mask[row, :n] = 1
    is_next = torch.tensor([int(p.is_next) for p in pairs])  # (B,)
    return tokens, segments, attention_mask, is_next
