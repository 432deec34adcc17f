"""Chapter 1's translator in use: greedy translation of a whole dataset, and training with validation exact match.

``train_translator`` is the chapter's recipe around ``llmbook.trainer.Trainer``: the paper's AdamW betas (0.9, 0.98),
a linear warmup then cosine decay, and, given ``eval_data``, the validation loss and greedy exact match every
``eval_every`` steps. Introduced in Chapter 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from llmbook.data.numbers import NumberTranslation, decode_tokens, exact_match
from llmbook.decoding import Hypothesis, beam_search_batch, greedy_decode
from llmbook.trainer import Trainer, TrainerConfig, make_loss_fn
from llmbook.transformer import Transformer, next_token_logits_fn


def translate_ids(model: Transformer, data: NumberTranslation, max_new_tokens: int = 40,
                  min_lengths: Sequence[int] | None = None) -> torch.Tensor:
    """Greedy translations of every source of ``data``: (B, 1 + n) target ids starting with BOS, on the CPU.

    ``min_lengths`` (one per example) forbids the end token until a translation has that many tokens. Runs in
    eval mode on the model's device and restores the mode. Introduced in Chapter 1.
    """
    if min_lengths is not None and len(min_lengths) != len(data):
        raise ValueError(f"min_lengths must give one length per example ({len(data)}), got {len(min_lengths)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    src = data.collate(range(len(data)))[0].to(device)  # (B, S)
    bos = torch.full((len(data), 1), data.tgt_vocab.bos_id, device=device)  # (B, 1)
    minimum = None if min_lengths is None else torch.tensor(list(min_lengths), device=device)  # (B,)
    out = greedy_decode(next_token_logits_fn(model, src), bos, max_new_tokens, eos_id=data.tgt_vocab.eos_id,
                        min_new_tokens=minimum)
    model.train(was_training)
    return out.cpu()


def translate(model: Transformer, data: NumberTranslation, min_lengths: Sequence[int] | None = None) -> list[str]:
    """Greedy translations of every source of ``data``, as text. Introduced in Chapter 1."""
    return decode_tokens(translate_ids(model, data, min_lengths=min_lengths), data.tgt_vocab)


def beam_translate(model: Transformer, data: NumberTranslation, beam_width: int, length_penalty: float = 0.6,
                   max_new_tokens: int = 24) -> list[Hypothesis]:
    """The best beam-search hypothesis for every source of ``data`` (all searched at once), tokens on the CPU.

    ``length_penalty`` is GNMT's alpha (0 ranks by log-probability alone). Runs in eval mode and restores the mode.
    Introduced in Chapter 1.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    src = data.collate(range(len(data)))[0].to(device)  # (B, S)
    logits_fn = next_token_logits_fn(model, src.repeat_interleave(beam_width, dim=0))  # (B * width) rows
    bos = torch.full((len(data), 1), data.tgt_vocab.bos_id, device=device)
    best = [hyps[0] for hyps in beam_search_batch(logits_fn, bos, beam_width, max_new_tokens,
                                                  data.tgt_vocab.eos_id, length_penalty)]
    model.train(was_training)
    return [Hypothesis(h.tokens.cpu(), h.log_prob, h.score) for h in best]


@torch.no_grad()
def sequence_log_probs(model: Transformer, data: NumberTranslation, targets: torch.Tensor) -> torch.Tensor:
    """log P(y | x) of one target per example: ``targets`` (B, 1 + n) start with BOS; scored up to the first EOS.

    Tokens after the first EOS (the padding of a finished decode) are not scored; a row without EOS is scored to
    its end. Returns (B,) on the CPU, in nats. Introduced in Chapter 1.
    """
    if targets.dim() != 2 or targets.shape[0] != len(data) or targets.shape[1] < 2:
        raise ValueError(f"targets must have shape (B={len(data)}, 1 + n) with n >= 1, got {tuple(targets.shape)}")
    if bool((targets[:, 0] != data.tgt_vocab.bos_id).any()):
        raise ValueError("every target must start with the BOS id")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    src = data.collate(range(len(data)))[0].to(device)  # (B, S)
    targets = targets.to(device)
    log_probs = model(src, targets[:, :-1]).log_softmax(dim=-1)  # (B, n, V)
    model.train(was_training)
    token_lp = log_probs.gather(-1, targets[:, 1:, None])[..., 0]  # (B, n)
    is_eos = (targets[:, 1:] == data.tgt_vocab.eos_id).long()
    after_eos = (is_eos.cumsum(dim=1) - is_eos) > 0  # (B, n): positions after the first EOS
    return token_lp.masked_fill(after_eos, 0.0).sum(dim=1).cpu()


