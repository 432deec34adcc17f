"""Tasks written as text: sentences that carry a task, mixed into pre-training data, and exact match of the bare
language model prompted in the same form (zero-shot).

GPT-2's argument (Radford et al. 2019, section 2) is that web text already holds tasks in natural form ("'I'm not the
cleverest man in the world, but like they say in French: Je ne suis pas un imbecile'"), so a language model trained
on enough of it can be asked to do them by writing the start of such a sentence. Here the tasks are made by hand,
so that how often they occur is a knob: a ``TextTask`` turns a number into a sentence from a template, e.g.
"In Chinese, {x} is written {y}." gives "In Chinese, forty-two is written 四十二."; ``mix_lines`` puts such
sentences among the lines of a corpus with a chosen probability; ``greedy_matches`` asks whether greedy decoding
from the prompt ("In Chinese, forty-two is written ") writes exactly the answer ("四十二."), for many prompts in a
few forward passes. Introduced in Chapter 4.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import Tensor, nn

from llmbook.bytebpe import ByteBPE, train_byte_bpe
from llmbook.data.numbers import english_reading, split_numbers
from llmbook.data.shakespeare import Play
from llmbook.gpt import GPT
from llmbook.units import chinese_numeral


class Encoder(Protocol):
    """What this module needs of a tokenizer (``CharTokenizer``, ``BPETokenizer`` and ``ByteBPE`` have it)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class TextTask:
    """A task as a sentence template over numbers: ``template`` holds ``{x}`` (the input, ``source(n)``) and then
    ``{y}`` (the answer, ``target(n)``), followed by the characters that end the sentence (e.g. "."), which the model
    must also write, so that an answer is complete only when the model stops. Introduced in Chapter 4.
    """

    name: str
    template: str
    source: Callable[[int], str] = english_reading
    target: Callable[[int], str] = chinese_numeral

    def __post_init__(self) -> None:
        t = self.template
        if not isinstance(t, str) or t.count("{x}") != 1 or t.count("{y}") != 1 or t.find("{x}") > t.find("{y}"):
            raise ValueError(f"template must hold '{{x}}' once and then '{{y}}' once, got {t!r}")
        if t.replace("{x}", "").replace("{y}", "").count("{") or t.replace("{x}", "").replace("{y}", "").count("}"):
            raise ValueError(f"template may hold no braces besides '{{x}}' and '{{y}}', got {t!r}")
        if not t.split("{y}")[1] or "\n" in t:
            raise ValueError(f"template must end with a mark after '{{y}}' (e.g. '.') and be one line, got {t!r}")

    def sentence(self, n: int) -> str:
        """The whole sentence for n: "In Chinese, forty-two is written 四十二."."""
        return self.template.replace("{x}", self.source(n)).replace("{y}", self.target(n))

    def _head_and_gap(self) -> tuple[str, str]:
        head = self.template.split("{y}")[0]
        stripped = head.rstrip()
        return stripped, head[len(stripped):]

    def prompt(self, n: int) -> str:
        """The sentence up to the answer, without the space before it: "In Chinese, forty-two is written".

        The space belongs to the answer because byte-level BPE gives a word its leading space (" 四十二" is one
        piece): a prompt ending in a space would be tokenized unlike any training sentence.
        """
        return self._head_and_gap()[0].replace("{x}", self.source(n))

    def answer(self, n: int) -> str:
        """What the model must write after the prompt: the space, the answer and the closing mark, " 四十二."."""
        return self._head_and_gap()[1] + self.target(n) + self.template.split("{y}")[1]

    def rephrased(self, template: str) -> TextTask:
        """The same task under another template (a paraphrased prompt)."""
        return replace(self, template=template)


TRANSLATION = TextTask("translation", "In Chinese, {x} is written {y}.")
FIGURES = TextTask("figures", "In figures, {x} is {y}.", target=str)


def mix_lines(base: Sequence[str], tasks: Sequence[tuple[TextTask, float]], numbers: Sequence[int], n_lines: int,
              seed: int = 0, base_name: str = "text") -> list[tuple[str, str]]:
    """``n_lines`` (source, line) pairs: each line is, independently, a sentence of task k with probability
    ``tasks[k][1]`` (its number drawn uniformly from ``numbers``), and otherwise the next line of ``base``, read in
    order from the start and round again, so the base text keeps its order (speeches stay whole). The source is the
    task's name or ``base_name``. Deterministic given ``seed``. Introduced in Chapter 4.
    """
    total = sum(p for _, p in tasks)
    if any(not 0 <= p <= 1 for _, p in tasks) or total > 1 + 1e-12:
        raise ValueError(f"task probabilities must lie in [0, 1] and sum to at most 1, got {[p for _, p in tasks]}")
    if not base and total < 1 - 1e-12:
        raise ValueError(f"base is empty, so the task probabilities must sum to 1, got {total}")
    if tasks and not numbers:
        raise ValueError("numbers must hold at least one number to draw the task sentences from")
    if n_lines < 1:
        raise ValueError(f"n_lines must be >= 1, got {n_lines}")
    rng, out, next_base = random.Random(seed), [], 0
    for _ in range(n_lines):
        u, chosen = rng.random(), None
        for task, p in tasks:
            if u < p:
                chosen = task
                break
            u -= p
        if chosen is not None:
            out.append((chosen.name, chosen.sentence(rng.choice(numbers))))
        else:
            out.append((base_name, base[next_base % len(base)]))
            next_base += 1
    return out


