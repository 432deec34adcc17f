"""GPT-1 (Radford et al. 2018) and GPT-2 (Radford et al. 2019): decoder-only Transformer language models.

The model is a stack of the encoder layers of Chapter 1 with a causal mask (no cross-attention): token embeddings
plus learned position embeddings, n_layers blocks, and a language-model head tied to the token embeddings. GPT-1's
blocks are post-LN; GPT-2 is the same model with three switches: ``norm_first`` and ``final_norm`` (pre-LN blocks
and a LayerNorm after the last one) and ``scaled_residual_init`` (N(0, 0.02 / sqrt(2 n_layers)) on W_o and W_2, the
weights that write into the residual stream: the paper's 1/sqrt(N) for N residual layers, two per block, as
Hugging Face's GPT2 applies it; OpenAI's released code, made for inference, starts every projection at 0.02).

Fine-tuning follows the GPT-1 paper's section 3.3: the input is one token sequence, <start> text <extract>, or for
a pair <start> a <delim> b <extract>; a linear head reads the last layer's hidden state at <extract>, and the loss
adds the language-model loss on the same inputs, L = L_cls + lambda * L_lm.

Sizes. ``gpt_parameter_count(PRESETS["gpt1"])`` is 116,534,784, the count of Hugging Face's ``OpenAIGPTModel``. The
GPT-1 paper gives no count; "117M" comes from the GPT-2 paper's table, whose smallest model "is equivalent to the
original GPT", and is this number rounded: 12 blocks of 7,087,872 (85.05M), a 40,478 x 768 token matrix that is also
the output layer (31.09M) and 512 x 768 positions (0.39M). The vocabulary is the paper's 40,000 BPE merges plus 478
base symbols; fine-tuning adds rows for the three special tokens.

GPT-2 has 50,257 tokens and 1,024 positions. The exact counts of "gpt2", "gpt2-medium", "gpt2-large" and "gpt2-xl"
are 124,439,808, 354,823,168, 774,030,080 and 1,557,611,200 (those of Hugging Face's models). The GPT-2 paper's
Table 2 gives 117M, 345M, 762M and 1542M: not these numbers rounded, but, to the million, the counts of the same
shapes with GPT-1's 40,478 tokens (116.93M, 344.81M, 761.51M, 1541.96M). OpenAI's gpt-2 repository corrected them
when it released the 774M model: "our original parameter counts were wrong due to an error (in our previous blog
posts and paper). Thus you may have seen small referred to as 117M and medium referred to as 345M"; its models are
named 124M, 355M, 774M and 1558M (the exact counts rounded to the million) and its model card calls the largest
"1.5 billion" (truncated).

The models of the book share one shape: the layer stack is ``layers``; ``forward(tokens)`` returns one tensor, the
logits; ``hidden_states(tokens)`` the last layer's output (B, T, D); ``attention_weights(tokens)`` a list of
n_layers weights (B, H, T, T). Token ids are checked by ``llmbook.config.check_token_ids``; Hugging Face weights load
through ``load_hf_openai_gpt_state_dict(model, hf_state_dict)`` (GPT-1) and ``load_hf_gpt2_state_dict`` (GPT-2),
which return the Hugging Face keys they leave unused. ``forward(tokens, cache)`` decodes incrementally with a
key-value cache per layer (``new_cache``); ``generate`` uses it. ``local_window`` switches on GPT-3's alternating
dense and locally banded layers (Chapter 6, ``llmbook.gpt3``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmbook.attention import KVCache, banded_mask
from llmbook.config import check_int, check_model_config, check_token_ids
from llmbook.decoding import greedy_decode, sample
from llmbook.layers import EncoderLayer
from llmbook.positional import LearnedPositionalEmbedding


@dataclass(frozen=True)
class GPTConfig:
    """Hyperparameters of a GPT, with the paper's names. The defaults are GPT-1's.

    GPT-1: post-LN blocks (``norm_first=False``), no final LayerNorm, GELU in its tanh form (what OpenAI's code and
    Hugging Face's ``OpenAIGPT`` compute), the output layer tied to the token embeddings, N(0, 0.02) initialisation.
    Introduced in Chapter 2.
    """

    vocab_size: int = 40478
    context_length: int = 512
    d_model: int = 768
    n_heads: int = 12
    n_layers: int = 12
    d_ff: int = 3072
    dropout: float = 0.1
    activation: str = "gelu_tanh"
    norm_first: bool = False
    final_norm: bool = False
    tie_embeddings: bool = True
    scaled_residual_init: bool = False
    attn_impl: str = "fused"
    layer_norm_eps: float = 1e-5
    # 0: every layer attends to all earlier positions. w > 0: GPT-3's alternating pattern, the second, fourth, ...
    # layers (indices 1, 3, 5, ...) are locally banded (each position sees the last w positions, its own included),
    # the first, third, ... dense.
    local_window: int = 0

    def __post_init__(self) -> None:
        check_model_config(
            self, ("vocab_size", "context_length", "d_model", "n_heads", "n_layers"),
            ("norm_first", "final_norm", "tie_embeddings", "scaled_residual_init"),
        )
        check_int(self, "d_ff", 0, allowed="an integer >= 0 (0 = attention-only blocks, no feed-forward)")
        check_int(self, "local_window", 0, allowed="an integer >= 0 (0 = every layer dense)")


def gpt2_config(n_layers: int, d_model: int, n_heads: int, vocab_size: int = 50257, context_length: int = 1024,
                dropout: float = 0.1) -> GPTConfig:
    """GPT-2's block at any size (the paper's section 2.3 and OpenAI's code): GPT-1's blocks made pre-LN, a final
    LayerNorm, the scaled residual init, d_ff = 4 d_model, GELU in its tanh form; by default GPT-2's 50,257
    byte-level BPE tokens and 1,024 positions. Dropout defaults to GPT-1's 0.1 (the paper gives none; Hugging
    Face's GPT2Config has 0.1). The presets and Chapter 5's sweep use it."""
    return GPTConfig(vocab_size=vocab_size, context_length=context_length, d_model=d_model, n_heads=n_heads,
                     n_layers=n_layers, d_ff=4 * d_model, dropout=dropout, activation="gelu_tanh", norm_first=True,
                     final_norm=True, scaled_residual_init=True, layer_norm_eps=1e-5)


_gpt2 = gpt2_config


PRESETS: dict[str, GPTConfig] = {
    "gpt1": GPTConfig(),  # the paper: 12 layers, 768 wide, 12 heads, d_ff 3072, 512 positions, 40,478 BPE tokens
    # GPT-2's Table 2 (n_heads, not in the paper, from the released models: heads of size 64): 124M to 1558M.
    "gpt2": _gpt2(12, 768, 12),
    "gpt2-medium": _gpt2(24, 1024, 16),
    "gpt2-large": _gpt2(36, 1280, 20),
    "gpt2-xl": _gpt2(48, 1600, 25),
    # CPU sizes: "small" for the chapter (replace vocab_size by the tokenizer's), "tiny" for tests.
    "small": GPTConfig(vocab_size=2048, context_length=128, d_model=128, n_heads=4, n_layers=4, d_ff=512),
    "tiny": GPTConfig(vocab_size=64, context_length=16, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0),
}


def gpt_parameter_count(config: GPTConfig) -> int:
    """Closed-form number of parameters of ``GPT(config)`` (a tied matrix counted once). Introduced in Chapter 2."""
    D, F_, V = config.d_model, config.d_ff, config.vocab_size
    attention = 4 * (D * D + D)  # W_q, W_k, W_v, W_o with biases
    feed_forward = D * F_ + F_ + F_ * D + D + 2 * D if F_ else 0  # W_1, W_2 with biases, and its LayerNorm
    block = attention + 2 * D + feed_forward  # attention's LayerNorm, gain and bias
    embeddings = V * D + config.context_length * D  # tokens and positions
    head = 0 if config.tie_embeddings else V * D
    final = 2 * D if config.final_norm else 0
    return config.n_layers * block + embeddings + head + final


def non_embedding_parameter_count(config: GPTConfig) -> int:
    """Kaplan et al.'s N: the parameters of ``GPT(config)`` without the token and position embeddings (and
    without an untied output layer, the vocabulary's other matrix). About 12 n_layers d_model^2 when d_ff =
    4 d_model. Introduced in Chapter 5."""
    D, V = config.d_model, config.vocab_size
    head = 0 if config.tie_embeddings else V * D
    return gpt_parameter_count(config) - V * D - config.context_length * D - head


def lm_loss(logits: Tensor, tokens: Tensor, pad_id: int | None = None) -> Tensor:
    """Mean cross-entropy of predicting token t + 1 from logits at t: logits (..., T, V), tokens (..., T).

    Targets equal to ``pad_id`` are left out. At initialisation the loss is close to ln V. Introduced in Chapter 2.
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} must be tokens {tuple(tokens.shape)} plus a vocabulary axis")
    V = logits.shape[-1]
    ignore_index = -100 if pad_id is None else pad_id
    # The last position has no next token: its target is ignore_index. Padding the targets, rather than slicing off
    # the last position's logits, leaves the largest tensor of the step in place instead of copying it.
    targets = F.pad(tokens[..., 1:], (0, 1), value=ignore_index).reshape(-1)  # (N,), N = (...) * T
    if not bool((targets != ignore_index).any()):  # a mean over no target is NaN
        raise ValueError(f"tokens hold no target: T < 2, or every token after the first is pad_id={pad_id}")
    return F.cross_entropy(logits.reshape(-1, V).float(), targets, ignore_index=ignore_index)


