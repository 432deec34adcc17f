"""Generation speed of llmbook's GPT with and without the key-value cache, side by side.

Run from the repository root:
    python benchmarks/kv_cache.py  [--preset gpt2 --n-layers 12 --batch-size 1 --prompt-length 16
                                    --new-tokens 16 64 --rounds 3 --device cpu]

``GPT.generate`` greedy (temperature 0) from a random prompt, on a randomly initialised model of the preset's
shape (``--n-layers`` shortens it): ``use_cache=False`` re-reads the whole prefix at every step (what generate did
before the cache), ``use_cache=True`` reads the prompt once and then one token per step. Without the cache step t
costs a forward pass over t tokens, so n new tokens cost about n (t0 + n / 2) token-passes against t0 + n with it;
the ratio grows with the length. Both variants run alternately in each round (a busy machine slows both alike);
the table gives the medians over rounds and whether the two produced the same tokens. No assertions: the tests
check correctness, this only measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from llmbook.gpt import GPT, PRESETS


def seconds(model: GPT, prompt: torch.Tensor, new_tokens: int, use_cache: bool) -> tuple[float, torch.Tensor]:
    """Wall-clock seconds of one greedy ``generate`` call and its output."""
    if prompt.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)
    if prompt.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="gpt2", choices=sorted(PRESETS))
    parser.add_argument("--n-layers", type=int, default=None, help="fewer layers than the preset (faster)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    config = dataclasses.replace(PRESETS[args.preset], dropout=0.0)
    if args.n_layers is not None:
        config = dataclasses.replace(config, n_layers=args.n_layers)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = GPT(config).to(device).eval()
    prompt = torch.randint(0, config.vocab_size, (args.batch_size, args.prompt_length), device=device)
    print(f"{args.preset}: {config.n_layers} layers, d_model {config.d_model}, {config.n_heads} heads, "
          f"vocabulary {config.vocab_size:,}; batch {args.batch_size}, prompt {args.prompt_length} tokens; "
          f"{device.type}, {torch.get_num_threads()} threads, median of {args.rounds} rounds\n")
    print(f"{'new tokens':>10} {'no cache (s)':>13} {'cache (s)':>10} {'speed-up':>9} {'same tokens':>12}")
    seconds(model, prompt, 2, True)  # warm-up
    seconds(model, prompt, 2, False)
    for n in args.new_tokens:
        if args.prompt_length + n > config.context_length:
            print(f"{n:>10} skipped: prompt + new tokens exceed context_length={config.context_length}")
            continue
        times: dict[bool, list[float]] = {False: [], True: []}
        outputs: dict[bool, torch.Tensor] = {}
        for _ in range(args.rounds):
            for use_cache in (False, True):
                elapsed, outputs[use_cache] = seconds(model, prompt, n, use_cache)
                times[use_cache].append(elapsed)
        plain, cached = statistics.median(times[False]), statistics.median(times[True])
        same = torch.equal(outputs[False], outputs[True])
        print(f"{n:>10} {plain:>13.3f} {cached:>10.3f} {plain / cached:>8.1f}x {str(same):>12}")


if __name__ == "__main__":
    main()