def task_stream(tokenizer: Encoder, base: Sequence[str], tasks: Sequence[tuple[TextTask, float]],
                numbers: Sequence[int], n_lines: int, seed: int = 0, base_name: str = "text",
                ) -> tuple[list[str], Tensor, Tensor]:
    """A pre-training stream in one call: ``mix_lines`` then ``encode_lines``. Returns (sources, ids, starts):
    each line's source, the stream of ids, and where each line starts in it. Introduced in Chapter 4."""
    lines = mix_lines(base, tasks, numbers, n_lines, seed=seed, base_name=base_name)
    ids, starts = encode_lines(tokenizer, [line for _, line in lines])
    return [source for source, _ in lines], ids, starts


def token_shares(sources: Sequence[str], starts: Tensor, n_ids: int) -> dict[str, float]:
    """The fraction of a stream's ids that come from each source: ``sources[i]`` is line i's source, ``starts`` and
    ``n_ids`` (the stream's length) are what ``encode_lines`` gave. Introduced in Chapter 4."""
    if len(sources) != len(starts) or (len(starts) and int(starts[-1]) > n_ids):
        raise ValueError(f"sources ({len(sources)}) and starts ({len(starts)}) must describe the same lines of a "
                         f"stream of n_ids={n_ids} ids")
    lengths = torch.diff(starts, append=torch.tensor([n_ids])).tolist()
    counts: dict[str, int] = {}
    for source, length in zip(sources, lengths, strict=True):
        counts[source] = counts.get(source, 0) + length
    return {source: count / n_ids for source, count in counts.items()}


def encode_lines(tokenizer: Encoder, lines: Sequence[str]) -> tuple[Tensor, Tensor]:
    """(ids, starts): the lines encoded one by one, each followed by its newline, as one stream of ids, and the
    position in it where each line starts (for training windows that begin at the start of a line)."""
    ids: list[int] = []
    starts = []
    for line in lines:
        starts.append(len(ids))
        ids.extend(tokenizer.encode(line + "\n"))
    return torch.tensor(ids), torch.tensor(starts)


