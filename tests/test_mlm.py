"""Masked-LM data (the 15% and 80/10/10 rules), the MLM loss, next-sentence pairs, and a training sanity check."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmbook.bert import PRESETS, BertForMaskedLM
from llmbook.mlm import IGNORE_INDEX, NSPPair, make_nsp_pairs, mask_tokens, mlm_loss, nsp_batch

PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
SPECIAL = (PAD, UNK, CLS, SEP)  # MASK is always special


def sentences_batch(B: int, T: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """[CLS] w ... w [SEP] [PAD] ..., with random lengths: rows of a real MLM batch."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (B, T), generator=g)
    tokens[torch.isin(tokens, torch.tensor(SPECIAL + (MASK,)))] = 7  # specials only where we put them
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    tokens[:, 0] = CLS
    tokens[torch.arange(B), lengths - 1] = SEP
    tokens[torch.arange(T)[None, :] >= lengths[:, None]] = PAD
    return tokens


def within(observed: float, p: float, n: int, sigmas: float = 5.0) -> bool:
    """|observed - p| within `sigmas` binomial standard deviations of a proportion over n trials."""
    return abs(observed - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def test_fifteen_percent_and_the_80_10_10_rule():
    V = 1000
    tokens = sentences_batch(400, 250, V)
    inputs, labels = mask_tokens(tokens, V, MASK, SPECIAL, generator=torch.Generator().manual_seed(1))
    special = torch.isin(tokens, torch.tensor(SPECIAL))
    selected = labels != IGNORE_INDEX
    n_candidates, n_selected = int((~special).sum()), int(selected.sum())
    assert n_candidates > 50_000
    assert within(n_selected / n_candidates, 0.15, n_candidates)

    n_candidate_ids = V - len(SPECIAL) - 1  # a random replacement draws from these
    masked = selected & (inputs == MASK)
    kept = selected & (inputs == tokens)
    replaced = selected & (inputs != MASK) & (inputs != tokens)
    assert within(int(masked.sum()) / n_selected, 0.8, n_selected)
    assert within(int(replaced.sum()) / n_selected, 0.1 * (1 - 1 / n_candidate_ids), n_selected)
    assert within(int(kept.sum()) / n_selected, 0.1 + 0.1 / n_candidate_ids, n_selected)

    # Random replacements are ordinary tokens, spread over the vocabulary.
    assert not torch.isin(inputs[replaced], torch.tensor(SPECIAL + (MASK,))).any()
    assert inputs[replaced].unique().numel() > 500


def test_special_tokens_are_never_selected_and_labels_hold_the_originals():
    V = 1000
    tokens = sentences_batch(64, 40, V, seed=2)
    inputs, labels = mask_tokens(tokens, V, MASK, SPECIAL, mask_prob=0.9, generator=torch.Generator().manual_seed(3))
    special = torch.isin(tokens, torch.tensor(SPECIAL))
    assert torch.all(labels[special] == IGNORE_INDEX)
    assert torch.equal(inputs[special], tokens[special])
    selected = labels != IGNORE_INDEX
    assert torch.equal(labels[selected], tokens[selected])
    assert torch.equal(inputs[~selected], tokens[~selected])  # only selected positions change
    assert selected.float().mean() > 0.5  # mask_prob=0.9 of the non-special tokens


def test_masking_is_seeded_and_does_not_modify_its_input():
    tokens = sentences_batch(8, 30, 500, seed=4)
    copy = tokens.clone()
    a = mask_tokens(tokens, 500, MASK, SPECIAL, generator=torch.Generator().manual_seed(5))
    b = mask_tokens(tokens, 500, MASK, SPECIAL, generator=torch.Generator().manual_seed(5))
    c = mask_tokens(tokens, 500, MASK, SPECIAL, generator=torch.Generator().manual_seed(6))
    assert torch.equal(tokens, copy)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_mask_tokens_errors():
    tokens = torch.tensor([[CLS, 5, 6, SEP]])
    with pytest.raises(ValueError, match="mask_prob"):
        mask_tokens(tokens, 1000, MASK, SPECIAL, mask_prob=0.0)
    with pytest.raises(ValueError, match="vocab_size"):
        mask_tokens(tokens, 100, MASK, SPECIAL)  # CLS = 101 is not a valid id of a 100-token vocabulary
    with pytest.raises(ValueError, match="special_ids"):
        mask_tokens(torch.tensor([[1, 2]]), 50, mask_id=60, special_ids=())
    with pytest.raises(ValueError, match=r"tokens must hold ids in \[0, vocab_size=50\)"):
        mask_tokens(torch.tensor([[1, 50]]), 50, MASK - 60, SPECIAL[:1])
    for dtype in (torch.float32, torch.uint8, torch.int16):  # the dtypes nn.Embedding refuses
        with pytest.raises(TypeError, match="tokens must hold integer token ids of dtype torch.int64 or torch.int32"):
            mask_tokens(tokens.to(dtype), 1000, MASK, SPECIAL)
    inputs, labels = mask_tokens(tokens[0].int(), 1000, MASK, SPECIAL)  # (T,) int32 works
    assert inputs.shape == labels.shape == (4,) and inputs.dtype == torch.int32


def test_mlm_loss_averages_over_selected_positions_only():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 1], labels[1, 3] = 4, 9
    expected = (F.cross_entropy(logits[0, 1], torch.tensor(4)) + F.cross_entropy(logits[1, 3], torch.tensor(9))) / 2
    torch.testing.assert_close(mlm_loss(logits, labels), expected)
    with pytest.raises(ValueError, match="no position"):
        mlm_loss(logits, torch.full((2, 5), IGNORE_INDEX))
    with pytest.raises(ValueError, match="disagree"):
        mlm_loss(logits, labels[:, :4])


