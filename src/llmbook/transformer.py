"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al. 2017).

The encoder reads the source tokens (B, S) into a memory (B, S, D); the decoder reads the target prefix (B, T) with
a causal mask, attends to the memory, and predicts the next target token at every position: logits (B, T, V).

Parameter counts against the paper's Table 3 (``transformer_parameter_count``, shared vocabulary of 37000):
base 63.1M (paper 65M) and big 214.2M (paper 213M). The paper gives no breakdown. Our counts include everything the
paper describes: one 37000 x D matrix shared by both embeddings and the pre-softmax linear (unshared, base would be
101M), no parameters in the sinusoidal positions, biases in every linear map, two LayerNorm vectors per sub-layer.
The rest of the gap is most likely the exact vocabulary ("about 37000 tokens") and rounding in the paper.

The models of the book share one shape. Layer stacks are ``layers``; this model has two and names them with a prefix
per stack, ``encoder_layers`` and ``decoder_layers``. ``forward(src, tgt)`` returns one tensor, the logits;
``hidden_states(src, tgt)`` the decoder's last output (B, T, D), which the output layer reads;
``attention_weights(src, tgt)`` every attention map as an ``AttentionWeights``. Token ids are checked by
``llmbook.config.check_token_ids``; Hugging Face weights load through ``load_hf_marian_state_dict(model,
hf_state_dict)``, which returns the Hugging Face keys it leaves unused, as the loaders of GPT and BERT do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from llmbook.attention import padding_mask
from llmbook.config import (
    check_attends_somewhere,
    check_choice,
    check_model_config,
    check_pad_id,
    check_token_ids,
)
from llmbook.decoding import NextTokenLogits
from llmbook.layers import DecoderLayer, EncoderLayer
from llmbook.positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding

POSITIONS = ("sinusoidal", "learned", "none")  # "none": no position information at all (an ablation)


@dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of the encoder-decoder Transformer, named as in the paper.

    ``n_layers`` is N, the depth of the encoder and of the decoder each. ``tie_embeddings`` is the paper's choice: one
    matrix for the source embedding, the target embedding and the pre-softmax linear (it needs one shared
    vocabulary, src_vocab_size == tgt_vocab_size). Embeddings are always multiplied by sqrt(d_model), as in the paper.
    ``norm_first=False`` is the paper's post-LN; True is pre-LN and adds a final LayerNorm to each stack.
    Introduced in Chapter 1.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    context_length: int = 512
    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1
    positions: str = "sinusoidal"
    norm_first: bool = False
    activation: str = "relu"
    attn_impl: str = "fused"
    tie_embeddings: bool = True
    pad_id: int = 0
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_model_config(
            self, ("src_vocab_size", "tgt_vocab_size", "context_length", "d_model", "n_heads", "n_layers", "d_ff"),
            ("norm_first", "tie_embeddings"),
        )
        check_choice(self, "positions", POSITIONS)
        if self.positions == "sinusoidal" and self.d_model % 2 != 0:
            raise ValueError(f"d_model must be even for sinusoidal positions, got {self.d_model}")
        if self.tie_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                "tie_embeddings=True shares one matrix between source and target, so src_vocab_size "
                f"({self.src_vocab_size}) must equal tgt_vocab_size ({self.tgt_vocab_size}); "
                "set tie_embeddings=False for separate vocabularies"
            )
        # pad_id is a token of both vocabularies: source padding is masked, target padding ignored by the loss.
        check_pad_id(self, min(self.src_vocab_size, self.tgt_vocab_size), "min(src_vocab_size, tgt_vocab_size)")

PRESETS: dict[str, TransformerConfig] = {
    # The paper's Table 3. EN-DE used a shared byte-pair vocabulary of about 37000 tokens; the big model's
    # dropout 0.3 is its EN-DE value (EN-FR used 0.1). The paper sets no maximum length; 512 is ours.
    "base": TransformerConfig(src_vocab_size=37000, tgt_vocab_size=37000),
    "big": TransformerConfig(
        src_vocab_size=37000, tgt_vocab_size=37000, d_model=1024, n_heads=16, d_ff=4096, dropout=0.3
    ),
    # CPU sizes: "small" for the chapter (replace the vocabulary sizes by the tokenizer's), "tiny" for tests.
    "small": TransformerConfig(
        src_vocab_size=1000, tgt_vocab_size=1000, context_length=64, d_model=128, n_heads=4, n_layers=3, d_ff=512
    ),
    "tiny": TransformerConfig(
        src_vocab_size=64, tgt_vocab_size=64, context_length=32, d_model=32, n_heads=4, n_layers=2, d_ff=64,
        dropout=0.0,
    ),
}


