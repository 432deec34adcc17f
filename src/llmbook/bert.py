"""BERT (Devlin et al., 2018): a post-LN Transformer encoder trained to fill in masked tokens.

The input is the sum of three learned embeddings (token, segment, position), normalised by a LayerNorm; the body is a
stack of the encoder layers of Chapter 1 with no causal mask, so every token sees both its left and its right
context. Heads sit on top: the masked-LM head (tied to the token embeddings), the pooler on [CLS] and a classifier.
Hugging Face BERT checkpoints load through ``load_hf_bert_state_dict``, the one key map for this model family.

The models of the book share one shape: the layer stack is ``layers``; ``forward(tokens, segments, attention_mask)``
returns one tensor (the last hidden states (B, T, D) for the ``Bert`` body, logits for the models with a head);
``hidden_states(...)`` the last layer's output (B, T, D) and ``attention_weights(...)`` a list of n_layers weights
(B, H, T, T), both with the inputs of ``forward``. Token and segment ids are checked by
``llmbook.config.check_token_ids``, and a row made only of padding is an error: it has nothing to attend to.
``load_hf_bert_state_dict(model, hf_state_dict)`` returns the Hugging Face keys it leaves unused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmbook.attention import padding_mask
from llmbook.config import check_attends_somewhere, check_model_config, check_pad_id, check_token_ids
from llmbook.layers import ACTIVATIONS, EncoderLayer
from llmbook.positional import LearnedPositionalEmbedding


@dataclass(frozen=True)
class BertConfig:
    """Hyperparameters of a BERT model, with the paper's names. Introduced in Chapter 3."""

    vocab_size: int = 30522
    context_length: int = 512  # maximum number of positions
    type_vocab_size: int = 2  # number of segments (sentence A / sentence B)
    d_model: int = 768
    n_heads: int = 12
    n_layers: int = 12
    d_ff: int = 3072
    dropout: float = 0.1
    activation: str = "gelu"  # the exact, erf-based GELU
    layer_norm_eps: float = 1e-12
    attn_impl: str = "fused"
    pad_id: int = 0
    # BERT is post-LN. norm_first=True moves each LayerNorm to the input of its sub-layer and adds one after the
    # last layer (GPT-2's arrangement, which helps GPT train at tiny scale; Chapter 3 reports it did not help BERT).
    norm_first: bool = False

    def __post_init__(self) -> None:
        check_model_config(
            self, ("vocab_size", "context_length", "type_vocab_size", "d_model", "n_heads", "n_layers", "d_ff"),
            ("norm_first",),
        )
        check_pad_id(self, self.vocab_size)


PRESETS: dict[str, BertConfig] = {
    # The paper's two sizes (Devlin et al., 2018, section 3), uncased WordPiece vocabulary.
    "bert-base": BertConfig(),
    "bert-large": BertConfig(d_model=1024, n_heads=16, n_layers=24, d_ff=4096),
    # all-MiniLM-L6-v2 (Wang et al., 2020; Reimers & Gurevych), as in its shipped config.json.
    "minilm-l6": BertConfig(d_model=384, n_heads=12, n_layers=6, d_ff=1536),
    # BERT-Tiny of Turc et al. (2019) with 128 positions: trains on a CPU with the same WordPiece vocabulary.
    "small": BertConfig(context_length=128, d_model=128, n_heads=2, n_layers=2, d_ff=512),
    # For tests.
    "tiny": BertConfig(vocab_size=100, context_length=16, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0),
}


def bert_config_from_hf(hf_config: dict) -> BertConfig:
    """Translate a Hugging Face BERT ``config.json`` (as a dict) to a BertConfig. Introduced in Chapter 3."""
    if hf_config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"only absolute positions are supported, got {hf_config['position_embedding_type']!r}")
    activations = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
    if hf_config.get("hidden_act", "gelu") not in activations:
        raise ValueError(f"hidden_act must be one of {sorted(activations)}, got {hf_config['hidden_act']!r}")
    return BertConfig(
        vocab_size=hf_config["vocab_size"],
        context_length=hf_config["max_position_embeddings"],
        type_vocab_size=hf_config["type_vocab_size"],
        d_model=hf_config["hidden_size"],
        n_heads=hf_config["num_attention_heads"],
        n_layers=hf_config["num_hidden_layers"],
        d_ff=hf_config["intermediate_size"],
        dropout=hf_config.get("hidden_dropout_prob", 0.1),
        activation=activations[hf_config.get("hidden_act", "gelu")],
        layer_norm_eps=hf_config.get("layer_norm_eps", 1e-12),
        pad_id=hf_config.get("pad_token_id") or 0,
    )


