"""Byte-level BPE: training on a slice of the training plays, exact round trips, special tokens, save and load."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.data.shakespeare import load_plays
from llmbook.tokenizer import SPECIAL_TOKENS, BPETokenizer, train_bpe

VOCAB_SIZE = 600


@pytest.fixture(scope="module")
def plays():
    return load_plays()


@pytest.fixture(scope="module")
def train_slice(plays):
    # A small slice of the training split keeps BPE training fast; the held-out plays are never seen.
    return [p.text[:60_000] for p in plays if p.split == "train"][:4]


@pytest.fixture(scope="module")
def tokenizer(train_slice):
    return train_bpe(train_slice, VOCAB_SIZE)


def test_vocabulary_size_and_special_token_ids(tokenizer):
    assert tokenizer.vocab_size == VOCAB_SIZE
    ids = [tokenizer.pad_id, tokenizer.start_id, tokenizer.delim_id, tokenizer.extract_id, tokenizer.mask_id]
    assert ids == [0, 1, 2, 3, 4]
    assert [tokenizer.decode([i]) for i in ids] == list(SPECIAL_TOKENS)
    assert tokenizer.encode("<start>to be<extract>") == [tokenizer.start_id, *tokenizer.encode("to be"), 3]


def test_merges_make_frequent_words_single_tokens(tokenizer):
    assert len(tokenizer.encode(" the")) == 1
    assert len(tokenizer.encode(" and")) == 1
    text = "HAMLET:\nTo be, or not to be: that is the question:"
    pieces = tokenizer.tokens(text)
    assert "".join(pieces) == text
    assert len(pieces) < len(text) / 2  # compression well beyond one byte per token


def test_round_trip_on_every_line_of_a_held_out_play(tokenizer, plays):
    macbeth = next(p for p in plays if p.slug == "macbeth")
    lines = macbeth.lines(include_speakers=True)
    assert all(tokenizer.decode(ids) == line for ids, line in zip(tokenizer.encode_batch(lines), lines, strict=True))
    assert tokenizer.decode(tokenizer.encode(macbeth.text)) == macbeth.text


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_on_arbitrary_text(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_decode_accepts_a_tensor_and_rejects_unknown_ids(tokenizer):
    ids = tokenizer.encode("Fair is foul")
    assert tokenizer.decode(torch.tensor(ids)) == "Fair is foul"
    with pytest.raises(ValueError, match="vocab_size=600"):
        tokenizer.decode([5, VOCAB_SIZE])
    with pytest.raises(ValueError, match="vocab_size"):
        tokenizer.decode([-1])
    with pytest.raises(TypeError, match="str"):
        tokenizer.encode(b"bytes")


def test_save_and_load_next_to_a_checkpoint(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path / "checkpoint")
    assert path == tmp_path / "checkpoint" / "tokenizer.json"
    text = "O Romeo, Romeo! wherefore art thou Romeo?\n"
    for source in (path, path.parent):
        loaded = BPETokenizer.load(source)
        assert loaded.vocab_size == tokenizer.vocab_size
        assert loaded.encode(text) == tokenizer.encode(text)
        assert loaded.extract_id == tokenizer.extract_id
    with pytest.raises(FileNotFoundError):
        BPETokenizer.load(tmp_path / "nowhere")


def test_training_is_deterministic_and_checks_its_arguments(tokenizer, train_slice):
    again = train_bpe(train_slice, VOCAB_SIZE)
    assert again.tokenizer.to_str() == tokenizer.tokenizer.to_str()
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 261"):
        train_bpe(train_slice, 100)
    with pytest.raises(ValueError, match="min_frequency"):
        train_bpe(train_slice, 300, min_frequency=0)


def test_character_tokenizer_round_trips_and_names_unknown_characters(plays):
    from llmbook.tokenizer import CharTokenizer, train_chars

    chars = train_chars(p.text for p in plays if p.split == "train")
    assert (chars.pad_id, chars.start_id, chars.delim_id, chars.extract_id, chars.mask_id) == (0, 1, 2, 3, 4)
    assert chars.vocab_size == len(SPECIAL_TOKENS) + len(chars.alphabet)
    for play in plays:  # every held-out character was seen in training: the corpus is ASCII
        if play.split != "train":
            ids = chars.encode(play.text)
            assert len(ids) == len(play.text) and chars.decode(ids) == play.text
    assert chars.tokens("To be") == ["T", "o", " ", "b", "e"]
    assert chars.decode([chars.mask_id, *chars.encode("a")]) == "<mask>a"
    assert chars.encode_batch(["ab", ""]) == [chars.encode("ab"), []]
    with pytest.raises(ValueError, match="outside the alphabet"):
        chars.encode("café")
    with pytest.raises(ValueError, match="distinct"):
        CharTokenizer("aa")
    with pytest.raises(ValueError, match="vocab_size"):
        chars.decode([chars.vocab_size])