@dataclass
class AttentionWeights:
    """All attention weights of one forward pass, one tensor per layer. Introduced in Chapter 1."""

    encoder: list[Tensor] = field(default_factory=list)  # (B, H, S, S) each
    decoder_self: list[Tensor] = field(default_factory=list)  # (B, H, T, T) each
    cross: list[Tensor] = field(default_factory=list)  # (B, H, T, S) each


def _make_positions(config: TransformerConfig) -> nn.Module | None:
    if config.positions == "sinusoidal":
        return SinusoidalPositionalEncoding(config.context_length, config.d_model)
    if config.positions == "learned":
        return LearnedPositionalEmbedding(config.context_length, config.d_model)
    return None


class Transformer(nn.Module):
    """Encoder-decoder Transformer: ``model(src, tgt)`` -> next-token logits (B, T, V) for every target position.

    Padding masks come from ``config.pad_id`` on the source. The decoder uses only the causal mask: targets are
    right-padded, so no real position can see a later pad, and losses at pad positions are ignored.
    Introduced in Chapter 1.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        D = config.d_model
        layer_args: dict[str, Any] = dict(
            d_model=D, n_heads=config.n_heads, d_ff=config.d_ff, dropout=config.dropout, activation=config.activation,
            norm_first=config.norm_first, attn_impl=config.attn_impl, layer_norm_eps=config.layer_norm_eps,
        )
        self.src_tok_emb = nn.Embedding(config.src_vocab_size, D)
        self.tgt_tok_emb = self.src_tok_emb if config.tie_embeddings else nn.Embedding(config.tgt_vocab_size, D)
        self.src_pos = _make_positions(config)
        self.tgt_pos = _make_positions(config)
        self.dropout = nn.Dropout(config.dropout)
        self.encoder_layers = nn.ModuleList([EncoderLayer(**layer_args) for _ in range(config.n_layers)])
        self.decoder_layers = nn.ModuleList([DecoderLayer(**layer_args) for _ in range(config.n_layers)])
        # Pre-LN leaves the residual stream un-normalised, so each stack ends with a LayerNorm.
        self.encoder_norm = nn.LayerNorm(D, eps=config.layer_norm_eps) if config.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(D, eps=config.layer_norm_eps) if config.norm_first else nn.Identity()
        self.lm_head = nn.Linear(D, config.tgt_vocab_size, bias=False)  # the pre-softmax linear
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.tgt_tok_emb.weight

    def _init_weights(self) -> None:
        # Xavier-uniform linear maps; token embeddings N(0, 1/D), so that the sqrt(D)-scaled input embeddings have
        # unit variance and tied output logits start with unit variance (initial loss close to ln V).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, LearnedPositionalEmbedding):
                nn.init.normal_(module.pos_emb.weight, std=0.02)
        for emb in (self.src_tok_emb, self.tgt_tok_emb):
            nn.init.normal_(emb.weight, std=self.config.d_model**-0.5)

    def _check_tokens(self, tokens: Tensor, name: str, vocab_size: int) -> None:
        check_token_ids(tokens, vocab_size, name=name, context_length=self.config.context_length,
                        vocab_name=f"{name}_vocab_size")

    def _check_src_mask(self, src_mask: Tensor, batch_size: int) -> None:
        if not isinstance(src_mask, Tensor) or src_mask.dtype != torch.bool or src_mask.dim() != 4:
            raise ValueError("src_mask must be a boolean (B, 1, 1, S) tensor, True on real tokens (see source_mask)")
        if src_mask.shape[0] not in (1, batch_size):
            raise ValueError(f"src_mask has batch size {src_mask.shape[0]}, but the batch has {batch_size} rows")
        check_attends_somewhere(src_mask, "src_mask", "a True (a real source token)")

    def _embed(self, tokens: Tensor, tok_emb: nn.Embedding, pos: nn.Module | None) -> Tensor:
        x = tok_emb(tokens) * math.sqrt(self.config.d_model)  # (B, L, D)
        if pos is not None:
            x = x + pos(torch.arange(tokens.shape[1], device=tokens.device))  # + (L, D)
        return self.dropout(x)

    def _encode(self, src: Tensor, src_mask: Tensor, need_weights: bool) -> tuple[Tensor, list[Tensor]]:
        self._check_tokens(src, "src", self.config.src_vocab_size)
        x = self._embed(src, self.src_tok_emb, self.src_pos)  # (B, S, D)
        weights = []
        for layer in self.encoder_layers:
            x, w = layer(x, mask=src_mask, need_weights=need_weights)
            weights.append(w)
        return self.encoder_norm(x), weights

    def _decode(
        self, tgt: Tensor, memory: Tensor, src_mask: Tensor, need_weights: bool
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """The decoder's last output (B, T, D), before the output layer, and the weights if asked."""
        self._check_tokens(tgt, "tgt", self.config.tgt_vocab_size)
        if memory.dim() != 3 or memory.shape[0] != tgt.shape[0] or memory.shape[2] != self.config.d_model:
            raise ValueError(
                f"memory must have shape (B={tgt.shape[0]}, S, D={self.config.d_model}), got {tuple(memory.shape)}"
            )
        x = self._embed(tgt, self.tgt_tok_emb, self.tgt_pos)  # (B, T, D)
        self_weights, cross_weights = [], []
        for layer in self.decoder_layers:
            # Target position t attends to targets 0..t (is_causal) and to every real source token (src_mask).
            x, self_w, cross_w = layer(x, memory, memory_mask=src_mask, need_weights=need_weights, is_causal=True)
            self_weights.append(self_w)
            cross_weights.append(cross_w)
        return self.decoder_norm(x), self_weights, cross_weights  # (B, T, D)

    def _run(self, src: Tensor, tgt: Tensor, need_weights: bool) -> tuple[Tensor, AttentionWeights]:
        """Encode src, decode tgt: the decoder's last output (B, T, D) and the weights if asked."""
        if src.dim() == 2 and tgt.dim() == 2 and src.shape[0] != tgt.shape[0]:
            raise ValueError(f"src and tgt must have the same batch size, got {src.shape[0]} and {tgt.shape[0]}")
        src_mask = self.source_mask(src)
        memory, enc_w = self._encode(src, src_mask, need_weights)
        hidden, self_w, cross_w = self._decode(tgt, memory, src_mask, need_weights)
        return hidden, AttentionWeights(enc_w, self_w, cross_w)

    def source_mask(self, src: Tensor) -> Tensor:
        """(B, 1, 1, S) padding mask of the source, True on real tokens; rejects all-padding rows."""
        self._check_tokens(src, "src", self.config.src_vocab_size)
        mask = padding_mask(src, self.config.pad_id)
        check_attends_somewhere(mask, "src", f"a token other than pad_id={self.config.pad_id}")
        return mask

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """src (B, S) -> memory (B, S, D). ``src_mask`` defaults to ``self.source_mask(src)``."""
        if src_mask is None:
            src_mask = self.source_mask(src)
        else:
            self._check_src_mask(src_mask, src.shape[0])
        return self._encode(src, src_mask, need_weights=False)[0]

    def decode(self, tgt: Tensor, memory: Tensor, src_mask: Tensor) -> Tensor:
        """tgt (B, T) and memory (B, S, D) -> logits (B, T, V); src_mask (B, 1, 1, S) hides source padding."""
        self._check_src_mask(src_mask, tgt.shape[0])
        return self.lm_head(self._decode(tgt, memory, src_mask, need_weights=False)[0])

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """src (B, S), tgt (B, T) -> logits (B, T, V). Logits at position t predict target token t + 1.

        tgt starts with the start token.
        """
        return self.lm_head(self._run(src, tgt, need_weights=False)[0])  # (B, T, V)

    def hidden_states(self, src: Tensor, tgt: Tensor) -> Tensor:
        """src (B, S), tgt (B, T) -> the decoder's last output (B, T, D) (after its final LayerNorm, if any)."""
        return self._run(src, tgt, need_weights=False)[0]

    def encoder_layer_states(self, src: Tensor) -> list[Tensor]:
        """src (B, S) -> [the encoder's input (embedding + positions), each encoder layer's output], each (B, S, D).

        In post-LN these are the residual stream itself; in pre-LN the last one is before the final LayerNorm.
        """
        src_mask = self.source_mask(src)
        x = self._embed(src, self.src_tok_emb, self.src_pos)  # (B, S, D)
        states = [x]
        for layer in self.encoder_layers:
            x = layer(x, mask=src_mask)[0]
            states.append(x)
        return states

    def attention_weights(self, src: Tensor, tgt: Tensor) -> AttentionWeights:
        """src (B, S), tgt (B, T) -> every attention map of the forward pass, one (B, H, ., .) tensor per layer.

        The weights are computed by the manual attention path (the fused kernel does not return them).
        """
        return self._run(src, tgt, need_weights=True)[1]


