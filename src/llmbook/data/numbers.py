"""English number words <-> Chinese numerals: Chapter 1's translation task, generated on the fly.

A pair is one number read in two languages: 20,000,000 is "twenty million" and 两千万. English groups digits by
thousands, Chinese by ten-thousands (万 = 10^4, 亿 = 10^8), so a translator must regroup, not copy word by word:
123,456,789 = "one hundred and twenty-three million four hundred and fifty-six thousand seven hundred and
eighty-nine" = 一亿二千三百四十五万六千七百八十九.

- English is ``num2words(n, lang="en")`` without its commas: British style, with "and" after hundred ("one hundred
  and five") and hyphenated tens ("twenty-one"). Tokens are the words, and the hyphen is a token of its own, so
  that decoded tokens join back to exactly this text.
- Chinese is ``llmbook.units.chinese_numeral(n)``, with the everyday 两 of ``llmbook.units.use_liang`` (两千万,
  两亿, as in the appendix "Counting parameters"). Tokens are characters. We do not use ``cn2an.an2cn``: it agrees
  with our reading except that it drops the 零 of an all-zero 万 or 亿 group followed by a four-digit group
  (500,003,530 is 五亿零三千五百三十; cn2an writes 五亿三千五百三十). The tests cross-check the two everywhere else.
- Both vocabularies are closed, listing every token a reading can contain, so no UNK token is needed (tested).
- Splits are by number: train, validation and test hold distinct numbers, drawn by a seeded generator.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from num2words import num2words
from torch import Tensor

from llmbook.units import chinese_numeral

SPECIALS = ("<pad>", "<bos>", "<eos>")  # ids 0, 1, 2 in both vocabularies
ENGLISH_WORDS = tuple(
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million billion "
    "trillion and -".split()
)
CHINESE_CHARS = tuple("零一二两三四五六七八九十百千万亿")
DIRECTIONS = ("en->zh", "zh->en")
MAX_DIGITS = 15  # llmbook.units reads every count up to 10^15


@dataclass(frozen=True)
class Vocab:
    """Tokens and their ids: the three specials first, then the words ("en") or characters ("zh").

    Introduced in Chapter 1.
    """

    tokens: tuple[str, ...]
    language: str
    pad_id = 0
    bos_id = 1
    eos_id = 2

    def __post_init__(self) -> None:
        if self.language not in ("en", "zh"):
            raise ValueError(f"language must be 'en' or 'zh', got {self.language!r}")
        if tuple(self.tokens[:3]) != SPECIALS:
            raise ValueError(f"tokens must start with {SPECIALS}, got {tuple(self.tokens[:3])}")

    @cached_property
    def ids(self) -> dict[str, int]:
        """Token string -> id."""
        return {token: i for i, token in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Token strings -> ids (no BOS or EOS added)."""
        try:
            return [self.ids[t] for t in tokens]
        except KeyError as error:
            raise ValueError(f"token {error.args[0]!r} is not in the {self.language} vocabulary") from None

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> token strings, skipping PAD and BOS and stopping at the first EOS."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                out.append(self.tokens[i])
        return out

    def join(self, tokens: Sequence[str]) -> str:
        """Tokens -> text: words separated by spaces but hyphens attached ("twenty-one"); characters joined."""
        return " ".join(tokens).replace(" - ", "-") if self.language == "en" else "".join(tokens)


ENGLISH_VOCAB = Vocab(SPECIALS + ENGLISH_WORDS, "en")
CHINESE_VOCAB = Vocab(SPECIALS + CHINESE_CHARS, "zh")


def english_reading(n: int) -> str:
    """The English reading of n: num2words without commas, e.g. 1,021 -> "one thousand and twenty-one".

    Introduced in Chapter 1.
    """
    return num2words(n, lang="en").replace(",", "")


def english_tokens(n: int) -> list[str]:
    """English reading split into words and hyphens: 21 -> ["twenty", "-", "one"]. Introduced in Chapter 1."""
    return re.findall(r"[a-z]+|-", english_reading(n))


