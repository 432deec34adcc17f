"""Chapter 1's translation helpers: greedy translation of a dataset, and the training recipe with exact match."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmbook.data.numbers import CHINESE_VOCAB, ENGLISH_VOCAB, NumberTranslation, decode_tokens
from llmbook.decoding import beam_search
from llmbook.transformer import PRESETS, Transformer, next_token_logits_fn
from llmbook.translation import (
    beam_translate,
    reference_ids,
    sequence_log_probs,
    train_translator,
    translate,
    translate_ids,
)


def tiny_model() -> Transformer:
    torch.manual_seed(0)
    config = dataclasses.replace(PRESETS["tiny"], src_vocab_size=len(ENGLISH_VOCAB),
                                 tgt_vocab_size=len(CHINESE_VOCAB), tie_embeddings=False, context_length=64)
    return Transformer(config)


def test_translate_ids_start_with_bos_and_restore_the_mode():
    model, data = tiny_model().train(), NumberTranslation([7, 42, 1999])
    ids = translate_ids(model, data, max_new_tokens=5)
    assert ids.shape[0] == 3 and ids.shape[1] <= 6 and bool((ids[:, 0] == CHINESE_VOCAB.bos_id).all())
    assert model.training
    assert translate(model, data) == decode_tokens(translate_ids(model, data), CHINESE_VOCAB)


def test_train_translator_lowers_the_loss_and_records_exact_match():
    train, val = NumberTranslation(list(range(1, 200))), NumberTranslation(list(range(500, 532)))
    seen = []
    trainer = train_translator(tiny_model(), train, 40, lr=3e-3, warmup_steps=5, batch_size=32, eval_every=20,
                               eval_data=val, on_eval=lambda t: seen.append(t.step), device="cpu")
    history = trainer.history
    assert seen == history.eval_step == [20, 40]
    assert set(history.eval) == {"val_loss", "exact_match"} and all(0 <= m <= 1 for m in history.eval["exact_match"])
    assert sum(history.train_loss[-5:]) < 0.7 * sum(history.train_loss[:5])


def test_per_position_accuracy_counts_each_position_over_the_references_that_reach_it():
    from llmbook.translation import per_position_accuracy

    # position 0: all 3 right; 1: "ab" wrong, "b" too short, "xya" right; 2: only "xyz" reaches it, and it is wrong
    assert per_position_accuracy(["ab", "b", "xya"], ["ac", "bc", "xyz"]) == [1.0, 1 / 3, 0.0]
    assert per_position_accuracy(["a"], ["abc"]) == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="as many"):
        per_position_accuracy(["a"], [])


def test_sequence_log_probs_sum_the_steps_of_the_decoder_and_stop_at_eos():
    model, data = tiny_model().eval(), NumberTranslation([7, 42, 1999, 20_000_000])
    targets = reference_ids(data)
    assert targets[:, 0].tolist() == [CHINESE_VOCAB.bos_id] * 4
    assert decode_tokens(targets, CHINESE_VOCAB) == data.target_texts
    got = sequence_log_probs(model, data, targets)
    for b in range(len(data)):  # one token at a time through the cached-memory logits function
        step = next_token_logits_fn(model, data.collate([b])[0])
        row = targets[b].tolist()
        n = row.index(CHINESE_VOCAB.eos_id) + 1
        expected = sum(step(torch.tensor([row[:t]])).log_softmax(-1)[0, row[t]].item() for t in range(1, n))
        assert got[b].item() == pytest.approx(expected, abs=1e-4)
    # Beam search's own log-probability of its best hypothesis is the same number.
    (best, *_) = beam_search(next_token_logits_fn(model, data.collate([0])[0][0]),
                             torch.tensor([CHINESE_VOCAB.bos_id]), 3, 10, CHINESE_VOCAB.eos_id)
    assert sequence_log_probs(model, NumberTranslation([7]), best.tokens[None]).item() == pytest.approx(
        best.log_prob, abs=1e-4)
    with pytest.raises(ValueError, match="BOS"):
        sequence_log_probs(model, data, targets[:, 1:])


def test_forced_length_translations_have_at_least_that_many_characters():
    model, data = tiny_model(), NumberTranslation([7, 42, 1999])
    texts = translate(model, data, min_lengths=[3, 6, 9])
    assert [len(t) >= n for t, n in zip(texts, [3, 6, 9], strict=True)] == [True] * 3
    with pytest.raises(ValueError, match="min_lengths"):
        translate(model, data, min_lengths=[1])


def test_encoder_states_are_the_residual_stream_at_real_tokens():
    from llmbook.translation import encoder_states

    model, data = tiny_model().eval(), NumberTranslation([7, 1999, 20_000_000])
    states, tokens, positions = encoder_states(model, data)
    n_real = sum(len(s) for s in data.sources)
    assert len(states) == 1 + model.config.n_layers and all(s.shape == (n_real, 32) for s in states)
    assert tokens.tolist() == [t for s in data.sources for t in s]
    assert positions.tolist() == [p for s in data.sources for p in range(len(s))]
    src = data.collate(range(3))[0]
    with torch.no_grad():
        memory = model.encode(src)
    torch.testing.assert_close(states[-1], memory[src != 0])  # post-LN: the last state is the encoder's output
    scale = model.config.d_model ** 0.5
    torch.testing.assert_close(states[0], (model.src_tok_emb(src) * scale + model.src_pos(torch.arange(src.shape[1])))[
        src != 0])


@pytest.mark.parametrize("width, alpha", [(1, 0.6), (3, 0.0), (3, 0.6)])
def test_beam_translate_equals_beam_search_one_number_at_a_time(width, alpha):
    model, data = tiny_model().eval(), NumberTranslation([7, 42, 1999, 20_000_000])
    got = beam_translate(model, data, width, alpha, max_new_tokens=8)
    src = data.collate(range(len(data)))[0]
    bos = torch.tensor([CHINESE_VOCAB.bos_id])
    for i, hyp in enumerate(got):
        (best, *_) = beam_search(next_token_logits_fn(model, src[i]), bos, width, 8, CHINESE_VOCAB.eos_id, alpha)
        assert hyp.tokens.tolist() == best.tokens.tolist()
        assert hyp.log_prob == pytest.approx(best.log_prob, abs=1e-4)