def next_token_logits_fn(model: Transformer, src: Tensor) -> NextTokenLogits:
    """Encode ``src`` (B0, S) or (S,) once; return a function from target prefixes (B, t) to next-token logits (B, V).

    B must equal B0, or B0 must be 1 (the memory is expanded, e.g. to the beams of a beam search). Runs without
    gradients, and only in eval mode (dropout would make decoding random). Introduced in Chapter 1.
    """
    if model.training:
        raise ValueError("decoding needs the model in eval mode: call model.eval() first")
    src = src[None, :] if src.dim() == 1 else src
    with torch.no_grad():
        src_mask = model.source_mask(src)  # (B0, 1, 1, S)
        memory = model.encode(src, src_mask)  # (B0, S, D)

    def next_token_logits(prefix: Tensor) -> Tensor:
        B = prefix.shape[0]
        if B != memory.shape[0] and memory.shape[0] != 1:
            raise ValueError(f"prefix batch {B} must equal the source batch {memory.shape[0]} (or the source be 1)")
        with torch.no_grad():
            logits = model.decode(prefix, memory.expand(B, -1, -1), src_mask.expand(B, -1, -1, -1))
        return logits[:, -1, :]  # (B, V)

    return next_token_logits


def transformer_parameter_count(config: TransformerConfig) -> int:
    """Closed-form parameter count of ``Transformer(config)``. Introduced in Chapter 1."""
    D, F_, N = config.d_model, config.d_ff, config.n_layers
    attention = 4 * (D * D + D)  # W_q, W_k, W_v, W_o with biases
    feed_forward = D * F_ + F_ + F_ * D + D  # W_1, W_2 with biases
    layer_norm = 2 * D  # gain and bias
    encoder_layer = attention + feed_forward + 2 * layer_norm
    decoder_layer = 2 * attention + feed_forward + 3 * layer_norm
    if config.tie_embeddings:
        embeddings = config.src_vocab_size * D  # one matrix: source, target and pre-softmax linear
    else:
        embeddings = (config.src_vocab_size + 2 * config.tgt_vocab_size) * D
    positions = 2 * config.context_length * D if config.positions == "learned" else 0
    final_norms = 2 * layer_norm if config.norm_first else 0
    return N * (encoder_layer + decoder_layer) + embeddings + positions + final_norms


