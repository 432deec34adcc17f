"""llmbook.export and llmbook.llamacpp against the real engine: GGUF files written with llama.cpp's ``gguf`` package,
read by llama.cpp itself (``llama-cpp-python``, built from source by pip), and read back into the book's GPT.

The model is a tiny random GPT-2 (2 layers, 64 wide) whose weights are scaled up (8x) so that its logits are not all
near zero; the tokenizer is a byte-level BPE learnt on a slice of Shakespeare.
"""

from __future__ import annotations

import dataclasses
import math

import gguf
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmbook.bytebpe import ENDOFTEXT, ByteBPE, train_byte_bpe
from llmbook.data.shakespeare import load_plays
from llmbook.export import BITS_PER_NUMBER, FORMATS, gguf_tensors, keeps_f32, modelfile, read_gguf, write_gguf
from llmbook.gpt import GPT, GPTConfig, gpt2_config
from llmbook.llamacpp import gelu_like_ggml, llama_greedy, llama_logits, llama_tokens_per_second, load_llama
from llmbook.tokenizer import train_chars

# Largest |llama.cpp logit - ours| allowed per format on the tiny model (logits of spread 1.3), against our GPT with
# the weights the file holds and against the original weights. Measured: 0.0045 / 0.0051 / 0.097 / 0.088 and
# 0.0045 / 0.0062 / 0.14 / 1.56 for f32 / f16 / q8_0 / q4_0.
LOGIT_TOLERANCE = {"f32": 0.02, "f16": 0.02, "q8_0": 0.3, "q4_0": 0.3}
ORIGINAL_TOLERANCE = {"f32": 0.02, "f16": 0.03, "q8_0": 0.4, "q4_0": 3.0}
# Assigned characters other than surrogates: llama.cpp's Unicode tables and the regex module's agree on them.
TEXT = st.text(st.characters(exclude_categories=("Cs", "Cn")), max_size=60)


@pytest.fixture(scope="module")
def tokenizer() -> ByteBPE:
    text = next(p.text for p in load_plays() if p.split == "train")[:40_000]
    return train_byte_bpe([text], 384)


def tiny_gpt(vocab_size: int, seed: int = 0, **changes) -> GPT:
    config = dataclasses.replace(gpt2_config(2, 64, 4, vocab_size=vocab_size, context_length=64, dropout=0.0),
                                 **changes)
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():  # weights 8x the initialisation's, so that the logits spread over several units
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(8.0)
            elif "bias" in name:
                p.normal_(0, 0.1)
    return model


@pytest.fixture(scope="module")
def model(tokenizer) -> GPT:
    return tiny_gpt(tokenizer.vocab_size)


@pytest.fixture(scope="module")
def files(tmp_path_factory, model, tokenizer) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("gguf")
    return {fmt: write_gguf(model, tokenizer, folder / f"tiny-{fmt}.gguf", fmt) for fmt in FORMATS}


@pytest.fixture(scope="module")
def prompt(tokenizer) -> list[int]:
    return tokenizer.encode("ROMEO:\nBut soft, what light through yonder window breaks?\n")[:48]


def ours(model: GPT, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].numpy()


# --- the file -------------------------------------------------------------------------------------------------------
def test_f32_round_trip_is_exact(files, model, tokenizer):
    back, tok, fmt = read_gguf(files["f32"])
    assert fmt == "f32" and back.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert tok.merges == tokenizer.merges and tok.special_tokens == tokenizer.special_tokens
    assert [tok.decode_bytes([i]) for i in range(tok.vocab_size)] == [
        tokenizer.decode_bytes([i]) for i in range(tokenizer.vocab_size)]


def test_untied_head_travels_as_output_weight(tmp_path, tokenizer):
    model = tiny_gpt(tokenizer.vocab_size, tie_embeddings=False)
    assert "output.weight" in gguf_tensors(model)
    back, _, _ = read_gguf(write_gguf(model, tokenizer, tmp_path / "untied.gguf"))
    assert not back.config.tie_embeddings
    assert torch.equal(back.lm_head.weight, model.lm_head.weight)


