"""The book's GPT as a GGUF file, the format llama.cpp and Ollama run, and an Ollama Modelfile for it.

GGUF (llama.cpp's "GPT-Generated Unified Format") is one file: a header of typed key-value metadata (the
architecture and its sizes, the tokenizer's tokens and merges, the file's number format), then the tensors, each with
its name, shape and number type. llama.cpp reads everything it needs from it; Ollama runs llama.cpp on such a file.
The file is written and read with ``gguf``, llama.cpp's own Python package (its converters use it).

The book's GPT-2 (``gpt2_config``: pre-LN blocks, a final LayerNorm, learned positions, GELU in its tanh form, biases
everywhere) is llama.cpp's architecture "gpt2", whose names and layout are those of llama.cpp's ``src/models/gpt2.cpp``:

    token_embd, position_embd                the embeddings (output.weight too if the head is not tied)
    blk.i.attn_norm, blk.i.attn_qkv          LayerNorm 1; W_q, W_k, W_v stacked into one (3 D, D) matrix
    blk.i.attn_output                        W_o
    blk.i.ffn_norm, blk.i.ffn_up, ffn_down   LayerNorm 2; W_1 and W_2
    output_norm                              the final LayerNorm

A tensor of ``shape (rows, columns)`` in PyTorch is a ggml tensor with ne = (columns, rows): a Linear layer's weight
(out, in) is stored as it is. The tokenizer travels in the file: GPT-2's "printable" spelling of every token
(``bytes_to_unicode``), the merges in priority order as "left right", the pre-tokenizer "gpt-2" (GPT-2's regular
expression) and the special tokens as control tokens.

Formats (``FORMATS``): f32; f16 (every matrix in half precision); q8_0 and q4_0, ggml's block formats: each row is
cut into blocks of 32 numbers stored as one f16 scale d and 32 integers q (8 or 4 bits), x = d q. As llama.cpp's
converter does, vectors (LayerNorm gains, biases) and the position embeddings stay in f32. Introduced in Chapter 7.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmbook.bytebpe import ENDOFTEXT, ByteBPE, bytes_to_unicode
from llmbook.gpt import GPT, GPTConfig

try:  # llama.cpp's own GGUF package; ``pip install gguf`` (it comes with llmbook's "llamacpp" extra)
    import gguf
except ImportError:  # pragma: no cover - requirements.txt installs it
    gguf = None  # type: ignore[assignment]

ARCHITECTURE = "gpt2"
BLOCK_SIZE = 32  # numbers per block in q8_0 and q4_0
# Bits per number of each format's matrices: q8_0 stores 32 int8 and one f16 scale per block (34 bytes for 32
# numbers, 8.5 bits), q4_0 32 4-bit integers and one f16 scale (18 bytes, 4.5 bits).
FORMATS = ("f32", "f16", "q8_0", "q4_0")
BITS_PER_NUMBER = {"f32": 32.0, "f16": 16.0, "q8_0": 8.5, "q4_0": 4.5}


def _gguf() -> None:
    if gguf is None:
        raise ImportError("writing and reading GGUF needs llama.cpp's gguf package: pip install gguf")


def _format_type(fmt: str) -> tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]:
    """The ggml number type of the matrices and the file type (``general.file_type``) of format ``fmt``."""
    q, f = gguf.GGMLQuantizationType, gguf.LlamaFileType
    return {"f32": (q.F32, f.ALL_F32), "f16": (q.F16, f.MOSTLY_F16), "q8_0": (q.Q8_0, f.MOSTLY_Q8_0),
            "q4_0": (q.Q4_0, f.MOSTLY_Q4_0)}[fmt]


def check_exportable(config: GPTConfig) -> None:
    """Raise a ``ValueError`` naming the field if llama.cpp's "gpt2" graph cannot compute ``GPT(config)``."""
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
    problems = []
    if not config.norm_first:
        problems.append("norm_first=False (GPT-1's post-LN blocks): llama.cpp's gpt2 blocks are pre-LN")
    if not config.final_norm:
        problems.append("final_norm=False: llama.cpp's gpt2 graph applies a final LayerNorm (output_norm)")
    if config.d_ff == 0:
        problems.append("d_ff=0 (attention-only blocks): llama.cpp's gpt2 blocks have a feed-forward sub-layer")
    if config.activation != "gelu_tanh":
        problems.append(f"activation={config.activation!r}: llama.cpp's gpt2 graph uses GELU in its tanh form "
                        "('gelu_tanh')")
    if config.local_window:
        problems.append(f"local_window={config.local_window} (banded layers): llama.cpp's gpt2 layers are all dense")
    if problems:
        raise ValueError("this GPT cannot be exported as llama.cpp's 'gpt2': " + "; ".join(problems))