# Loading Hugging Face MarianMT weights.
def marian_key_map(n_layers: int) -> dict[str, str]:
    """Our parameter names -> Hugging Face ``MarianMTModel`` names, for N encoder and N decoder layers.

    Introduced in Chapter 1.
    """
    def attention(ours: str, theirs: str) -> dict[str, str]:
        projections = (("W_q", "q_proj"), ("W_k", "k_proj"), ("W_v", "v_proj"), ("W_o", "out_proj"))
        return {f"{ours}.{o}": f"{theirs}.{t}" for o, t in projections}

    feed_forward = {"ff.W_1": "fc1", "ff.W_2": "fc2"}
    encoder_layer = {**attention("self_attn", "self_attn"), "norm1": "self_attn_layer_norm",
                     **feed_forward, "norm2": "final_layer_norm"}
    decoder_layer = {**attention("self_attn", "self_attn"), "norm1": "self_attn_layer_norm",
                     **attention("cross_attn", "encoder_attn"), "norm2": "encoder_attn_layer_norm",
                     **feed_forward, "norm3": "final_layer_norm"}
    keys = {
        "src_tok_emb.weight": "model.encoder.embed_tokens.weight",
        "tgt_tok_emb.weight": "model.decoder.embed_tokens.weight",
        "lm_head.weight": "lm_head.weight",
    }
    for stack, layer in (("encoder", encoder_layer), ("decoder", decoder_layer)):
        for i in range(n_layers):
            for ours, theirs in layer.items():
                for p in ("weight", "bias"):
                    keys[f"{stack}_layers.{i}.{ours}.{p}"] = f"model.{stack}.layers.{i}.{theirs}.{p}"
    return keys