@torch.no_grad()
def greedy_matches(model: nn.Module, tokenizer: Encoder, prompts: Sequence[str], answers: Sequence[str],
                   batch_size: int = 256) -> Tensor:
    """(N,) bool: whether greedy decoding from each prompt writes exactly its answer (as the first tokens it writes).

    Greedy decoding writes the answer a_1..a_m if and only if, for every i, a_i is the most likely token after the
    prompt and a_1..a_{i-1}. All m conditions come from one forward pass over prompt + answer (teacher forcing), so
    a batch of prompts costs one pass instead of m; the prompt and the answer are encoded separately, as greedy
    decoding would see them. Ties are broken as ``torch.argmax`` breaks them in ``greedy_decode``; a near-tie can
    still differ from step-by-step decoding by rounding. The model maps (B, T) ids to (B, T, V) logits and is run in
    eval mode (its mode is restored). Introduced in Chapter 4.
    """
    if len(prompts) != len(answers) or not prompts:
        raise ValueError(f"prompts and answers must be non-empty and of equal length, got {len(prompts)} and "
                         f"{len(answers)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pairs = [(tokenizer.encode(p), tokenizer.encode(a)) for p, a in zip(prompts, answers, strict=True)]
    context = getattr(getattr(model, "config", None), "context_length", None)
    for (p, a), prompt in zip(pairs, prompts, strict=True):
        if not p or not a:
            raise ValueError(f"every prompt and answer must encode to at least one token; {prompt!r} does not")
        if context is not None and len(p) + len(a) > context:
            raise ValueError(f"prompt + answer of {len(p) + len(a)} tokens exceed the context of {context}: {prompt!r}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            length = max(len(p) + len(a) for p, a in chunk)
            tokens = torch.zeros(len(chunk), length, dtype=torch.long)  # right-padded: causal, so padding is unseen
            target = torch.full((len(chunk), length), -1, dtype=torch.long)  # the token to predict, -1: not checked
            for row, (p, a) in enumerate(chunk):
                tokens[row, :len(p) + len(a)] = torch.tensor(p + a)
                target[row, len(p) - 1:len(p) + len(a) - 1] = torch.tensor(a)
            predicted = model(tokens.to(device)).argmax(-1).cpu()  # (B, T): the greedy choice after each prefix
            out.append(((predicted == target) | (target == -1)).all(dim=1))
    finally:
        model.train(was_training)
    return torch.cat(out)


def zero_shot_accuracy(model: nn.Module, tokenizer: Encoder, task: TextTask, numbers: Sequence[int],
                       batch_size: int = 256) -> float:
    """The fraction of ``numbers`` for which greedy decoding from ``task.prompt(n)`` writes exactly
    ``task.answer(n)`` (``greedy_matches``): the bare model's zero-shot exact match. Introduced in Chapter 4."""
    if not numbers:
        raise ValueError("numbers must hold at least one number")
    prompts, answers = [task.prompt(n) for n in numbers], [task.answer(n) for n in numbers]
    return greedy_matches(model, tokenizer, prompts, answers, batch_size).float().mean().item()


def few_shot_prompt(task: TextTask, demonstrations: Sequence[int], query: int) -> str:
    """GPT-3's K-shot prompt in a task's own format: the finished sentences of the ``demonstrations`` (K numbers),
    one per line, then the prompt of ``query``. K = 0 is the zero-shot prompt. Introduced in Chapter 6."""
    if query in demonstrations:
        raise ValueError(f"the query {query} is among the demonstrations: its answer would be in the prompt")
    return "\n".join([*(task.sentence(n) for n in demonstrations), task.prompt(query)])


def few_shot_accuracy(model: nn.Module, tokenizer: Encoder, task: TextTask, numbers: Sequence[int],
                      demonstration_numbers: Sequence[int], k: int, seed: int = 0, batch_size: int = 64) -> float:
    """Exact match (``greedy_matches``) of ``task`` on ``numbers`` with ``k`` demonstrations before each query,
    drawn without replacement from ``demonstration_numbers`` (seeded; a query is never its own demonstration).
    ``k=0`` is ``zero_shot_accuracy``. Introduced in Chapter 6."""
    if not (isinstance(k, int) and k >= 0):
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    if not numbers:
        raise ValueError("numbers must hold at least one number")
    rng = random.Random(seed)
    prompts = []
    for n in numbers:
        pool = [d for d in demonstration_numbers if d != n]
        if len(pool) < k:
            raise ValueError(f"k={k} demonstrations need at least {k} demonstration numbers besides the query")
        prompts.append(few_shot_prompt(task, rng.sample(pool, k), n))
    answers = [task.answer(n) for n in numbers]
    return greedy_matches(model, tokenizer, prompts, answers, batch_size).float().mean().item()


def greedy_completion(model: GPT, tokenizer: Encoder, prompt: str, max_new_tokens: int,
                      stop: str | None = "\n") -> str:
    """What the model writes after ``prompt`` by greedy decoding (``model.generate``), cut after ``stop``."""
    ids = torch.tensor(tokenizer.encode(prompt), device=next(model.parameters()).device)
    text = tokenizer.decode(model.generate(ids, max_new_tokens, temperature=0.0)[len(ids):].tolist())
    if stop is not None and stop in text:
        text = text[:text.index(stop) + len(stop)]
    return text


@dataclass(frozen=True)
class TaskPretrainingData:
    """Chapter 4's pre-training material (``task_pretraining_data``): the non-empty lines of the training plays, the
    numbers task sentences may use and those held out for testing, and the byte-level BPE learnt on the mixture."""

    shakespeare: list[str]
    train_numbers: list[int]
    test_numbers: list[int]
    in_plays: list[int]  # held-out numbers left out of the test because their reading occurs in the plays
    tokenizer: ByteBPE


def task_pretraining_data(plays: Sequence[Play], vocab_size: int, n_lines: int, n_train_numbers: int,
                          n_test_numbers: int, seed: int = 0) -> TaskPretrainingData:
    """Chapter 4's recipe in one call, for the chapters that reuse its model: numbers below 1,000 split into
    training and test (``split_numbers``, seeded), a test number kept only if its English reading occurs in no
    training play, and a byte-level BPE of ``vocab_size`` tokens learnt on ``n_lines`` lines mixing the plays with
    translation and figure sentences, a quarter each (``mix_lines`` with ``seed + 1``). Introduced in Chapter 4."""
    numbers = split_numbers(n_train_numbers, 0, n_test_numbers, max_digits=3, seed=seed)
    shakespeare = [line for p in plays if p.split == "train" for line in p.text.split("\n") if line.strip()]
    if not shakespeare:
        raise ValueError("plays must include training plays (split 'train')")
    training_text = "\n".join(shakespeare)
    in_plays = [n for n in numbers.test if TRANSLATION.source(n) in training_text]
    lines = mix_lines(shakespeare, [(TRANSLATION, 0.25), (FIGURES, 0.25)], numbers.train, n_lines, seed=seed + 1)
    tokenizer = train_byte_bpe(["\n".join(line for _, line in lines)], vocab_size)
    return TaskPretrainingData(shakespeare, list(numbers.train), [n for n in numbers.test if n not in in_plays],
                               in_plays, tokenizer)