# llama.cpp's name of each tensor of a block -> ours (blk.i.<theirs>.weight is layers.i.<ours>.weight, biases alike).
# attn_qkv is W_q, W_k and W_v stacked.
BLOCK_NAMES = {"attn_norm": "norm1", "attn_output": "self_attn.W_o", "ffn_norm": "norm2", "ffn_up": "ff.W_1",
               "ffn_down": "ff.W_2"}


def gguf_tensors(model: GPT) -> dict[str, np.ndarray]:
    """The model's weights under llama.cpp's "gpt2" names, as float32 arrays, in the order they are written."""
    if not isinstance(model, GPT):
        raise TypeError(f"model must be an llmbook.gpt.GPT, got {type(model).__name__}")
    check_exportable(model.config)
    ours = {name: t.detach().to("cpu", torch.float32).numpy().copy() for name, t in model.state_dict().items()}
    out = {"token_embd.weight": ours["tok_emb.weight"], "position_embd.weight": ours["pos_emb.pos_emb.weight"]}
    for i in range(model.config.n_layers):
        p = f"layers.{i}."
        for kind in ("weight", "bias"):
            out[f"blk.{i}.attn_norm.{kind}"] = ours[f"{p}norm1.{kind}"]
        for kind in ("weight", "bias"):
            out[f"blk.{i}.attn_qkv.{kind}"] = np.concatenate([ours[f"{p}self_attn.W_{x}.{kind}"] for x in "qkv"])
        for theirs in ("attn_output", "ffn_norm", "ffn_up", "ffn_down"):
            for kind in ("weight", "bias"):
                out[f"blk.{i}.{theirs}.{kind}"] = ours[f"{p}{BLOCK_NAMES[theirs]}.{kind}"]
    out["output_norm.weight"], out["output_norm.bias"] = ours["final_norm.weight"], ours["final_norm.bias"]
    if not model.config.tie_embeddings:
        out["output.weight"] = ours["lm_head.weight"]
    return out


def keeps_f32(name: str, array: np.ndarray) -> bool:
    """True for the tensors every format keeps in f32, as llama.cpp's converter does: vectors (LayerNorm gains and
    biases) and the position embeddings."""
    return array.ndim == 1 or name == "position_embd.weight"


def _check_tokenizer(tokenizer: ByteBPE, vocab_size: int) -> list[str]:
    """GPT-2's printable spelling of every token id, after checking llama.cpp can read the tokenizer as "gpt2"."""
    if not isinstance(tokenizer, ByteBPE):
        raise TypeError(f"tokenizer must be a byte-level BPE (llmbook.bytebpe.ByteBPE): llama.cpp's gpt2 tokenizer is "
                        f"its tokens and merges; got {type(tokenizer).__name__}, which has no merges")
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {vocab_size}")
    printable = bytes_to_unicode()
    specials = {i: s for s, i in tokenizer.special_tokens.items()}
    spelled = [specials[i] if i in specials else "".join(printable[b] for b in tokenizer.decode_bytes([i]))
               for i in range(vocab_size)]
    if len(set(spelled)) != len(spelled):
        raise ValueError("two tokens have the same spelling (a special token spelled like an ordinary one); "
                         "GGUF identifies tokens by their text")
    return spelled