def bert_parameter_count(config: BertConfig, pooler: bool = False, mlm_head: bool = False, n_classes: int = 0) -> int:
    """Closed-form number of parameters of the encoder, plus the heads asked for.

    The MLM decoder is tied to the token embeddings, so the MLM head adds only its transform and a bias of size V.
    ``n_classes`` counts a linear classifier on the pooled [CLS] (the NSP head is one with ``n_classes=2``).
    Encoder + pooler gives 109.5M for bert-base and 335.1M for bert-large, the paper's "110M" and "340M".
    Introduced in Chapter 3.
    """
    if n_classes and not pooler:
        raise ValueError("n_classes > 0 needs pooler=True: the classifier reads the pooled [CLS] vector")
    V, D, L, d_ff = config.vocab_size, config.d_model, config.n_layers, config.d_ff
    embeddings = (V + config.context_length + config.type_vocab_size) * D + 2 * D  # three tables + LayerNorm
    attention = 4 * (D * D + D)  # W_q, W_k, W_v, W_o with biases
    feed_forward = (D * d_ff + d_ff) + (d_ff * D + D)
    layer = attention + feed_forward + 2 * 2 * D  # + two LayerNorms
    total = embeddings + L * layer + (2 * D if config.norm_first else 0)  # the final LayerNorm of pre-LN
    if pooler:
        total += D * D + D
    if mlm_head:
        total += (D * D + D) + 2 * D + V  # dense, LayerNorm, output bias (decoder weight is tok_emb)
    return total + n_classes * (D + 1)