def test_bert_learns_to_fill_in_masks():
    torch.manual_seed(0)
    config = PRESETS["tiny"]  # vocab 100
    model = BertForMaskedLM(config)
    special = (0, 1, 2, 3)  # pad, cls, sep, mask in this toy vocabulary
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, config.vocab_size, (8, 16), generator=g)
    inputs, labels = mask_tokens(tokens, config.vocab_size, 3, special, mask_prob=0.3, generator=g)
    with torch.no_grad():
        initial = mlm_loss(model(inputs), labels).item()
    assert abs(initial - math.log(config.vocab_size)) < 0.3  # near-uniform predictions at initialisation
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = mlm_loss(model(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * initial  # it memorises one batch


def test_next_sentence_pairs():
    rng = torch.Generator().manual_seed(0)
    documents = [
        [torch.randint(10, 90, (int(torch.randint(2, 8, (1,), generator=rng)),), generator=rng).tolist()
         for _ in range(int(torch.randint(3, 12, (1,), generator=rng)))]
        for _ in range(60)
    ]
    pairs = make_nsp_pairs(documents, cls_id=CLS, sep_id=SEP, seed=0)
    assert len(pairs) == sum(len(d) - 1 for d in documents)
    assert within(sum(p.is_next for p in pairs) / len(pairs), 0.5, len(pairs))
    location = {}  # sentence -> (document, index); random ints make collisions negligible, still check uniqueness
    for d, doc in enumerate(documents):
        for i, s in enumerate(doc):
            location.setdefault(tuple(s), []).append((d, i))
    for p in pairs:
        sep = p.tokens.index(SEP)
        a, b = p.tokens[1:sep], p.tokens[sep + 1:-1]
        assert p.tokens[0] == CLS and p.tokens[-1] == SEP
        assert p.segments == (0,) * (len(a) + 2) + (1,) * (len(b) + 1)
        (da, ia), = location[tuple(a)][:1]
        if p.is_next:
            assert (da, ia + 1) in location[tuple(b)]
        else:
            assert all(db != da for db, _ in location[tuple(b)])
    assert make_nsp_pairs(documents, CLS, SEP, seed=0) == pairs
    assert make_nsp_pairs(documents, CLS, SEP, seed=1) != pairs


def test_next_sentence_pairs_truncate_and_batch():
    documents = [[[5] * 10, [6] * 3], [[7] * 8, [8] * 8]]
    pairs = make_nsp_pairs(documents, CLS, SEP, max_length=9, seed=0)
    assert all(len(p.tokens) <= 9 for p in pairs)
    short = NSPPair((CLS, 5, SEP, 6, SEP), (0, 0, 0, 1, 1), True)
    tokens, segments, attention_mask, is_next = nsp_batch(pairs + [short], PAD)
    assert tokens.shape == segments.shape == attention_mask.shape == (3, 9)
    assert is_next[-1] == 1 and tokens[-1, 5:].eq(PAD).all() and attention_mask[-1].tolist() == [1] * 5 + [0] * 4
    with pytest.raises(ValueError, match="at least 2"):
        make_nsp_pairs([[[1, 2], [3]]], CLS, SEP)
    with pytest.raises(ValueError, match="max_length"):
        make_nsp_pairs(documents, CLS, SEP, max_length=4)
