"""Byte-pair encoding (BPE) with Hugging Face ``tokenizers``: train on a corpus, encode, decode, save next to a model.

GPT-1 used BPE (Sennrich et al. 2016): start from single symbols and repeatedly merge the most frequent adjacent pair
into a new token, until the vocabulary has the size asked for. GPT-1 merged characters of lower-cased, spaCy-split
words; we use the byte-level variant of GPT-2 instead. Its base alphabet is the 256 byte values, so every string
(any script, any emoji) has an encoding, no <unk> token is needed, and ``decode(encode(x)) == x`` for every ``x``.
Text is first split at word boundaries with GPT-2's rule (a word keeps its leading space, " be"), and merges never
cross those boundaries.

Special tokens get the first ids: <pad> for batching, <start>, <delim> and <extract> for GPT-1's fine-tuning inputs,
<mask> for BERT in Chapter 3. Their spelling in raw text is read as the special token itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor

SPECIAL_TOKENS = ("<pad>", "<start>", "<delim>", "<extract>", "<mask>")
FILE_NAME = "tokenizer.json"
N_BYTES = 256


def _checked_ids(ids: Sequence[int] | Tensor, vocab_size: int) -> list[int]:
    """``ids`` (a list or a 1-D integer tensor) as a list, every id checked to lie in [0, vocab_size)."""
    if isinstance(ids, Tensor):
        if ids.dim() != 1 or ids.dtype.is_floating_point:
            raise ValueError(f"ids must be a 1-D integer tensor, got {ids.dtype} of shape {tuple(ids.shape)}")
        ids = ids.tolist()
    ids = list(ids)
    bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"ids must be integers in [0, vocab_size={vocab_size}), got {bad[:5]}")
    return ids


class BPETokenizer:
    """A trained byte-level BPE tokenizer: ``encode`` text to ids, ``decode`` ids to text, ``save`` / ``load``.

    The special tokens' ids are attributes: ``pad_id``, ``start_id``, ``delim_id``, ``extract_id``, ``mask_id``.
    Introduced in Chapter 2.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer must be a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}; train it with train_bpe")
        self.tokenizer = tokenizer
        self.pad_id, self.start_id, self.delim_id, self.extract_id, self.mask_id = (
            tokenizer.token_to_id(t) for t in SPECIAL_TOKENS
        )

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included: ids are 0 .. vocab_size - 1."""
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; no special tokens are added."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self.tokenizer.encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for many texts at once (in parallel)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a sequence of str")
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def tokens(self, text: str) -> list[str]:
        """The BPE pieces of ``text`` as readable strings (a leading space shown as a space)."""
        return [self.decode([i]) for i in self.encode(text)]

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """The text of a sequence of ids (a list or a 1-D tensor); special tokens are written out."""
        ids = _checked_ids(ids, self.vocab_size)
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` into ``directory`` (next to the model's checkpoint); returns its path."""
        path = Path(directory) / FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(path), pretty=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a tokenizer saved by ``save``: a ``tokenizer.json`` file or the directory holding it."""
        path = Path(path)
        path = path / FILE_NAME if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path}")
        return cls(Tokenizer.from_file(str(path)))


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> BPETokenizer:
    """Learn byte-level BPE merges on ``texts`` until the vocabulary has ``vocab_size`` ids (fewer if the texts run
    out of pairs seen ``min_frequency`` times). Deterministic for the same texts. Introduced in Chapter 2.
    """
    smallest = N_BYTES + len(SPECIAL_TOKENS)
    if not isinstance(vocab_size, int) or vocab_size < smallest:
        raise ValueError(f"vocab_size must be an integer >= {smallest} (256 bytes + specials), got {vocab_size!r}")
    if not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be an integer >= 1, got {min_frequency!r}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tokenizer)


class CharTokenizer:
    """One token per character: the special tokens first (as ``BPETokenizer``'s), then the characters of an alphabet.

    The same interface as ``BPETokenizer`` (``encode``, ``encode_batch``, ``tokens``, ``decode``, ``vocab_size`` and
    the special ids), so a chapter can switch granularity with one line. Text with a character outside the alphabet
    is refused with the characters named. Introduced in Chapter 3.
    """

    def __init__(self, alphabet: str) -> None:
        if not isinstance(alphabet, str) or not alphabet or len(set(alphabet)) != len(alphabet):
            raise ValueError("alphabet must be a non-empty str of distinct characters")
        self.alphabet = alphabet
        self.pieces = [*SPECIAL_TOKENS, *alphabet]
        self.index = {c: i for i, c in enumerate(alphabet, start=len(SPECIAL_TOKENS))}
        self.pad_id, self.start_id, self.delim_id, self.extract_id, self.mask_id = range(len(SPECIAL_TOKENS))

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included: ids are 0 .. vocab_size - 1."""
        return len(self.pieces)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, one per character; no special tokens are added."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            return [self.index[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.index})
            raise ValueError(f"text has characters outside the alphabet: {unknown[:10]}") from None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``encode`` for many texts."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a sequence of str")
        return [self.encode(t) for t in texts]

    def tokens(self, text: str) -> list[str]:
        """The pieces of ``text``: its characters."""
        return [self.pieces[i] for i in self.encode(text)]

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """The text of a sequence of ids (a list or a 1-D tensor); special tokens are written out."""
        ids = _checked_ids(ids, self.vocab_size)
        return "".join(self.pieces[i] for i in ids)


def train_chars(texts: Iterable[str]) -> CharTokenizer:
    """A ``CharTokenizer`` whose alphabet is every character of ``texts``, in code-point order. Introduced in
    Chapter 3.
    """
    alphabet = sorted(set().union(*(set(t) for t in texts)))
    if not alphabet:
        raise ValueError("texts hold no characters")
    return CharTokenizer("".join(alphabet))
