"""Tasks written as text (llmbook.tasks): templates, mixing them into a corpus, and greedy exact match in one pass."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.gpt import GPT, PRESETS
from llmbook.tasks import (
    FIGURES,
    TRANSLATION,
    TextTask,
    encode_lines,
    few_shot_accuracy,
    few_shot_prompt,
    greedy_completion,
    greedy_matches,
    mix_lines,
    task_stream,
    token_shares,
    zero_shot_accuracy,
)
from llmbook.tokenizer import CharTokenizer
from llmbook.trainer import seed_everything


def test_a_task_sentence_splits_into_prompt_and_answer_at_the_space():
    assert TRANSLATION.sentence(42) == "In Chinese, forty-two is written 四十二."
    assert TRANSLATION.prompt(42) == "In Chinese, forty-two is written"
    assert TRANSLATION.answer(42) == " 四十二."
    assert FIGURES.sentence(1021) == "In figures, one thousand and twenty-one is 1021."
    paraphrase = TRANSLATION.rephrased("The Chinese for {x} is {y}.")
    assert paraphrase.prompt(7) == "The Chinese for seven is" and paraphrase.name == "translation"


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10**9 - 1))
def test_prompt_and_answer_make_the_sentence(n):
    for task in (TRANSLATION, FIGURES, TextTask("glued", "{x}={y}!", target=str)):
        assert task.prompt(n) + task.answer(n) == task.sentence(n)
        assert not task.prompt(n).endswith(" ")


@pytest.mark.parametrize("template, message", [
    ("In Chinese, {x} is written.", "'{x}' once and then '{y}' once"),
    ("{y} is {x}.", "'{x}' once and then '{y}' once"),
    ("{x} {x} is {y}.", "'{x}' once and then '{y}' once"),
    ("{x} is {y} {z}.", "no braces"),
    ("{x} is {y}", "end with a mark"),
    ("{x}\nis {y}.", "one line"),
])
def test_bad_templates_are_refused(template, message):
    with pytest.raises(ValueError, match=message):
        TextTask("bad", template)


BASE = [f"line {i}" for i in range(10)]


def test_mix_lines_keeps_the_base_in_order_and_draws_task_numbers_from_the_list():
    lines = mix_lines(BASE, [(TRANSLATION, 0.3), (FIGURES, 0.2)], [5, 6], 10_000, seed=1)
    assert lines == mix_lines(BASE, [(TRANSLATION, 0.3), (FIGURES, 0.2)], [5, 6], 10_000, seed=1)
    assert lines != mix_lines(BASE, [(TRANSLATION, 0.3), (FIGURES, 0.2)], [5, 6], 10_000, seed=2)
    base = [line for source, line in lines if source == "text"]
    assert base == [BASE[i % 10] for i in range(len(base))]  # in order, round again
    counts = {name: sum(source == name for source, _ in lines) for name in ("text", "translation", "figures")}
    # Binomial standard errors at n = 10,000 are at most 0.005: 0.03 is six of them.
    assert abs(counts["translation"] / 1e4 - 0.3) < 0.03 and abs(counts["figures"] / 1e4 - 0.2) < 0.03
    assert {line for source, line in lines if source == "translation"} == {TRANSLATION.sentence(5),
                                                                          TRANSLATION.sentence(6)}
    assert mix_lines(BASE, [], [], 25) == [("text", BASE[i % 10]) for i in range(25)]
    only = mix_lines([], [(FIGURES, 1.0)], [3], 4, base_name="plays")
    assert only == [("figures", "In figures, three is 3.")] * 4


@pytest.mark.parametrize("tasks, base, numbers, n_lines, message", [
    ([(TRANSLATION, 0.7), (FIGURES, 0.4)], BASE, [1], 5, "sum to at most 1"),
    ([(TRANSLATION, -0.1)], BASE, [1], 5, "lie in \\[0, 1\\]"),
    ([(TRANSLATION, 0.5)], [], [1], 5, "base is empty"),
    ([(TRANSLATION, 0.5)], BASE, [], 5, "numbers must hold"),
    ([(TRANSLATION, 0.5)], BASE, [1], 0, "n_lines must be >= 1"),
])
def test_mix_lines_refuses_bad_arguments(tasks, base, numbers, n_lines, message):
    with pytest.raises(ValueError, match=message):
        mix_lines(base, tasks, numbers, n_lines)


ALPHABET = "abcdefgh .!"
TOKENIZER = CharTokenizer(ALPHABET)


def test_encode_lines_gives_one_stream_and_where_each_line_starts():
    newline = CharTokenizer(ALPHABET + "\n")
    ids, starts = encode_lines(newline, ["ab", "", "cde"])
    assert newline.decode(ids) == "ab\n\ncde\n" and starts.tolist() == [0, 3, 4]
    assert token_shares(["a", "b", "a"], starts, len(ids)) == {"a": 7 / 8, "b": 1 / 8}  # lines with newlines
    with pytest.raises(ValueError, match="same lines"):
        token_shares(["a", "b"], starts, len(ids))


@pytest.fixture(scope="module")
def model():
    seed_everything(0)
    config = dataclasses.replace(PRESETS["tiny"], vocab_size=TOKENIZER.vocab_size, context_length=24)
    return GPT(config).eval()


def greedy_text(model, prompt, n):
    ids = torch.tensor(TOKENIZER.encode(prompt))
    return TOKENIZER.decode(model.generate(ids, n, temperature=0.0, use_cache=False)[len(ids):].tolist())


def test_greedy_matches_equals_decoding_step_by_step(model):
    rng = torch.Generator().manual_seed(0)
    prompts = ["".join(ALPHABET[i] for i in torch.randint(0, len(ALPHABET), (int(k),), generator=rng))
               for k in torch.randint(1, 12, (40,), generator=rng)]
    written = [greedy_text(model, p, 6) for p in prompts]
    answers = [w[:1 + i % 6] for i, w in enumerate(written)]  # what greedy decoding writes, 1 to 6 tokens
    assert greedy_matches(model, TOKENIZER, prompts, answers).all()
    wrong = [a[:-1] + ("a" if a[-1] != "a" else "b") for a in answers]  # the last token changed
    assert not greedy_matches(model, TOKENIZER, prompts, wrong).any()
    mixed = [a if i % 3 else w for i, (a, w) in enumerate(zip(answers, wrong, strict=True))]
    expected = torch.tensor([bool(i % 3) for i in range(40)])
    for batch_size in (1, 7, 256):
        assert torch.equal(greedy_matches(model, TOKENIZER, prompts, mixed, batch_size=batch_size), expected)
    assert not model.training


def test_greedy_matches_refuses_what_it_cannot_check(model):
    with pytest.raises(ValueError, match="equal length"):
        greedy_matches(model, TOKENIZER, ["ab"], [])
    with pytest.raises(ValueError, match="at least one token"):
        greedy_matches(model, TOKENIZER, [""], ["a"])
    with pytest.raises(ValueError, match="exceed the context of 24"):
        greedy_matches(model, TOKENIZER, ["a" * 20], ["b" * 5])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        greedy_matches(model, TOKENIZER, ["a"], ["b"], batch_size=0)


def test_greedy_completion_is_generate_cut_after_the_stop(model):
    full = greedy_text(model, "abc", 10)
    assert greedy_completion(model, TOKENIZER, "abc", 10, stop=None) == full
    stop = full[3]
    assert greedy_completion(model, TOKENIZER, "abc", 10, stop=stop) == full[:full.index(stop) + 1]


def test_task_stream_is_mix_lines_then_encode_lines():
    text = "abcd\n" + "".join(TRANSLATION.sentence(n) for n in (3, 5))
    newline = CharTokenizer("".join(sorted(set(text))))
    sources, ids, starts = task_stream(newline, ["ab", "cd"], [(TRANSLATION, 0.5)], [3, 5], 50, seed=4)
    lines = mix_lines(["ab", "cd"], [(TRANSLATION, 0.5)], [3, 5], 50, seed=4)
    expected_ids, expected_starts = encode_lines(newline, [line for _, line in lines])
    assert sources == [source for source, _ in lines]
    assert torch.equal(ids, expected_ids) and torch.equal(starts, expected_starts)


def test_zero_shot_accuracy_is_the_mean_of_greedy_matches(model):
    task = TextTask("copy", "{x} {y}.", source=lambda n: "abc"[: 1 + n % 3], target=lambda n: "ab"[n % 2])
    numbers = list(range(12))
    matches = greedy_matches(model, TOKENIZER, [task.prompt(n) for n in numbers], [task.answer(n) for n in numbers])
    assert zero_shot_accuracy(model, TOKENIZER, task, numbers) == pytest.approx(matches.float().mean().item())
    with pytest.raises(ValueError, match="at least one number"):
        zero_shot_accuracy(model, TOKENIZER, task, [])


def test_few_shot_prompt_is_finished_sentences_then_the_prompt():
    prompt = few_shot_prompt(TRANSLATION, [150, 42], 784)
    assert prompt.split("\n") == [TRANSLATION.sentence(150), TRANSLATION.sentence(42), TRANSLATION.prompt(784)]
    assert few_shot_prompt(TRANSLATION, [], 784) == TRANSLATION.prompt(784)
    with pytest.raises(ValueError, match="among the demonstrations"):
        few_shot_prompt(TRANSLATION, [784], 784)


def test_few_shot_accuracy_draws_k_other_demonstrations_and_scores_greedy_matches():
    tokenizer = CharTokenizer(ALPHABET + "\n")  # a prompt holds one sentence per line
    seed_everything(0)
    model = GPT(dataclasses.replace(PRESETS["tiny"], vocab_size=tokenizer.vocab_size, context_length=24)).eval()
    task = TextTask("copy", "{x} {y}.", source=lambda n: "abc"[: 1 + n % 3], target=lambda n: "ab"[n % 2])
    numbers, pool = list(range(6)), list(range(8))
    assert few_shot_accuracy(model, tokenizer, task, numbers, pool, 0) == zero_shot_accuracy(
        model, tokenizer, task, numbers)
    # the same seeded draw, by hand: k numbers from the pool without the query
    rng = random.Random(3)
    prompts = [few_shot_prompt(task, rng.sample([d for d in pool if d != n], 2), n) for n in numbers]
    matches = greedy_matches(model, tokenizer, prompts, [task.answer(n) for n in numbers])
    assert few_shot_accuracy(model, tokenizer, task, numbers, pool, 2, seed=3) == pytest.approx(
        matches.float().mean().item())
    with pytest.raises(ValueError, match="demonstration numbers"):
        few_shot_accuracy(model, tokenizer, task, numbers, [0, 1], 2)
    with pytest.raises(ValueError, match="k must be"):
        few_shot_accuracy(model, tokenizer, task, numbers, pool, -1)


def test_task_pretraining_data_is_chapter_4s_recipe():
    from llmbook.bytebpe import train_byte_bpe
    from llmbook.data.numbers import split_numbers
    from llmbook.data.shakespeare import load_plays
    from llmbook.tasks import task_pretraining_data

    plays = load_plays()
    data = task_pretraining_data(plays, vocab_size=300, n_lines=3000, n_train_numbers=150, n_test_numbers=50, seed=4)
    numbers = split_numbers(150, 0, 50, max_digits=3, seed=4)
    lines = [line for p in plays if p.split == "train" for line in p.text.split("\n") if line.strip()]
    text = "\n".join(lines)
    assert data.shakespeare == lines and data.train_numbers == list(numbers.train)
    assert data.in_plays == [n for n in numbers.test if TRANSLATION.source(n) in text]
    assert sorted(data.test_numbers + data.in_plays) == sorted(numbers.test)
    assert all(TRANSLATION.source(n) not in text for n in data.test_numbers)
    mixed = mix_lines(lines, [(TRANSLATION, 0.25), (FIGURES, 0.25)], numbers.train, 3000, seed=5)
    reference = train_byte_bpe(["\n".join(line for _, line in mixed)], 300)
    sample = TRANSLATION.sentence(data.test_numbers[0]) + "\nKING LEAR:"
    assert data.tokenizer.encode(sample) == reference.encode(sample) and data.tokenizer.vocab_size == 300
    with pytest.raises(ValueError, match="training plays"):
        task_pretraining_data([p for p in plays if p.split != "train"], 300, 100, 150, 5)