class GPT(nn.Module):
    """Decoder-only Transformer language model: tokens (B, T) -> next-token logits (B, T, V).

    ``hidden_states`` gives the last layer's output (B, T, D) for fine-tuning heads, ``attention_weights`` the
    attention of every layer. Introduced in Chapter 2.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        D = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, D)
        self.pos_emb = LearnedPositionalEmbedding(config.context_length, D)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(D, config.n_heads, config.d_ff, config.dropout, config.activation, config.norm_first,
                         config.attn_impl, config.layer_norm_eps)
            for _ in range(config.n_layers)
        )
        self.final_norm = nn.LayerNorm(D, eps=config.layer_norm_eps) if config.final_norm else nn.Identity()
        self.lm_head = nn.Linear(D, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-1: N(0, 0.02) weights and embeddings, zero biases, LayerNorm at identity. GPT-2 shrinks the weights
        # that add into the residual stream (W_o, W_2) by 1/sqrt(2 n_layers): there are 2 such sums per block.
        std = 0.02
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if isinstance(module, EncoderLayer) and self.config.scaled_residual_init:
            for linear in (module.self_attn.W_o, *([module.ff.W_2] if module.ff is not None else [])):
                nn.init.normal_(linear.weight, std=std / math.sqrt(2 * self.config.n_layers))

    def _embed(self, tokens: Tensor, start: int = 0) -> Tensor:
        """h_0 = U W_e + W_p: token plus position embeddings (B, T, D) of checked token ids (B, T) at positions
        start .. start + T - 1."""
        check_token_ids(tokens, self.config.vocab_size, context_length=self.config.context_length)
        C = self.config.context_length
        if start + tokens.shape[1] > C:
            raise ValueError(f"the cache holds {start} positions and tokens adds {tokens.shape[1]}: "
                             f"{start + tokens.shape[1]} positions are more than context_length={C}")
        positions = torch.arange(start, start + tokens.shape[1], device=tokens.device)  # (T,)
        return self.dropout(self.tok_emb(tokens) + self.pos_emb(positions))  # (B, T, D)

    def new_cache(self) -> list[KVCache]:
        """An empty key-value cache: one ``KVCache`` per layer, for ``forward(tokens, cache)``. Introduced in
        Chapter 4."""
        return [KVCache() for _ in self.layers]

    def hidden_states(self, tokens: Tensor, cache: list[KVCache] | None = None) -> Tensor:
        """tokens (B, T) -> the last layer's output (B, T, D) (after the final LayerNorm, if any).

        With a ``cache`` (``new_cache``), tokens are the T positions after the cached ones, whose keys and values
        are added to it. Without one, position 0 is the first token.
        """
        start = 0
        if cache is not None:
            if len(cache) != len(self.layers):
                raise ValueError(f"cache must hold one KVCache per layer ({len(self.layers)}), got {len(cache)}")
            start = cache[0].length
        x = self._embed(tokens, start)  # h_0, (B, T, D)
        for i, layer in enumerate(self.layers):
            # h_l = block(h_{l-1}): position t attends to 0..t (the cached positions and these)
            x, _ = layer(x, mask=self._layer_mask(i, tokens.shape[1], start, tokens.device), is_causal=True,
                         cache=None if cache is None else cache[i])
        return self.final_norm(x)

    def _layer_mask(self, layer: int, T: int, start: int, device: torch.device) -> Tensor | None:
        """The band of layer ``layer`` (T, start + T) when it is one of the locally banded layers, else None."""
        w = self.config.local_window
        return banded_mask(T, w, device=device, S=start + T) if w and layer % 2 == 1 else None

    def forward(self, tokens: Tensor, cache: list[KVCache] | None = None) -> Tensor:
        """tokens (B, T) -> logits (B, T, V), where position t predicts token t + 1.

        ``cache`` (``new_cache()``, filled by earlier calls) makes the call incremental: a prompt first, then one
        new token (B, 1) at a time, each attending to every earlier position without recomputing it.
        """
        return self.lm_head(self.hidden_states(tokens, cache))  # (B, T, V)

    def attention_weights(self, tokens: Tensor) -> list[Tensor]:
        """tokens (B, T) -> n_layers attention weights (B, H, T, T), rows are queries (manual attention path)."""
        x = self._embed(tokens)
        weights = []
        for i, layer in enumerate(self.layers):
            x, w = layer(x, mask=self._layer_mask(i, tokens.shape[1], 0, tokens.device), need_weights=True,
                         is_causal=True)
            weights.append(w)
        return weights

    @torch.no_grad()
    def generate(
        self,
        prompt: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        crop_context: bool = True,
        top_p: float | None = None,
        use_cache: bool = True,
    ) -> Tensor:
        """Continue ``prompt`` (B, t0) or (t0,) by sampling (``llmbook.decoding.sample``); temperature 0 is greedy.

        The model sees at most the last context_length tokens (``crop_context``); with ``crop_context=False`` a
        prompt that would outgrow the context is an error. ``use_cache`` feeds each new token alone through a
        key-value cache while the sequence fits the context; past it, every step re-reads the last context_length
        tokens, whose positions have all shifted (as without the cache). Runs in eval mode and restores the mode.
        """
        if not isinstance(prompt, Tensor) or prompt.dim() not in (1, 2):
            raise ValueError("prompt must be a tensor of token ids of shape (B, t0) or (t0,)")
        squeeze = prompt.dim() == 1
        prompt = prompt[None, :] if squeeze else prompt
        C = self.config.context_length
        if not crop_context and prompt.shape[1] + max_new_tokens > C:
            raise ValueError(
                f"prompt length {prompt.shape[1]} + max_new_tokens {max_new_tokens} is more than "
                f"context_length={C}; pass crop_context=True to keep only the last {C} tokens"
            )
        if prompt.shape[1] == 0:
            raise ValueError("prompt must hold at least one token (e.g. <start>)")
        cache = self.new_cache() if use_cache else None

        def next_token_logits(prefix: Tensor) -> Tensor:
            if cache is None or prefix.shape[1] > C:
                return self(prefix[:, -C:])[:, -1, :]  # (B, V)
            return self(prefix[:, cache[0].length:], cache)[:, -1, :]  # (B, V): only the tokens not yet cached

        was_training = self.training
        self.eval()
        try:
            if temperature == 0:
                out = greedy_decode(next_token_logits, prompt, max_new_tokens, eos_id)
            else:
                out = sample(next_token_logits, prompt, max_new_tokens, temperature, top_k, eos_id, generator, top_p)
        finally:
            self.train(was_training)
        return out[0] if squeeze else out


# Fine-tuning (the paper's section 3.3): input transformations, a classification head, the combined loss.
@torch.no_grad()
def continuation_log_probs(model: GPT, prefixes: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]],
                           batch_size: int = 64) -> Tensor:
    """(N,): log p(continuation | prefix) under ``model``, the sum over the continuation's tokens, for N pairs.

    Each prefix must hold at least one token (a <start> token, for a text scored on its own); prefix plus continuation
    must fit the context. Pairs are scored in padded batches: causal attention keeps the padding after a sequence
    out of its scores. Zero-shot scoring of Chapter 2; introduced there.
    """
    if len(prefixes) != len(continuations) or not prefixes:
        raise ValueError(f"prefixes and continuations must be as many and not empty, got {len(prefixes)} and "
                         f"{len(continuations)}")
    if any(not p for p in prefixes) or any(not c for c in continuations):
        raise ValueError("every prefix and every continuation must hold at least one token")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores = []
    for start in range(0, len(prefixes), batch_size):
        pairs = list(zip(prefixes[start:start + batch_size], continuations[start:start + batch_size], strict=True))
        tokens = pad_batch([[*p, *c] for p, c in pairs], pad_id=0).to(device)  # (B, T); the pad id is never read
        log_probs = model(tokens).float().log_softmax(dim=-1)  # (B, T, V)
        for row, (p, c) in enumerate(pairs):
            positions = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=device)  # the logits that predict c
            scores.append(log_probs[row, positions, tokens[row, positions + 1]].sum())
    model.train(was_training)
    return torch.stack(scores).cpu()


def _fit(lengths: list[int], budget: int) -> list[int]:
    """Shorten the longest of several texts, one token at a time, until their lengths sum to at most ``budget``."""
    lengths = list(lengths)
    while sum(lengths) > budget:
        lengths[lengths.index(max(lengths))] -= 1
    return lengths


def build_classification_input(
    text_ids: Sequence[int], start_id: int, extract_id: int, max_length: int | None = None
) -> list[int]:
    """<start> text <extract>. With ``max_length`` the text is cut at its end to fit. Introduced in Chapter 2."""
    text_ids = list(text_ids)
    if max_length is not None:
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 to hold <start>, a token and <extract>, got {max_length}")
        text_ids = text_ids[: max_length - 2]
    return [start_id, *text_ids, extract_id]


def build_pair_inputs(
    a_ids: Sequence[int],
    b_ids: Sequence[int],
    start_id: int,
    delim_id: int,
    extract_id: int,
    max_length: int | None = None,
    both_orders: bool = True,
) -> list[list[int]]:
    """[<start> a <delim> b <extract>, <start> b <delim> a <extract>]; only the first if not ``both_orders``.

    For a symmetric question ("same play?") the paper feeds both orders and adds the two hidden states, so the
    prediction cannot depend on the order. With ``max_length`` the longer text is shortened first. Introduced in
    Chapter 2.
    """
    a_ids, b_ids = list(a_ids), list(b_ids)
    if max_length is not None:
        if max_length < 5:
            raise ValueError(f"max_length must be >= 5 to hold 3 special tokens and two texts, got {max_length}")
        n_a, n_b = _fit([len(a_ids), len(b_ids)], max_length - 3)
        a_ids, b_ids = a_ids[:n_a], b_ids[:n_b]
    first = [start_id, *a_ids, delim_id, *b_ids, extract_id]
    return [first, [start_id, *b_ids, delim_id, *a_ids, extract_id]] if both_orders else [first]


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> Tensor:
    """Right-pad token lists into a (B, T) tensor. With causal attention no real token sees the padding after it.

    Introduced in Chapter 2.
    """
    if not sequences:
        raise ValueError("sequences must hold at least one sequence")
    T = max(len(s) for s in sequences)
    return torch.tensor([list(s) + [pad_id] * (T - len(s)) for s in sequences], dtype=torch.long)  # (B, T)


class GPTClassifier(nn.Module):
    """GPT-1 fine-tuning: a linear head on the last hidden state at the <extract> token, plus the LM logits.

    ``tokens`` is (B, T), one input per example, or (B, K, T), K inputs per example (the two orders of a pair) whose
    hidden states at <extract> are added. Introduced in Chapter 2.
    """

    def __init__(self, gpt: GPT, n_classes: int, extract_id: int) -> None:
        super().__init__()
        if not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        if not 0 <= extract_id < gpt.config.vocab_size:
            raise ValueError(f"extract_id must be a token id in [0, {gpt.config.vocab_size}), got {extract_id}")
        self.gpt = gpt
        self.extract_id = extract_id
        self.dropout = nn.Dropout(gpt.config.dropout)
        self.head = nn.Linear(gpt.config.d_model, n_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """tokens (B, T) or (B, K, T) -> class logits (B, n_classes) and LM logits (B, T, V) or (B, K, T, V)."""
        check_token_ids(tokens, self.gpt.config.vocab_size, context_length=self.gpt.config.context_length, ndim=(2, 3))
        flat = tokens.reshape(-1, tokens.shape[-1])  # (B*K, T)
        is_extract = flat == self.extract_id  # (B*K, T)
        if not bool((is_extract.sum(dim=1) == 1).all()):
            raise ValueError(f"every input must hold exactly one <extract> token (id {self.extract_id})")
        h = self.gpt.hidden_states(flat)  # (B*K, T, D)
        h_extract = h[torch.arange(flat.shape[0]), is_extract.int().argmax(dim=1)]  # (B*K, D)
        h_extract = h_extract.view(*tokens.shape[:-1], -1)  # (B, D) or (B, K, D)
        if tokens.dim() == 3:
            h_extract = h_extract.sum(dim=1)  # (B, D): the paper adds the representations of both orders
        lm_logits = self.gpt.lm_head(h).view(*tokens.shape, -1)  # (B, [K,] T, V)
        return self.head(self.dropout(h_extract)), lm_logits


def finetune_loss(
    class_logits: Tensor, labels: Tensor, lm_logits: Tensor, tokens: Tensor, lm_weight: float = 0.5,
    pad_id: int | None = None,
) -> Tensor:
    """The paper's L3 = L2 (classification cross-entropy) + lambda * L1 (LM loss on the inputs); lambda = 0.5 in
    the paper. Introduced in Chapter 2.
    """
    if lm_weight < 0:
        raise ValueError(f"lm_weight must be >= 0, got {lm_weight!r}")
    loss = F.cross_entropy(class_logits.float(), labels)
    return loss + lm_weight * lm_loss(lm_logits, tokens, pad_id) if lm_weight > 0 else loss


# Loading Hugging Face weights: one key map for GPT-1 (OpenAIGPT) and one for GPT-2, which share their blocks' names.
_HF_BLOCK = {  # inside transformer.h.N. (Conv1D weights are stored (in, out): transposed to nn.Linear's (out, in))
    "attn.c_proj": "self_attn.W_o",
    "ln_1": "norm1",
    "mlp.c_fc": "ff.W_1",
    "mlp.c_proj": "ff.W_2",
    "ln_2": "norm2",
}
OPENAI_GPT_KEY_MAP = {"tokens_embed.weight": "tok_emb.weight", "positions_embed.weight": "pos_emb.pos_emb.weight"}
GPT2_KEY_MAP = {"wte.weight": "tok_emb.weight", "wpe.weight": "pos_emb.pos_emb.weight",
                "ln_f.weight": "final_norm.weight", "ln_f.bias": "final_norm.bias"}  # outside the blocks
# Heads of other Hugging Face classes (DoubleHeads, ForSequenceClassification): known, and left unused.
_HF_OTHER_HEADS = ("multiple_choice_head.", "score.")


def _load_hf_gpt(model: GPT, hf_state_dict: dict[str, Tensor], key_map: dict[str, str]) -> tuple[list[str], list[str]]:
    """Copy a Hugging Face GPT-1 or GPT-2 state dict into ``model`` through ``key_map`` (the names outside the
    blocks) and ``_HF_BLOCK``; returns the other heads' keys and the causal-mask buffers' keys, both unused."""
    c = model.config
    hf = {k.removeprefix("transformer."): v for k, v in hf_state_dict.items()}
    token_key = next(k for k, ours in key_map.items() if ours == "tok_emb.weight")
    D = c.d_model
    state: dict[str, Tensor] = {}
    heads, buffers = [], []
    for name, tensor in hf.items():
        if name in key_map:
            state[key_map[name]] = tensor
        elif name == "lm_head.weight":
            if c.tie_embeddings:
                if token_key in hf and not torch.equal(tensor, hf[token_key]):
                    raise ValueError(f"tie_embeddings=True but lm_head.weight differs from {token_key}")
            else:
                state["lm_head.weight"] = tensor
        elif name.startswith("h."):
            n, module_param = name[2:].split(".", 1)
            module, param = module_param.rsplit(".", 1)
            prefix = f"layers.{n}"
            if module == "attn" and param in ("bias", "masked_bias"):  # causal-mask buffers of older checkpoints
                buffers.append(name)
            elif module == "attn.c_attn":  # fused (D, 3D) weight or (3D,) bias -> W_q, W_k, W_v
                if tensor.shape[-1] != 3 * D:
                    raise ValueError(f"{name} has shape {tuple(tensor.shape)}, but d_model={D} needs 3 * D = {3 * D}")
                parts = tensor.split(D, dim=-1)
                for w, part in zip(("W_q", "W_k", "W_v"), parts, strict=True):
                    state[f"{prefix}.self_attn.{w}.{param}"] = part.t() if param == "weight" else part
            elif module in _HF_BLOCK:
                conv = module.startswith(("attn.", "mlp.")) and param == "weight"
                state[f"{prefix}.{_HF_BLOCK[module]}.{param}"] = tensor.t() if conv else tensor
            else:
                raise ValueError(f"hf_state_dict has a key the GPT key map does not know: {name!r}")
        elif name == "position_ids":
            continue
        elif name.startswith(_HF_OTHER_HEADS):
            heads.append(name)
        else:
            raise ValueError(f"hf_state_dict has a key the GPT key map does not know: {name!r}")
    if c.tie_embeddings and "tok_emb.weight" in state:
        state["lm_head.weight"] = state["tok_emb.weight"]  # one matrix under two names
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    if missing:
        raise ValueError(f"hf_state_dict lacks weights for: {missing}")
    for name, tensor in state.items():
        if name not in ours:
            raise ValueError(f"{name} is not a parameter of this model (different depth?)")
        if tuple(tensor.shape) != tuple(ours[name].shape):
            raise ValueError(f"{name} needs shape {tuple(ours[name].shape)}, Hugging Face has {tuple(tensor.shape)}")
    model.load_state_dict(state, strict=True)
    return sorted(heads), sorted(buffers)


def load_hf_openai_gpt_state_dict(model: GPT, hf_state_dict: dict[str, Tensor]) -> list[str]:
    """Copy a Hugging Face ``OpenAIGPTLMHeadModel`` (or ``OpenAIGPTModel``) state dict into ``model``.

    Hugging Face keeps GPT-1's ``Conv1D`` layers, whose weights are the transpose of ``nn.Linear``'s, and one fused
    ``c_attn`` (D, 3D) for the query, key and value projections, split here into W_q, W_k, W_v. Every parameter of
    ``model`` must be found; returns the HF keys it has no place for (e.g. a multiple-choice head; a causal-mask
    buffer is skipped). Raises a ValueError for an unknown, missing or misshapen weight. Introduced in Chapter 2.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a GPT, got {type(model).__name__}")
    if model.config.norm_first or model.config.final_norm:
        raise ValueError("OpenAI GPT weights need norm_first=False and final_norm=False (post-LN, no final norm)")
    heads, _ = _load_hf_gpt(model, hf_state_dict, OPENAI_GPT_KEY_MAP)
    return heads


def load_hf_gpt2_state_dict(model: GPT, hf_state_dict: dict[str, Tensor]) -> list[str]:
    """Copy a Hugging Face ``GPT2LMHeadModel`` (or ``GPT2Model``) state dict into ``model``, e.g. ``PRESETS["gpt2"]``.

    The blocks' names, the ``Conv1D`` transposes and the fused ``c_attn`` are GPT-1's (``GPT2_KEY_MAP`` gives the
    rest: wte, wpe, ln_f). Returns the HF keys it leaves unused, sorted: other heads, and the causal-mask buffers
    ``h.N.attn.bias`` and ``h.N.attn.masked_bias`` of checkpoints saved by older versions (our mask is built from
    ``is_causal``). Raises a ValueError for an unknown, missing or misshapen weight. Introduced in Chapter 4.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a GPT, got {type(model).__name__}")
    if not (model.config.norm_first and model.config.final_norm):
        raise ValueError("GPT-2 weights need norm_first=True and final_norm=True (pre-LN with a final LayerNorm)")
    heads, buffers = _load_hf_gpt(model, hf_state_dict, GPT2_KEY_MAP)
    return sorted(heads + buffers)