def write_gguf(model: GPT, tokenizer: ByteBPE, path: str | Path, fmt: str = "f32",
               name: str = "llmbook-gpt") -> Path:
    """Write ``model`` and ``tokenizer`` to the GGUF file ``path`` with its matrices in format ``fmt`` (one of
    ``FORMATS``), for llama.cpp's "gpt2" architecture. Returns the path. Introduced in Chapter 7."""
    _gguf()
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    tensors = gguf_tensors(model)
    config = model.config
    spelled = _check_tokenizer(tokenizer, config.vocab_size)
    qtype, file_type = _format_type(fmt)
    if fmt in ("q8_0", "q4_0"):
        for key, value in tensors.items():
            if not keeps_f32(key, value) and value.shape[-1] % BLOCK_SIZE:
                raise ValueError(f"{fmt} stores rows in blocks of {BLOCK_SIZE} numbers; {key} has rows of "
                                 f"{value.shape[-1]} (d_model and d_ff must be multiples of {BLOCK_SIZE}); "
                                 "use f16 or f32")
    for key, value in tensors.items():
        if not np.isfinite(value).all():
            raise ValueError(f"{key} holds NaN or infinite values; the model is broken, not exportable")

    path = Path(path)
    writer = gguf.GGUFWriter(path, ARCHITECTURE)
    writer.add_name(name)
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.d_model)
    writer.add_feed_forward_length(config.d_ff)
    writer.add_block_count(config.n_layers)
    writer.add_head_count(config.n_heads)
    writer.add_layer_norm_eps(config.layer_norm_eps)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(spelled)
    special_ids = set(tokenizer.special_tokens.values())
    writer.add_token_types([gguf.TokenType.CONTROL if i in special_ids else gguf.TokenType.NORMAL
                            for i in range(config.vocab_size)])
    writer.add_token_merges([" ".join("".join(bytes_to_unicode()[b] for b in part) for part in merge)
                             for merge in tokenizer.merges])
    if ENDOFTEXT in tokenizer.special_tokens:  # GPT-2's document separator is both its BOS and its EOS
        writer.add_bos_token_id(tokenizer.special_id(ENDOFTEXT))
        writer.add_eos_token_id(tokenizer.special_id(ENDOFTEXT))
    writer.add_add_bos_token(False)  # a bare LM: the text is the prompt, nothing is added in front
    for key, value in tensors.items():
        if keeps_f32(key, value) or fmt == "f32":
            writer.add_tensor(key, value)
        elif fmt == "f16":
            writer.add_tensor(key, value.astype(np.float16))
        else:
            writer.add_tensor(key, gguf.quants.quantize(value, qtype), raw_dtype=qtype)  # shape from the bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _field(reader: gguf.GGUFReader, key: str, path: Path) -> Any:
    field = reader.get_field(key)
    if field is None:
        raise ValueError(f"{path} has no key {key!r}; it was not written for llama.cpp's gpt2 architecture")
    return field.contents()


def read_gguf(path: str | Path) -> tuple[GPT, ByteBPE, str]:
    """Read a GGUF file of llama.cpp's "gpt2" architecture back into the book's GPT (in eval mode, dropout 0) and
    ByteBPE, with the format of its matrices. f32 files give back the written weights exactly; quantized ones give
    the numbers their blocks stand for (``gguf.quants.dequantize``). Introduced in Chapter 7."""
    _gguf()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    reader = gguf.GGUFReader(path)
    architecture = _field(reader, "general.architecture", path)
    if architecture != ARCHITECTURE:
        raise ValueError(f"{path} holds a {architecture!r} model; read_gguf reads llama.cpp's {ARCHITECTURE!r}")
    arrays: dict[str, np.ndarray] = {}
    types = set()
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))  # ggml's ne is PyTorch's shape reversed
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        arrays[t.name] = np.asarray(values, dtype=np.float32).reshape(shape)
        if len(shape) == 2 and t.name != "position_embd.weight":
            types.add(t.tensor_type.name.lower())
    if len(types) != 1 or (fmt := types.pop()) not in FORMATS:
        raise ValueError(f"{path}'s matrices must share one of the formats {FORMATS}")

    def key(name: str) -> int:
        return int(_field(reader, f"{ARCHITECTURE}.{name}", path))

    config = GPTConfig(
        vocab_size=arrays["token_embd.weight"].shape[0], context_length=key("context_length"),
        d_model=key("embedding_length"), n_heads=key("attention.head_count"), n_layers=key("block_count"),
        d_ff=key("feed_forward_length"), dropout=0.0, activation="gelu_tanh", norm_first=True, final_norm=True,
        tie_embeddings="output.weight" not in arrays, scaled_residual_init=True,
        layer_norm_eps=float(_field(reader, f"{ARCHITECTURE}.attention.layer_norm_epsilon", path)),
    )
    # GGUF stores eps as float32 (1e-5 comes back as 9.99999974738e-06): 6 significant digits are what was written.
    config = dataclasses.replace(config, layer_norm_eps=float(f"{config.layer_norm_eps:.6g}"))
    tokenizer = _read_tokenizer(reader, path)
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"{path}: {tokenizer.vocab_size} tokens but token_embd has {config.vocab_size} rows")
    model = GPT(config)
    D = config.d_model
    state = {"tok_emb.weight": arrays["token_embd.weight"], "pos_emb.pos_emb.weight": arrays["position_embd.weight"],
             "final_norm.weight": arrays["output_norm.weight"], "final_norm.bias": arrays["output_norm.bias"]}
    for i in range(config.n_layers):
        b, p = f"blk.{i}.", f"layers.{i}."
        qkv_w, qkv_b = arrays[b + "attn_qkv.weight"], arrays[b + "attn_qkv.bias"]
        for n, letter in enumerate("qkv"):
            state[f"{p}self_attn.W_{letter}.weight"] = qkv_w[n * D:(n + 1) * D]
            state[f"{p}self_attn.W_{letter}.bias"] = qkv_b[n * D:(n + 1) * D]
        for theirs, ours in BLOCK_NAMES.items():
            for kind in ("weight", "bias"):
                state[f"{p}{ours}.{kind}"] = arrays[f"{b}{theirs}.{kind}"]
    state["lm_head.weight"] = arrays.get("output.weight", arrays["token_embd.weight"])
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    return model.eval(), tokenizer, fmt