def test_metadata_and_tensor_layout_are_llama_cpps_gpt2(files, model, tokenizer):
    reader = gguf.GGUFReader(files["q8_0"])
    field = {k: reader.get_field(k).contents() for k in (
        "general.architecture", "gpt2.context_length", "gpt2.embedding_length", "gpt2.feed_forward_length",
        "gpt2.block_count", "gpt2.attention.head_count", "tokenizer.ggml.model", "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id", "tokenizer.ggml.add_bos_token")}
    assert field == {"general.architecture": "gpt2", "gpt2.context_length": 64, "gpt2.embedding_length": 64,
                     "gpt2.feed_forward_length": 256, "gpt2.block_count": 2, "gpt2.attention.head_count": 4,
                     "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
                     "tokenizer.ggml.bos_token_id": tokenizer.special_id(ENDOFTEXT),
                     "tokenizer.ggml.add_bos_token": False}
    tensors = {t.name: t for t in reader.tensors}
    assert list(tensors) == list(gguf_tensors(model))
    assert [int(n) for n in tensors["blk.0.attn_qkv.weight"].shape] == [64, 192]  # ggml's ne: (in, 3 D)
    for name, array in gguf_tensors(model).items():
        t = tensors[name]
        if keeps_f32(name, array):
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, name
        else:  # q8_0: 34 bytes (an f16 scale and 32 int8) per block of 32 numbers
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0 and t.n_bytes == array.size // 32 * 34, name


@pytest.mark.parametrize("fmt", ["f16", "q8_0", "q4_0"])
def test_read_back_weights_are_within_the_formats_rounding(files, model, fmt):
    back, _, got = read_gguf(files[fmt])
    assert got == fmt
    written = gguf_tensors(model)
    for name, value in gguf_tensors(back).items():
        original = written[name]
        error = np.abs(value - original)
        if keeps_f32(name, original):
            assert np.array_equal(value, original), name
        elif fmt == "f16":
            assert np.all(error <= np.abs(original) * 2.0 ** -11 + 2.0 ** -25), name
        else:  # per block of 32: q8_0 rounds to steps of d = absmax / 127, q4_0 to steps of d = absmax / 8
            blocks = np.abs(original).reshape(-1, 32).max(axis=1, keepdims=True)
            levels = 127 if fmt == "q8_0" else 8
            step = blocks / levels
            # half a step (q4_0: a whole one, it clips the far end of the range to 7 steps), plus the rounding of
            # d itself to f16 (relative 2^-11), which up to `levels` steps multiply
            bound = step * ((0.5 if fmt == "q8_0" else 1.0) + levels * 2.0 ** -11)
            assert np.all(error.reshape(-1, 32) <= bound * 1.001 + 1e-7), name


def test_file_sizes_follow_the_bits_per_number(files, model):
    tensors = gguf_tensors(model)
    kept = sum(a.size for n, a in tensors.items() if keeps_f32(n, a))
    packed = sum(a.size for n, a in tensors.items() if not keeps_f32(n, a))
    for fmt, path in files.items():
        data = sum(t.n_bytes for t in gguf.GGUFReader(path).tensors)
        assert data == kept * 4 + packed * BITS_PER_NUMBER[fmt] / 8, fmt


# --- llama.cpp ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llamas(files):
    return {fmt: load_llama(path, n_threads=1) for fmt, path in files.items()}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_llama_cpp_tokenizes_as_we_do(llamas, tokenizer, text):
    llm = llamas["f32"]
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer.encode_ordinary(text)


def test_llama_cpp_tokenizes_shakespeare_as_we_do(llamas, tokenizer):
    text = next(p.text for p in load_plays() if p.split == "validation")[:20_000]
    assert llamas["f32"].tokenize(text.encode(), add_bos=False, special=False) == tokenizer.encode_ordinary(text)
    ids = tokenizer.encode(text[:2000])
    assert llamas["f32"].detokenize(ids) == text[:2000].encode()


