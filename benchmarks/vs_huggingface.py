"""Training throughput of the book's models + Trainer against the Hugging Face model a reader would use instead.

Run from the repository root:
    python benchmarks/vs_huggingface.py  [--configs ch1 ch2 ch3-bert ch3-gpt gpu] [--precision float32 bfloat16]
                                         [--rounds 5 --steps 10 --warmup 3]

Configurations (each chapter's CPU training shapes, dropout 0 everywhere):
- ch1: Chapter 1's encoder-decoder ``llmbook.transformer.Transformer`` (post-LN, ReLU, 2 + 2 layers, d_model 64,
  4 heads, d_ff 128, untied embeddings) against ``MarianMTModel`` with the same options (as tests/test_transformer.py
  builds it, but untied: the chapter's English and Chinese vocabularies are separate, 37 and 19 tokens). Batch 64,
  lr 2e-3; source length 20 and target length 18, the padded lengths of most of the chapter's batches of 9-digit
  numbers (English words -> Chinese characters); no padding in the random batches. Tokens counted: B * (S + T).
- ch2: Chapter 2's pre-LN GPT (``PRESETS["small"]``, final LayerNorm, 2,048 tokens, 128 positions) against
  ``GPT2LMHeadModel``; batch 16 x 128, lr 2e-3.
- ch3-bert: Chapter 3's ``BertForMaskedLM`` (BERT-Tiny body: 2 layers, d_model 128, 2 heads, d_ff 512), vocabulary
  2,048, window 64, against ``transformers.BertForMaskedLM``; batch 8, lr 1e-3, 15% of the tokens masked by
  ``llmbook.mlm.mask_tokens`` (one fixed masking per batch); our loss is ``mlm_loss``, theirs ``labels=``.
- ch3-gpt: Chapter 3's GPT, the same body as its BERT (post-LN, GPT-1 style, 64 positions), against
  ``GPT2LMHeadModel`` at the same shapes (pre-LN plus a final LayerNorm: the same matmuls); batch 8 x 64, lr 1e-3.
- gpu (CUDA only): Chapter 2's GPU shapes (256 positions, d_model 384, 6 heads, 6 layers, d_ff 1536, 8,192 tokens),
  batch 64, lr 1e-3, always bfloat16 autocast with TF32 matmuls, whatever --precision says.

Both sides: the same seed, the same few precomputed random batches (cycled), AdamW with betas (0.9, 0.99), weight
decay 0.1, clipping at 1.0. Ours is ``Trainer.fit`` as the chapters train (fused AdamW, decay on matrices only);
theirs a plain loop of forward, loss, zero_grad, backward, clip_grad_norm_, ``torch.optim.AdamW(model.parameters())``
step, in ``torch.autocast`` for bfloat16, where on the CPU their attention is "eager" (sdpa is slow there; the table
says which ran). Before timing, both initial losses must be near ln V and, where the book loads their weights (ch1,
ch3-bert), ours with their weights must give their loss. After a warm-up, each round times a square matmul at the
case's device and dtype (float32 CPU: gpt_throughput's ``matmul_gflops``), then ``--steps`` steps of ours, then of
theirs (interleaved, so a busy machine slows both alike); the table gives medians over rounds.

Model FLOPs per token follow benchmarks/gpt_throughput.py (PaLM's 6 N + 12 L D T): 6 per parameter per token it
acts on (2 forward, 4 backward), N every parameter but lookup tables (positions, segments, and token tables that
are not the output layer; a tied one counts once; biases and LayerNorms are counted, under 1%), plus 12 D per layer
per attended key (scores and weighted values, forward and backward). GPT: ``flops_per_token``. BERT: 6 N + 12 L D T,
N = embedding LayerNorm, layers, MLM head. Transformer, per pair of S source and T target tokens: 6 (N_enc S + N_dec
T + N_kv (S - T)) + 12 L D (S S + T T + T S), divided by S + T; N_enc = encoder layers, N_dec = decoder layers and
output layer, N_kv = the cross-attention key and value maps, which act on the S memory vectors, not on the targets.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import transformers
from torch import Tensor, nn

from llmbook.bert import PRESETS as BERT_PRESETS
from llmbook.bert import BertConfig, BertForMaskedLM, bert_parameter_count, load_hf_bert_state_dict
from llmbook.gpt import GPT, GPTConfig, lm_loss
from llmbook.gpt import PRESETS as GPT_PRESETS
from llmbook.mlm import mask_tokens, mlm_loss
from llmbook.trainer import Batch, LossFn, Trainer, TrainerConfig, make_loss_fn, move_to, seed_everything
from llmbook.transformer import Transformer, TransformerConfig, load_hf_marian_state_dict

sys.path.insert(0, str(Path(__file__).parent))
from gpt_throughput import flops_per_token, matmul_gflops  # noqa: E402

BETAS, WEIGHT_DECAY, CLIP, SEED, N_BATCHES = (0.9, 0.99), 0.1, 1.0, 0, 4
ModelAndLoss = tuple[nn.Module, LossFn]
HFModelAndLoss = tuple[transformers.PreTrainedModel, LossFn]
C = TypeVar("C", bound=transformers.PretrainedConfig)


@dataclass(frozen=True)
class Case:
    """One configuration: how to build each side, and what one step computes."""

    name: str
    shapes: str
    lr: float
    batches: list[Batch]
    tokens_per_step: int
    flops_per_token: float
    vocab_size: int  # the initial loss of both models should be near ln V
    ours: Callable[[], ModelAndLoss]  # our model and the loss_fn the chapter gives Trainer
    theirs: Callable[[str], HFModelAndLoss]  # attn_implementation -> their model and their loss
    load: Callable[[Any, dict[str, Tensor]], list[str]] | None = None  # the book's loader of their weights
    ln_v_tolerance: float = 0.5
    device: str = "cpu"
    precisions: tuple[str, ...] = ()  # fixed precisions; () = those of --precision


def with_attention(config: C, attn: str) -> C:  # what every config's attn_implementation argument sets
    config._attn_implementation = attn
    return config


def random_batches(make: Callable[[torch.Generator], Batch]) -> list[Batch]:
    return [make(torch.Generator().manual_seed(i)) for i in range(N_BATCHES)]


def transformer_case() -> Case:
    Vs, Vt, S, T, B, BOS = 37, 19, 20, 18, 64, 1
    c = TransformerConfig(src_vocab_size=Vs, tgt_vocab_size=Vt, context_length=64, d_model=64, n_heads=4,
                          n_layers=2, d_ff=128, dropout=0.0, tie_embeddings=False, pad_id=0)
    hf = transformers.MarianConfig(
        vocab_size=Vs, decoder_vocab_size=Vt, d_model=c.d_model, encoder_layers=c.n_layers, decoder_layers=c.n_layers,
        encoder_attention_heads=c.n_heads, decoder_attention_heads=c.n_heads, encoder_ffn_dim=c.d_ff,
        decoder_ffn_dim=c.d_ff, max_position_embeddings=c.context_length, activation_function="relu",
        scale_embedding=True, share_encoder_decoder_embeddings=False, tie_word_embeddings=False, pad_token_id=c.pad_id,
        decoder_start_token_id=BOS, eos_token_id=2, forced_eos_token_id=None, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0)

    def batch(g: torch.Generator) -> Batch:  # (src, tgt_in, tgt_out): tokens 3.. are words, tgt_in starts with BOS
        tgt = torch.randint(3, Vt, (B, T + 1), generator=g)
        tgt[:, 0] = BOS
        return torch.randint(3, Vs, (B, S), generator=g), tgt[:, :-1].contiguous(), tgt[:, 1:].contiguous()

    def theirs(attn: str) -> HFModelAndLoss:
        model = transformers.MarianMTModel(with_attention(hf, attn))
        return model, lambda m, b: m(input_ids=b[0], attention_mask=(b[0] != c.pad_id).long(), decoder_input_ids=b[1],
                                     labels=b[2]).loss

    D, L = c.d_model, c.n_layers
    attention, ff = 4 * (D * D + D), 2 * D * c.d_ff + c.d_ff + D
    n_enc, n_dec, n_kv = L * (attention + ff + 4 * D), L * (2 * attention + ff + 6 * D) + D * Vt, L * 2 * (D * D + D)
    step_flops = 6 * (n_enc * S + n_dec * T + n_kv * (S - T)) + 12 * L * D * (S * S + T * T + T * S)
    return Case("ch1", f"Transformer post-LN {L}+{L} layers, d_model {D}, {c.n_heads} heads, d_ff {c.d_ff}, "
                f"vocab {Vs}/{Vt}; batch {B} x (S {S} + T {T})", 2e-3, random_batches(batch), B * (S + T),
                step_flops / (S + T), Vt, lambda: (Transformer(c), make_loss_fn(ignore_index=c.pad_id)), theirs,
                load=load_hf_marian_state_dict, ln_v_tolerance=1.5)  # Xavier output layer, logit std 1.2: ln V + 0.8


def bert_case() -> Case:
    V, T, B, PAD, CLS, SEP, MASK = 2048, 64, 8, 0, 1, 2, 3
    c: BertConfig = dataclasses.replace(BERT_PRESETS["small"], vocab_size=V, context_length=T, dropout=0.0)

    def batch(g: torch.Generator) -> Batch:  # [CLS] text [SEP], masked: (inputs, labels)
        tokens = torch.randint(4, V, (B, T), generator=g)
        tokens[:, 0], tokens[:, -1] = CLS, SEP
        return mask_tokens(tokens, V, MASK, (PAD, CLS, SEP), 0.15, generator=g)

    def theirs(attn: str) -> HFModelAndLoss:
        hf = transformers.BertConfig(
            vocab_size=V, hidden_size=c.d_model, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
            intermediate_size=c.d_ff, max_position_embeddings=T, type_vocab_size=c.type_vocab_size, hidden_act="gelu",
            layer_norm_eps=c.layer_norm_eps, pad_token_id=PAD, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)
        return transformers.BertForMaskedLM(with_attention(hf, attn)), lambda m, b: m(input_ids=b[0], labels=b[1]).loss

    n = bert_parameter_count(c, mlm_head=True) - (T + c.type_vocab_size) * c.d_model  # position, segment: lookups
    return Case("ch3-bert", f"BERT post-LN {c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads, d_ff {c.d_ff}, "
                f"vocab {V}, 15% masked; batch {B} x {T}", 1e-3, random_batches(batch), B * T,
                6 * n + 12 * c.n_layers * c.d_model * T, V,
                lambda: (BertForMaskedLM(c), lambda m, b: mlm_loss(m(b[0]), b[1])), theirs,
                load=load_hf_bert_state_dict)


def gpt_case(name: str, c: GPTConfig, B: int, lr: float, device: str = "cpu", precisions: tuple[str, ...] = ()) -> Case:
    T, V = c.context_length, c.vocab_size

    def theirs(attn: str) -> HFModelAndLoss:
        hf = transformers.GPT2Config(
            vocab_size=V, n_positions=T, n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads, n_inner=c.d_ff,
            activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            layer_norm_epsilon=c.layer_norm_eps, bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(with_attention(hf, attn)), lambda m, b: m(input_ids=b, labels=b).loss

    layout = "pre-LN + final LN" if c.norm_first else "post-LN"
    return Case(name, f"GPT {layout} {c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads, d_ff {c.d_ff}, "
                f"vocab {V}; batch {B} x {T}", lr, random_batches(lambda g: torch.randint(0, V, (B, T), generator=g)),
                B * T, flops_per_token(c, T), V, lambda: (GPT(c), lambda m, b: lm_loss(m(b), b)), theirs,
                device=device, precisions=precisions)


def make_cases() -> dict[str, Callable[[], Case]]:
    ch2 = dataclasses.replace(GPT_PRESETS["small"], dropout=0.0, norm_first=True, final_norm=True)
    body = BERT_PRESETS["small"]  # Chapter 3's GPT has the body of its BERT
    ch3 = dataclasses.replace(GPT_PRESETS["small"], context_length=64, d_model=body.d_model, n_heads=body.n_heads,
                              n_layers=body.n_layers, d_ff=body.d_ff, dropout=0.0)
    gpu = dataclasses.replace(ch2, vocab_size=8192, context_length=256, d_model=384, n_heads=6, n_layers=6, d_ff=1536)
    return {"ch1": transformer_case, "ch2": lambda: gpt_case("ch2", ch2, 16, 2e-3), "ch3-bert": bert_case,
            "ch3-gpt": lambda: gpt_case("ch3-gpt", ch3, 8, 1e-3),
            "gpu": lambda: gpt_case("gpu", gpu, 64, 1e-3, device="cuda", precisions=("bfloat16",))}


def matmul_rate(device: torch.device, dtype: torch.dtype | None) -> float:
    """GFLOP/s of a square matmul at the case's device and precision (float32 CPU: gpt_throughput's)."""
    if device.type == "cpu" and dtype is None:
        return matmul_gflops()
    n = 4096 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype or torch.float32) for _ in range(2))
    times = [time.perf_counter()]
    for _ in range(13):  # 3 warm-up products, then 10 timed
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    return 2 * n**3 / statistics.median(t - s for s, t in zip(times[3:], times[4:], strict=False)) / 1e9


def check_initial_losses(case: Case, ours: nn.Module, our_loss: LossFn, theirs: nn.Module, their_loss: LossFn,
                         device: torch.device) -> str:
    """Both initial losses near ln V, and ours with their weights equal to theirs (where the book has a loader)."""
    batch = move_to(case.batches[0], device)
    with torch.no_grad():
        losses = {"ours": our_loss(ours, batch).item(), "HF": their_loss(theirs, batch).item()}
        if case.load is not None:
            seed_everything(SEED)
            copy = case.ours()[0]
            case.load(copy, theirs.state_dict())
            losses["ours with HF weights"] = our_loss(copy.to(device), batch).item()
    ln_v = math.log(case.vocab_size)
    for side in ("ours", "HF"):
        if abs(losses[side] - ln_v) > case.ln_v_tolerance:
            raise RuntimeError(f"{case.name}: initial loss of {side} {losses[side]:.3f} is not near ln V {ln_v:.3f}")
    if case.load is not None and abs(losses["ours with HF weights"] - losses["HF"]) > 0.05:
        raise RuntimeError(f"{case.name}: ours with HF's weights gives {losses['ours with HF weights']:.4f}, "
                           f"HF {losses['HF']:.4f}: the two models differ")
    return ", ".join(f"{k} {v:.4f}" for k, v in losses.items()) + f" (ln V {ln_v:.4f})"


def measure(case: Case, precision: str, args: argparse.Namespace) -> list[str]:
    """Time both sides in interleaved rounds; the table row of medians."""
    device, n = torch.device(case.device), len(case.batches)
    dtype = torch.bfloat16 if precision == "bfloat16" else None
    attn = "eager" if device.type == "cpu" and dtype is not None else "sdpa"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    seed_everything(SEED)
    ours, our_loss = case.ours()
    trainer = Trainer(ours, our_loss, lambda step: case.batches[step % n], TrainerConfig(
        max_steps=args.warmup + args.rounds * args.steps, lr=case.lr, betas=BETAS, weight_decay=WEIGHT_DECAY,
        grad_clip=CLIP, device=case.device, precision=precision))
    seed_everything(SEED)
    theirs, their_loss = case.theirs(attn)
    nn.Module.to(theirs.train(), device)  # (the stubs of PreTrainedModel.to reject a device)
    attn = theirs.config._attn_implementation  # what runs, as the table reports it
    print(f"{case.name} {precision}: {case.shapes}; initial loss "
          f"{check_initial_losses(case, trainer.model, our_loss, theirs, their_loss, device)}", flush=True)
    optimizer = torch.optim.AdamW(theirs.parameters(), lr=case.lr, betas=BETAS, weight_decay=WEIGHT_DECAY)
    hf_step = 0

    def their_steps(k: int) -> None:
        nonlocal hf_step
        for _ in range(k):
            hf_step += 1  # the batches ours sees: Trainer asks for step 1, 2, ...
            batch = move_to(case.batches[hf_step % n], device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype is not None):
                loss = their_loss(theirs, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(theirs.parameters(), CLIP)
            optimizer.step()

    def rate(run: Callable[[int], object], k: int) -> float:
        start = time.perf_counter()
        run(k)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return k * case.tokens_per_step / (time.perf_counter() - start)

    rate(trainer.fit, args.warmup)
    rate(their_steps, args.warmup)
    peaks: list[float] = []
    rates: dict[str, list[float]] = {"ours": [], "HF": []}
    for _ in range(args.rounds):
        peaks.append(matmul_rate(device, dtype))
        rates["ours"].append(rate(trainer.fit, args.steps))
        rates["HF"].append(rate(their_steps, args.steps))
    ratio = statistics.median(o / h for o, h in zip(rates["ours"], rates["HF"], strict=True))
    fractions = [statistics.median(r * case.flops_per_token / 1e9 / p for r, p in zip(values, peaks, strict=True))
                 for values in rates.values()]
    return [case.name, precision, attn, f"{statistics.median(peaks):,.0f}",
            *(f"{statistics.median(values):,.0f}" for values in rates.values()), f"{ratio:.2f}",
            *(f"{f:.1%}" for f in fractions)]


def main() -> None:
    cases = make_cases()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", choices=list(cases), default=list(cases))
    parser.add_argument("--precision", nargs="+", choices=["float32", "bfloat16"], default=["float32"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="training steps per side per round")
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()  # no notes on unset config fields
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads; "
          f"float32 CPU matmul (1024 x 1024): {matmul_gflops():.1f} GFLOP/s")
    rows = [["config", "precision", "HF attn", "matmul GF/s", "ours tok/s", "HF tok/s", "ours/HF", "ours %mm",
             "HF %mm"]]
    for name in args.configs:
        case = cases[name]()
        if case.device == "cuda" and not torch.cuda.is_available():
            print(f"{name}: skipped, CUDA is not available")
            continue
        for precision in case.precisions or args.precision:
            rows.append(measure(case, precision, args))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"medians of {args.rounds} rounds of {args.steps} steps; %mm: model FLOP/s over the matmul rate")
    for row in rows:
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells))


if __name__ == "__main__":
    main()