class Bert(nn.Module):
    """The BERT encoder: token + segment + position embeddings, LayerNorm, then n_layers post-LN encoder layers.

    ``forward`` returns the hidden states of the last layer (B, T, D); ``attention_weights`` those of every layer.
    Introduced in Chapter 3.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        D = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, D, padding_idx=config.pad_id)
        self.seg_emb = nn.Embedding(config.type_vocab_size, D)
        self.pos_emb = LearnedPositionalEmbedding(config.context_length, D)
        self.emb_norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(
                D, config.n_heads, config.d_ff, config.dropout, config.activation,
                norm_first=config.norm_first, attn_impl=config.attn_impl, layer_norm_eps=config.layer_norm_eps,
            )
            for _ in range(config.n_layers)
        )
        self.final_norm = nn.LayerNorm(D, eps=config.layer_norm_eps) if config.norm_first else nn.Identity()
        self.apply(_init_bert_weights)

    def _embed(self, tokens: Tensor, segments: Tensor | None, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Checked inputs -> the embeddings (B, T, D) after LayerNorm and dropout, and the key mask (B, 1, 1, T)."""
        c = self.config
        check_token_ids(tokens, c.vocab_size, context_length=c.context_length)
        if segments is None:
            segments = torch.zeros_like(tokens)  # every token in segment 0
        elif isinstance(segments, Tensor) and segments.shape != tokens.shape:
            raise ValueError(f"segments must have shape {tuple(tokens.shape)} like tokens, got {tuple(segments.shape)}")
        check_token_ids(segments, c.type_vocab_size, name="segments", vocab_name="type_vocab_size")
        if attention_mask is None:
            mask = padding_mask(tokens, c.pad_id)  # (B, 1, 1, T), True = may attend
            check_attends_somewhere(mask, "tokens", f"a token other than pad_id={c.pad_id}")
        else:
            if not isinstance(attention_mask, Tensor) or attention_mask.shape != tokens.shape:
                shape = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else attention_mask
                raise ValueError(f"attention_mask must have the shape of tokens {tuple(tokens.shape)}, got {shape}")
            mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
            check_attends_somewhere(mask, "attention_mask", "a 1 (a real token)")
        positions = torch.arange(tokens.shape[1], device=tokens.device)  # (T,)
        x = self.tok_emb(tokens) + self.seg_emb(segments) + self.pos_emb(positions)  # (B, T, D)
        return self.dropout(self.emb_norm(x)), mask

    def hidden_states(
        self, tokens: Tensor, segments: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> Tensor:
        """tokens, segments: (B, T) ids; attention_mask: (B, T), 1 = real token, 0 = padding -> (B, T, D).

        Without ``attention_mask`` the padding is read from ``tokens == pad_id``; without ``segments`` every token is
        in segment 0. Every row needs at least one real token.
        """
        x, mask = self._embed(tokens, segments, attention_mask)
        for layer in self.layers:
            x, _ = layer(x, mask=mask)
        return self.final_norm(x)

    def forward(
        self, tokens: Tensor, segments: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> Tensor:
        """The last hidden states (B, T, D); inputs as ``hidden_states``."""
        return self.hidden_states(tokens, segments, attention_mask)

    def attention_weights(
        self, tokens: Tensor, segments: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> list[Tensor]:
        """n_layers attention weights (B, H, T, T), rows are queries (manual attention path); inputs as forward."""
        x, mask = self._embed(tokens, segments, attention_mask)
        weights = []
        for layer in self.layers:
            x, w = layer(x, mask=mask, need_weights=True)
            weights.append(w)
        return weights


class BertMLMHead(nn.Module):
    """Masked-LM head: dense + GELU + LayerNorm, then logits against the (tied) token embeddings plus a bias.

    Introduced in Chapter 3.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.act = ACTIVATIONS[config.activation]
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: Tensor, tok_emb_weight: Tensor) -> Tensor:
        """hidden: (B, T, D), tok_emb_weight: (V, D) -> logits (B, T, V)."""
        h = self.norm(self.act(self.dense(hidden)))  # (B, T, D)
        return F.linear(h, tok_emb_weight, self.bias)  # (B, T, V)


class BertPooler(nn.Module):
    """The pooler: dense + tanh on the hidden state of the first token, [CLS]. Introduced in Chapter 3."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden: (B, T, D) -> pooled (B, D)."""
        return torch.tanh(self.dense(hidden[:, 0]))


class _BertWithHead(nn.Module):
    """What the models with a head on a ``Bert`` body share: the body's hidden states and attention weights."""

    bert: Bert

    def hidden_states(
        self, tokens: Tensor, segments: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> Tensor:
        """The body's last hidden states (B, T, D), which the head reads; inputs as ``forward``."""
        return self.bert.hidden_states(tokens, segments, attention_mask)

    def attention_weights(
        self, tokens: Tensor, segments: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> list[Tensor]:
        """The body's n_layers attention weights (B, H, T, T); inputs as ``forward``."""
        return self.bert.attention_weights(tokens, segments, attention_mask)


class BertForMaskedLM(_BertWithHead):
    """BERT with the masked-LM head; the output projection is the token embedding matrix. Introduced in Chapter 3."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = Bert(config)
        self.mlm_head = BertMLMHead(config)
        self.mlm_head.apply(_init_bert_weights)

    def forward(
        self, tokens: Tensor, segments: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Masked-LM logits (B, T, V); inputs as ``Bert.hidden_states``."""
        hidden = self.bert.hidden_states(tokens, segments, attention_mask)  # (B, T, D)
        return self.mlm_head(hidden, self.bert.tok_emb.weight)  # (B, T, V)


POOLINGS = ("cls", "mean")


class BertClassifier(_BertWithHead):
    """BERT for sequence classification: a sentence vector -> dropout -> linear.

    ``pooling="cls"`` reads the paper's pooler (dense + tanh) on the [CLS] vector, which only next-sentence
    prediction trains in pre-training; ``pooling="mean"`` averages the last hidden states over the tokens that are not
    padding, vectors the masked-LM loss trains at every position (Sentence-BERT's choice). Introduced in Chapter 3.
    """

    def __init__(self, config: BertConfig, n_classes: int, pooling: str = "cls") -> None:
        super().__init__()
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
            raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.config = config
        self.pooling = pooling
        self.bert = Bert(config)
        self.pooler = BertPooler(config.d_model) if pooling == "cls" else None
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.d_model, n_classes)
        if self.pooler is not None:
            self.pooler.apply(_init_bert_weights)
        self.classifier.apply(_init_bert_weights)

    def forward(
        self, tokens: Tensor, segments: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Class logits (B, n_classes); inputs as ``Bert.hidden_states``."""
        hidden = self.bert.hidden_states(tokens, segments, attention_mask)  # (B, T, D)
        if self.pooler is not None:
            return self.classifier(self.dropout(self.pooler(hidden)))  # (B, n_classes)
        real = (tokens != self.config.pad_id if attention_mask is None else attention_mask.bool()).unsqueeze(-1)
        pooled = (hidden * real).sum(dim=1) / real.sum(dim=1).clamp(min=1)  # (B, D): mean over the real tokens
        return self.classifier(self.dropout(pooled))  # (B, n_classes)


def _init_bert_weights(module: nn.Module) -> None:
    # BERT's initialisation: N(0, 0.02) weights, zero biases, LayerNorm at identity, the padding row at zero.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------------------------------
# Loading Hugging Face weights: the one key map for BERT.

_HF_EMBEDDINGS = {
    "embeddings.word_embeddings.weight": "tok_emb.weight",
    "embeddings.token_type_embeddings.weight": "seg_emb.weight",
    "embeddings.position_embeddings.weight": "pos_emb.pos_emb.weight",
    "embeddings.LayerNorm.weight": "emb_norm.weight",
    "embeddings.LayerNorm.bias": "emb_norm.bias",
}
_HF_LAYER = {  # inside encoder.layer.N.
    "attention.self.query": "self_attn.W_q",
    "attention.self.key": "self_attn.W_k",
    "attention.self.value": "self_attn.W_v",
    "attention.output.dense": "self_attn.W_o",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "ff.W_1",
    "output.dense": "ff.W_2",
    "output.LayerNorm": "norm2",
}
_HF_HEADS = {  # names at the top of the model (outside the encoder)
    "pooler.dense": "pooler.dense",
    "cls.predictions.transform.dense": "mlm_head.dense",
    "cls.predictions.transform.LayerNorm": "mlm_head.norm",
    "cls.predictions.bias": "mlm_head.bias",
    "cls.seq_relationship": "nsp_head",  # next-sentence prediction; no llmbook model has it
    "classifier": "classifier",
}
# Hugging Face stores the tied MLM decoder under its own names too; they must equal the tensors they alias.
_HF_ALIASES = {
    "cls.predictions.decoder.weight": "embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
}


def _hf_to_ours(hf_name: str, body_prefix: str) -> str | None:
    """Our parameter name for one HF name (with any ``bert.`` prefix removed); None for buffers HF keeps."""
    if hf_name in ("embeddings.position_ids", "embeddings.token_type_ids"):
        return None
    if hf_name in _HF_EMBEDDINGS:
        return body_prefix + _HF_EMBEDDINGS[hf_name]
    if hf_name.startswith("encoder.layer."):
        n, rest = hf_name[len("encoder.layer."):].split(".", 1)
        module, param = rest.rsplit(".", 1)
        if module in _HF_LAYER:
            return f"{body_prefix}layers.{n}.{_HF_LAYER[module]}.{param}"
    module, _, param = hf_name.rpartition(".")
    if module in _HF_HEADS:
        return f"{_HF_HEADS[module]}.{param}"
    if hf_name in _HF_HEADS:  # cls.predictions.bias
        return _HF_HEADS[hf_name]
    raise ValueError(f"hf_state_dict has a key the BERT key map does not know: {hf_name!r}")


def load_hf_bert_state_dict(model: nn.Module, hf_state_dict: dict[str, Tensor]) -> list[str]:
    """Copy a Hugging Face BERT state dict into ``model`` (Bert, BertForMaskedLM or BertClassifier).

    Works for BertModel dicts (``embeddings.*``) and for BertFor* dicts (``bert.embeddings.*``, ``cls.*``). Every
    parameter of ``model`` must be found; returns the HF keys of heads that ``model`` has no place for (e.g. the
    pooler when loading into a plain Bert). Raises a ValueError for an unknown, missing or misshapen weight.
    Introduced in Chapter 3.
    """
    if not isinstance(model, (Bert, BertForMaskedLM, BertClassifier)):
        raise TypeError(f"model must be a Bert, BertForMaskedLM or BertClassifier, got {type(model).__name__}")
    if model.config.norm_first:
        raise ValueError("Hugging Face BERT weights need norm_first=False (BERT is post-LN)")
    body_prefix = "" if isinstance(model, Bert) else "bert."
    hf = {(k[len("bert."):] if k.startswith("bert.") else k): v for k, v in hf_state_dict.items()}
    for alias, source in _HF_ALIASES.items():
        if alias in hf and source in hf and not torch.equal(hf[alias], hf[source]):
            raise ValueError(f"{alias} differs from {source}: only a tied MLM decoder is supported")
        hf.pop(alias, None)

    ours = model.state_dict()
    new_state, unused = {}, []
    for hf_name, tensor in hf.items():
        name = _hf_to_ours(hf_name, body_prefix)
        if name is None:
            continue
        if name not in ours:
            if hf_name.startswith(("embeddings.", "encoder.")):  # a body weight must have its place
                raise ValueError(f"{hf_name} maps to {name}, which this model does not have (different depth?)")
            unused.append(hf_name)  # a head this model does not have
            continue
        if tuple(tensor.shape) != tuple(ours[name].shape):
            raise ValueError(f"{hf_name} has shape {tuple(tensor.shape)}, but {name} needs {tuple(ours[name].shape)}")
        new_state[name] = tensor
    missing = sorted(set(ours) - set(new_state))
    if missing:
        raise ValueError(f"hf_state_dict lacks weights for: {missing}")
    model.load_state_dict(new_state, strict=True)
    return sorted(unused)