@pytest.mark.parametrize("fmt", FORMATS)
def test_llama_cpp_logits_match_ours(llamas, files, model, prompt, fmt):
    """llama.cpp against our GPT with the weights the file holds (the rounding of each format undone by
    ``read_gguf``): what llama.cpp computes differently, its half-precision GELU and cache, and for q8_0 and q4_0
    the activations it rounds to 8 bits before each product. Against the original weights, the format's rounding
    comes on top (most of q4_0's error)."""
    theirs, mine = llama_logits(llamas[fmt], prompt), ours(model, prompt)
    assert theirs.shape == mine.shape == (len(prompt), model.config.vocab_size)
    assert mine.std() > 1.0  # logits that spread: an error of 0.02 is small next to the differences between tokens
    held = ours(read_gguf(files[fmt])[0], prompt)
    assert np.abs(theirs - held).max() < LOGIT_TOLERANCE[fmt], fmt
    assert np.abs(theirs - mine).max() < ORIGINAL_TOLERANCE[fmt], fmt
    agree = (theirs.argmax(-1) == mine.argmax(-1)).mean()
    assert agree >= {"f32": 1.0, "f16": 1.0, "q8_0": 0.9, "q4_0": 0.5}[fmt], (fmt, agree)


def test_llama_cpps_difference_is_its_gelu_and_its_f16_cache(files, model, prompt):
    """With keys and values cached in f32 and our GELU computed as ggml's table computes it, llama.cpp and the
    book's GPT agree as closely as that GPT agrees with itself computed in float64: the f32 file's differences have
    no other source. (A half-precision rounding inside GELU turns a float32 rounding into a jump of one f16 step
    now and then, so "as closely" is 1e-4 to 1e-3 here, not 1e-6.)"""
    exact = load_llama(files["f32"], n_threads=1, kv_f32=True)
    like_ggml = read_gguf(files["f32"])[0]
    for layer in like_ggml.layers:
        layer.ff.act = gelu_like_ggml
    in_float64 = read_gguf(files["f32"])[0].double()
    for layer in in_float64.layers:
        layer.ff.act = lambda x: gelu_like_ggml(x.float()).double()
    with torch.no_grad():
        reference = in_float64(torch.tensor([prompt]))[0].float().numpy()
    theirs = llama_logits(exact, prompt)
    plain = np.abs(theirs - ours(model, prompt)).max()
    like = np.abs(theirs - ours(like_ggml, prompt)).max()
    itself = np.abs(ours(like_ggml, prompt) - reference).max()
    assert like < plain / 3, (like, plain)
    assert like <= 2 * itself + 1e-4, (like, itself)


def test_gelu_like_ggml_is_within_half_precision_of_gelu():
    x = torch.linspace(-12, 12, 100_001)
    exact = torch.nn.functional.gelu(x, approximate="tanh")
    assert torch.all((gelu_like_ggml(x) - exact).abs() <= 2e-3 * exact.abs().clamp(min=1) + 1e-3)
    assert torch.equal(gelu_like_ggml(torch.tensor([-11.0, 11.0, 0.0])), torch.tensor([0.0, 11.0, 0.0]))


def test_llama_cpp_greedy_continuation_equals_ours_for_f32(llamas, model, prompt):
    new = 64 - len(prompt)
    with torch.no_grad():
        mine = model.generate(torch.tensor(prompt), new, temperature=0.0)[len(prompt):].tolist()
    assert llama_greedy(llamas["f32"], prompt, new) == mine


def test_tokens_per_second_is_a_positive_rate(llamas, prompt):
    rate = llama_tokens_per_second(llamas["q8_0"], prompt, 8, repeats=1)
    assert math.isfinite(rate) and rate > 0