def _reorder_features(key: str, tensor: Tensor, order: Tensor) -> Tensor:
    """Reorder the D features of the residual stream in one tensor, by what the tensor does to that stream."""
    if key.endswith(("W_o.weight", "W_2.weight")):  # writes into the stream: rows are features
        return tensor[order, :]
    if key.endswith(("W_o.bias", "W_2.bias")) or ".norm" in key:  # per-feature vectors
        return tensor[order]
    if key.endswith(("W_q.weight", "W_k.weight", "W_v.weight", "W_1.weight", "tok_emb.weight", "lm_head.weight")):
        return tensor[:, order]  # reads the stream (or is the embedding / output matrix): columns are features
    return tensor  # biases of W_q, W_k, W_v, W_1 live in head or d_ff space


# Marian keys that hold no weight of ours: a copy of the shared embedding, the zero logits bias, and Marian's
# sinusoidal tables (we compute ours and reorder the weights to match them, see load_hf_marian_state_dict).
_MARIAN_UNUSED = ("model.shared.weight", "final_logits_bias",
                  "model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight")


def load_hf_marian_state_dict(model: Transformer, hf_state_dict: dict[str, Tensor]) -> list[str]:
    """Copy a Hugging Face ``MarianMTModel`` state dict into ``model``; return the Marian keys left unused.

    The model must be post-LN with sinusoidal positions (embeddings are scaled by sqrt(D), as ours). Marian lays its
    sinusoidal table as [sin of all frequencies | cos of all frequencies]; the paper (and ``sinusoidal_encoding``)
    interleaves sin and cos. The two tables hold the same D features in a different order, and every operation on
    the residual stream (sums, LayerNorm, linear maps) treats features alike, so reordering the residual-stream side
    of every weight makes our model compute exactly Marian's function with our table. Raises a ValueError for an
    unknown, missing or misshapen weight. Introduced in Chapter 1.
    """
    if not isinstance(model, Transformer):
        raise TypeError(f"model must be a Transformer, got {type(model).__name__}")
    config = model.config
    if config.positions != "sinusoidal" or config.norm_first:
        raise ValueError("Marian weights need positions='sinusoidal' and norm_first=False")
    D = config.d_model
    # Marian feature i is sin(angle_i), feature D/2 + i is cos(angle_i); ours are 2i and 2i + 1.
    order = torch.stack([torch.arange(D // 2), torch.arange(D // 2) + D // 2], dim=1).flatten()  # (D,)
    key_map = marian_key_map(config.n_layers)
    unknown = set(hf_state_dict) - set(key_map.values()) - set(_MARIAN_UNUSED)
    if unknown:
        raise ValueError(f"Marian weights not in the key map (different depth or architecture?): {sorted(unknown)}")
    missing = sorted(theirs for theirs in key_map.values() if theirs not in hf_state_dict)
    if missing:
        raise ValueError(f"hf_state_dict lacks weights for: {missing}")
    bias = hf_state_dict.get("final_logits_bias")
    if bias is not None and bool(bias.any()):
        raise ValueError("final_logits_bias is not zero; our pre-softmax linear has no bias")
    if config.tie_embeddings:
        tied = [hf_state_dict[key_map[k]] for k in ("src_tok_emb.weight", "tgt_tok_emb.weight", "lm_head.weight")]
        if not all(torch.equal(tied[0], t) for t in tied[1:]):
            raise ValueError("tie_embeddings=True but the Marian embeddings and lm_head differ")
    ours = model.state_dict()
    for name, theirs in key_map.items():
        if tuple(hf_state_dict[theirs].shape) != tuple(ours[name].shape):
            raise ValueError(
                f"{theirs} has shape {tuple(hf_state_dict[theirs].shape)}, but {name} needs {tuple(ours[name].shape)}"
            )
    state = {ours: _reorder_features(ours, hf_state_dict[theirs], order) for ours, theirs in key_map.items()}
    model.load_state_dict(state, strict=True)
    return sorted(k for k in _MARIAN_UNUSED if k in hf_state_dict)