def _read_tokenizer(reader: gguf.GGUFReader, path: Path) -> ByteBPE:
    if _field(reader, "tokenizer.ggml.model", path) != "gpt2":
        raise ValueError(f"{path}'s tokenizer is not a byte-level BPE ('gpt2')")
    tokens = _field(reader, "tokenizer.ggml.tokens", path)
    types = _field(reader, "tokenizer.ggml.token_type", path)
    merges = _field(reader, "tokenizer.ggml.merges", path)
    byte_of = {c: b for b, c in bytes_to_unicode().items()}

    def to_bytes(spelling: str) -> bytes:
        return bytes(byte_of[c] for c in spelling)

    control = int(gguf.TokenType.CONTROL)
    token_ids = {to_bytes(t): i for i, (t, kind) in enumerate(zip(tokens, types, strict=True)) if kind != control}
    specials = {t: i for i, (t, kind) in enumerate(zip(tokens, types, strict=True)) if kind == control}
    pairs = []
    for merge in merges:  # "left right": GPT-2's spelling has no space (a space byte is spelled Ġ)
        left, right = merge.split(" ")
        pairs.append((to_bytes(left), to_bytes(right)))
    return ByteBPE(token_ids, pairs, specials)


def modelfile(gguf_path: str | Path, config: GPTConfig, tokenizer: ByteBPE, temperature: float = 0.8,
              top_k: int = 40, stop: tuple[str, ...] | None = None) -> str:
    """An Ollama ``Modelfile`` for the GGUF file ``gguf_path`` of ``GPT(config)``: FROM the file, a TEMPLATE that
    passes the prompt through untouched (a bare language model has no chat format), and the sampling parameters;
    ``num_ctx`` is the model's context length (learned positions end there), ``stop`` defaults to the tokenizer's
    special tokens. ``ollama create NAME -f Modelfile`` then ``ollama run NAME`` serves it. Introduced in Chapter 7.
    """
    check_exportable(config)
    if not (isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
            and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a real number >= 0, got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    stops = tuple(tokenizer.special_tokens) if stop is None else tuple(stop)
    if not all(isinstance(s, str) and s and '"' not in s for s in stops):
        raise ValueError(f"stop must hold non-empty strings without double quotes, got {stops!r}")
    lines = [f"FROM {gguf_path}", "", "# A bare language model: the prompt goes in as it is, no chat format.",
             'TEMPLATE """{{ .Prompt }}"""', "",
             f"# Learned positions end at {config.context_length}: the context can be no longer.",
             f"PARAMETER num_ctx {config.context_length}",
             f"PARAMETER temperature {temperature:g}",
             f"PARAMETER top_k {top_k}"]
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"
