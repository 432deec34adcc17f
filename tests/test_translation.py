"""Chapter 1's translation helpers: greedy translation of a dataset, and the training recipe with exact match."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmbook.data.numbers import CHINESE_VOCAB, ENGLISH_VOCAB, NumberTranslation, decode_tokens
from llmbook.transformer import PRESETS, Transformer
from llmbook.translation import train_translator, translate, translate_ids


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