def reference_ids(data: NumberTranslation) -> torch.Tensor:
    """The references of ``data`` as decoder sequences: (B, 1 + n) = BOS + y + EOS, EOS-padded. Introduced in
    Chapter 1."""
    _, tgt_in, tgt_out = data.collate(range(len(data)))
    eos, pad = data.tgt_vocab.eos_id, data.tgt_vocab.pad_id
    return torch.cat([tgt_in[:, :1], tgt_out.masked_fill(tgt_out == pad, eos)], dim=1)


def train_translator(model: Transformer, data: NumberTranslation, steps: int, *, lr: float, warmup_steps: int,
                     batch_size: int, schedule: str = "cosine", label_smoothing: float = 0.0, eval_every: int = 0,
                     eval_data: NumberTranslation | None = None, on_eval: Callable[[Trainer], None] | None = None,
                     seed: int = 0, device: str = "auto") -> Trainer:
    """Train ``model`` on ``data`` for ``steps`` updates; with ``eval_data``, evaluate every ``eval_every`` steps.

    ``schedule`` is the trainer's ("cosine", or the paper's "inverse_sqrt"); ``label_smoothing`` the paper's
    epsilon_ls (0.1 in the paper). The evaluation records the validation loss (the training loss, smoothing
    included) and ``exact_match`` of greedy translations; ``on_eval`` is called after each. Returns the trainer
    (its ``history``, its ``model``). Introduced in Chapter 1.
    """
    config = TrainerConfig(
        max_steps=steps, lr=lr, betas=(0.9, 0.98), warmup_steps=warmup_steps, schedule=schedule,
        eval_every=eval_every if eval_data is not None else 0,
        eval_batches=max(1, len(eval_data) // batch_size) if eval_data is not None else 1, device=device, seed=seed,
    )
    eval_fn = None
    if eval_data is not None:
        def eval_fn(m: torch.nn.Module) -> dict[str, float]:
            assert isinstance(m, Transformer)
            return {"exact_match": exact_match(translate(m, eval_data), eval_data.target_texts)}
    trainer = Trainer(
        model, make_loss_fn(ignore_index=data.tgt_vocab.pad_id, label_smoothing=label_smoothing),
        data.batch_fn(batch_size, seed=seed), config,
        val_batch=eval_data.batch_fn(batch_size, shuffle=False) if eval_data is not None else None, eval_fn=eval_fn,
    )
    if on_eval is not None:
        trainer.add_callback("on_eval", on_eval)
    trainer.fit()
    return trainer


def per_position_accuracy(predictions: list[str], references: list[str]) -> list[float]:
    """For each output position p: the share of references longer than p whose character p the prediction has right.

    A prediction shorter than its reference is wrong at the positions it lacks. Introduced in Chapter 1.
    """
    if len(predictions) != len(references) or not references:
        raise ValueError(f"predictions and references must be as many and not empty, got {len(predictions)} and "
                         f"{len(references)}")
    accuracies = []
    for p in range(max(map(len, references))):
        pairs = [(pred, ref) for pred, ref in zip(predictions, references, strict=True) if len(ref) > p]
        accuracies.append(sum(len(pred) > p and pred[p] == ref[p] for pred, ref in pairs) / len(pairs))
    return accuracies


@torch.no_grad()
def encoder_states(model: Transformer,
                   data: NumberTranslation) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The encoder's input (token embedding + position) and every encoder layer's output, at the real source tokens.

    Returns (states, tokens, positions): ``states`` is a list of (N, D) tensors, input first, N = the number of
    real (non-pad) source tokens of ``data``; ``tokens`` and ``positions`` (N,) label each row, for probes.
    On the CPU. Introduced in Chapter 1.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    src = data.collate(range(len(data)))[0].to(device)  # (B, S)
    states = model.encoder_layer_states(src)
    model.train(was_training)
    real = src != model.config.pad_id  # (B, S)
    positions = torch.arange(src.shape[1], device=device).expand_as(src)
    return [s[real].cpu() for s in states], src[real].cpu(), positions[real].cpu()