def chinese_tokens(n: int) -> list[str]:
    """Chinese reading split into characters: 20,000,000 -> ["两", "千", "万"]. Introduced in Chapter 1."""
    return list(chinese_numeral(n))


def decode_tokens(ids: Tensor | Sequence[Sequence[int]], vocab: Vocab) -> list[str]:
    """Texts of a (B, T) batch of token ids, each read up to its first EOS. Introduced in Chapter 1."""
    rows = ids.tolist() if isinstance(ids, Tensor) else ids
    return [vocab.join(vocab.decode(row)) for row in rows]


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference (strings or token lists). Introduced in Chapter 1."""
    if len(predictions) != len(references) or not references:
        raise ValueError(f"predictions and references must be non-empty and of equal length, "
                         f"got {len(predictions)} and {len(references)}")
    return sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references)


def _draw_number(rng: random.Random, min_digits: int, max_digits: int) -> int:
    # The digit count is uniform, so 3-digit numbers are as common as 9-digit ones (uniform numbers would be 90%
    # 9-digit). Then a uniform count of leading digits, the rest zeros, so round counts such as 117,000,000 (the
    # book's parameter counts) are common and the silent trailing zeros get learned.
    digits = rng.randint(min_digits, max_digits)
    leading = rng.randint(1, digits)
    return rng.randint(10 ** (leading - 1), 10**leading - 1) * 10 ** (digits - leading)


def _draw_distinct(rng: random.Random, count: int, min_digits: int, max_digits: int, taken: set[int]) -> list[int]:
    available = 10**max_digits - 10 ** (min_digits - 1) - len(taken)
    if count > available // 2:  # keeps the rejection loop below short
        raise ValueError(f"cannot draw {count} distinct numbers of {min_digits} to {max_digits} digits; "
                         f"ask for at most {available // 2} or allow more digits")
    out: list[int] = []
    while len(out) < count:
        n = _draw_number(rng, min_digits, max_digits)
        if n not in taken:
            taken.add(n)
            out.append(n)
    return out


@dataclass(frozen=True)
class NumberSplits:
    """Distinct numbers for training, validation and test; no number is in two splits. Introduced in Chapter 1."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]


def split_numbers(n_train: int, n_val: int, n_test: int, max_digits: int = 9, train_max_digits: int | None = None,
                  always_train_digits: int = 2, always_train_round: bool = True, seed: int = 0) -> NumberSplits:
    """Draw the three splits, deterministically from ``seed``; test first, so it does not change with n_train.

    Every number of at most ``always_train_digits`` digits is in training (1 to 99 by default): they are the words
    of the language, a closed set a translator must know, so holding some out would only test the split. So, with
    ``always_train_round``, is every number with one non-zero digit (5,000, 80,000, 700,000,000): only 9 exist per
    digit count, and a held-out split drawn first would take most of them. The other numbers have
    ``always_train_digits + 1`` to ``max_digits`` digits, the digit count drawn uniformly. With
    ``train_max_digits=k`` (the length-generalization experiment) train and validation numbers have at most k digits
    and test numbers k+1 to ``max_digits``. ``n_train`` counts the numbers always in training. Introduced in
    Chapter 1.
    """
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not 1 <= max_digits <= MAX_DIGITS:
        raise ValueError(f"max_digits must be between 1 and {MAX_DIGITS}, got {max_digits}")
    if train_max_digits is not None and not 1 <= train_max_digits < max_digits:
        raise ValueError(f"train_max_digits must be None or between 1 and max_digits - 1 = {max_digits - 1}, "
                         f"got {train_max_digits}")
    k = max_digits if train_max_digits is None else train_max_digits
    if not 0 <= always_train_digits < k:
        raise ValueError(f"always_train_digits must be between 0 and {k - 1} (fewer digits than the training "
                         f"numbers may have), got {always_train_digits}")
    always = list(range(1, 10**always_train_digits))
    if always_train_round:
        always += [d * 10**z for z in range(max(1, always_train_digits), k) for d in range(1, 10)
                   if d * 10**z >= 10**always_train_digits]
    if n_train < len(always):
        raise ValueError(f"n_train must be >= {len(always)}: every number of at most always_train_digits="
                         f"{always_train_digits} digits{' and with one non-zero digit' if always_train_round else ''} "
                         f"is in training, got {n_train}")
    rng, taken = random.Random(seed), set(always)
    low = always_train_digits + 1
    test = _draw_distinct(rng, n_test, low if train_max_digits is None else k + 1, max_digits, taken)
    val = _draw_distinct(rng, n_val, low, k, taken)
    train = _draw_distinct(rng, n_train - len(always), low, k, taken)
    return NumberSplits(tuple(always + train), tuple(val), tuple(test))