def test_llama_helpers_refuse_bad_ids(llamas, prompt):
    llm = llamas["f32"]
    with pytest.raises(ValueError, match="at least one token"):
        llama_logits(llm, [])
    with pytest.raises(ValueError, match=r"ids must be in \[0, 384\)"):
        llama_logits(llm, [0, 384])
    with pytest.raises(ValueError, match="more than the context of 64"):
        llama_greedy(llm, prompt, 64)
    with pytest.raises(ValueError, match="max_new_tokens"):
        llama_greedy(llm, prompt, 0)
    with pytest.raises(ValueError, match="n_threads"):
        load_llama(__file__, n_threads=0)


# --- what cannot be exported, and the Modelfile ---------------------------------------------------------------------
@pytest.mark.parametrize("changes, message", [
    (dict(norm_first=False), "post-LN"),
    (dict(final_norm=False), "final LayerNorm"),
    (dict(d_ff=0), "attention-only"),
    (dict(activation="relu"), "tanh form"),
    (dict(local_window=8), "banded"),
])
def test_what_llama_cpps_gpt2_cannot_compute_is_refused(tmp_path, tokenizer, changes, message):
    with pytest.raises(ValueError, match=message):
        write_gguf(tiny_gpt(tokenizer.vocab_size, **changes), tokenizer, tmp_path / "no.gguf")


def test_gpt1_preset_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="GPT-1's post-LN"):
        gguf_tensors(GPT(GPTConfig(vocab_size=50, context_length=8, d_model=16, n_heads=2, n_layers=1, d_ff=32)))


def test_bad_tokenizers_formats_and_weights_are_refused(tmp_path, model, tokenizer):
    with pytest.raises(TypeError, match="byte-level BPE"):
        write_gguf(model, train_chars(["abc"]), tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="vocab_size is 384"):
        write_gguf(model, train_byte_bpe(["some text"], 300), tmp_path / "x.gguf")
    with pytest.raises(ValueError, match="fmt must be one of"):
        write_gguf(model, tokenizer, tmp_path / "x.gguf", "q5_k")
    narrow = tiny_gpt(tokenizer.vocab_size, d_model=48, n_heads=4, d_ff=192)
    with pytest.raises(ValueError, match="blocks of 32"):
        write_gguf(narrow, tokenizer, tmp_path / "x.gguf", "q4_0")
    write_gguf(narrow, tokenizer, tmp_path / "narrow.gguf", "f16")  # f16 has no blocks
    broken = tiny_gpt(tokenizer.vocab_size)
    with torch.no_grad():
        broken.layers[0].ff.W_1.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        write_gguf(broken, tokenizer, tmp_path / "x.gguf")
    with pytest.raises(TypeError, match="llmbook.gpt.GPT"):
        gguf_tensors(torch.nn.Linear(2, 2))


def test_reading_refuses_what_is_not_our_gguf(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_gguf(tmp_path / "missing.gguf")
    writer = gguf.GGUFWriter(tmp_path / "llama.gguf", "llama")
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="'llama' model"):
        read_gguf(tmp_path / "llama.gguf")


def test_modelfile(files, model, tokenizer):
    text = modelfile("tiny-q8_0.gguf", model.config, tokenizer, temperature=0.7)
    lines = text.splitlines()
    assert lines[0] == "FROM tiny-q8_0.gguf"
    assert 'TEMPLATE """{{ .Prompt }}"""' in lines
    assert "PARAMETER num_ctx 64" in lines and "PARAMETER temperature 0.7" in lines
    assert 'PARAMETER stop "<|endoftext|>"' in lines
    with pytest.raises(ValueError, match="temperature"):
        modelfile("x.gguf", model.config, tokenizer, temperature=float("nan"))
    with pytest.raises(ValueError, match="top_k"):
        modelfile("x.gguf", model.config, tokenizer, top_k=0)
    with pytest.raises(ValueError, match="stop"):
        modelfile("x.gguf", model.config, tokenizer, stop=('say "hi"',))
    with pytest.raises(ValueError, match="post-LN"):
        modelfile("x.gguf", dataclasses.replace(model.config, norm_first=False), tokenizer)