def _pad(rows: list[list[int]], pad_id: int) -> Tensor:
    out = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


class NumberTranslation:
    """Numbers as source and target token ids in one direction ("en->zh" or "zh->en"), batched with padding.

    A batch is (src (B, S), tgt_in (B, T), tgt_out (B, T)): the decoder reads tgt_in = BOS + y and predicts
    tgt_out = y + EOS; the source carries neither. Padding is id 0 everywhere. Introduced in Chapter 1.
    """

    def __init__(self, numbers: Sequence[int], direction: str = "en->zh") -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        if not numbers:
            raise ValueError("numbers must not be empty")
        self.numbers, self.direction = tuple(numbers), direction
        english = [ENGLISH_VOCAB.encode(english_tokens(n)) for n in self.numbers]
        chinese = [CHINESE_VOCAB.encode(chinese_tokens(n)) for n in self.numbers]
        if direction == "en->zh":
            self.src_vocab, self.tgt_vocab, self.sources, self.targets = ENGLISH_VOCAB, CHINESE_VOCAB, english, chinese
        else:
            self.src_vocab, self.tgt_vocab, self.sources, self.targets = CHINESE_VOCAB, ENGLISH_VOCAB, chinese, english

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.sources[i], self.targets[i]

    @property
    def source_texts(self) -> list[str]:
        """The source sentences as text."""
        return [self.src_vocab.join(self.src_vocab.decode(ids)) for ids in self.sources]

    @property
    def target_texts(self) -> list[str]:
        """The reference translations, to compare with decoded predictions by ``exact_match``."""
        return [self.tgt_vocab.join(self.tgt_vocab.decode(ids)) for ids in self.targets]

    def collate(self, indices: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        """The padded batch (src (B, S), tgt_in (B, T), tgt_out (B, T)) of the pairs at ``indices``."""
        bos, eos = self.tgt_vocab.bos_id, self.tgt_vocab.eos_id
        src = _pad([self.sources[i] for i in indices], self.src_vocab.pad_id)  # (B, S)
        tgt_in = _pad([[bos] + self.targets[i] for i in indices], self.tgt_vocab.pad_id)  # (B, T)
        tgt_out = _pad([self.targets[i] + [eos] for i in indices], self.tgt_vocab.pad_id)  # (B, T)
        return src, tgt_in, tgt_out

    def batch_fn(self, batch_size: int, shuffle: bool = True, seed: int = 0) -> Callable[[int], tuple[Tensor, ...]]:
        """A function step -> batch for ``Trainer``: epochs of ``len // batch_size`` batches, each epoch in its own
        seeded order when ``shuffle`` (the last partial batch is dropped). The same step always gives the same batch.
        """
        if not 1 <= batch_size <= len(self):
            raise ValueError(f"batch_size must be between 1 and len(dataset) = {len(self)}, got {batch_size}")
        per_epoch = len(self) // batch_size
        orders: dict[int, list[int]] = {}

        def get_batch(step: int) -> tuple[Tensor, ...]:
            epoch, i = divmod(step, per_epoch)
            if epoch not in orders:
                order = list(range(len(self)))
                if shuffle:
                    random.Random(f"{seed}:{epoch}").shuffle(order)
                orders.clear()  # keep one epoch's order only
                orders[epoch] = order
            return self.collate(orders[epoch][i * batch_size : (i + 1) * batch_size])

        return get_batch
