"""A GGUF file run by llama.cpp, the engine inside Ollama, through its Python binding ``llama-cpp-python``.

``load_llama`` opens a file written by ``llmbook.export.write_gguf`` with the context of the model (learned positions
end at ``context_length``) and the logits of every position kept, so that ``llama_logits`` returns what llama.cpp
computes for each position of a sequence, as the book's ``GPT.forward`` does. ``llama_greedy`` continues a prompt
with llama.cpp's own greedy sampler, ``llama_tokens_per_second`` times it.

What llama.cpp computes differently from PyTorch on a CPU, even from an f32 file (ggml's CPU code, read in the
sources that ``llama-cpp-python`` builds): GELU looks its result up in a table of 65,536 half-precision values,
indexed by the input rounded to half precision (``ggml_vec_gelu_f32`` under ``GGML_GELU_FP16``), and the
key-value cache holds keys and values in f16 unless asked for f32 (``kv_f32=True``). ``gelu_like_ggml`` is that
GELU in PyTorch, so that the two sources of difference can be told apart. Introduced in Chapter 7.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

try:  # llama.cpp's Python binding; pip builds it from source (``pip install llama-cpp-python``)
    import llama_cpp
except ImportError:  # pragma: no cover - requirements.txt installs it
    llama_cpp = None  # type: ignore[assignment]

GGML_TYPE_F32 = 0  # ggml's number-type ids (ggml.h): the key-value cache's type when kv_f32


def _llama_cpp() -> Any:
    if llama_cpp is None:
        raise ImportError("running GGUF files needs llama.cpp's Python binding: pip install llama-cpp-python "
                          "(built from source, about 10 minutes)")
    return llama_cpp


def load_llama(path: str | Path, n_threads: int | None = None, kv_f32: bool = False) -> Any:
    """``llama_cpp.Llama`` on the GGUF file ``path``: a context as long as the model's (``n_ctx=0``), the logits
    of every position kept, ``n_threads`` threads (default: PyTorch's count, for a fair comparison), keys and
    values cached in f16 (llama.cpp's default) or in f32 with ``kv_f32``. Introduced in Chapter 7."""
    lib = _llama_cpp()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    threads = torch.get_num_threads() if n_threads is None else n_threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"n_threads must be a positive integer or None, got {n_threads!r}")
    cache: dict[str, int] = dict(type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32) if kv_f32 else {}
    # llama.cpp rounds the context up to a multiple of 256 and warns that it outgrows the model's, whatever
    # verbose says (the binding's log callback prints warnings to sys.stderr, C code writes to descriptor 2);
    # context_length below is the limit the helpers enforce.
    # No weight repacking into llama.cpp's extra CPU buffer types: on CPUs with AMX (Intel Sapphire Rapids and
    # later) the repacked q8_0 / q4_0 matrices of a model this small crash llama.cpp 0.3.36 in decode (a
    # segmentation fault, seen here). The binding does not expose the switch, so its default parameters are
    # wrapped while the model loads.
    low_level = lib.llama_cpp
    defaults = low_level.llama_model_default_params

    def without_repacking() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    low_level.llama_model_default_params = without_repacking
    try:
        with _quiet_stderr(), contextlib.redirect_stderr(io.StringIO()):
            return lib.Llama(model_path=str(path), n_ctx=0, n_batch=4096, n_ubatch=4096, logits_all=True,
                             n_threads=threads, n_threads_batch=threads, verbose=False, **cache)
    finally:
        low_level.llama_model_default_params = defaults


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send what C code writes to file descriptor 2 to /dev/null for the duration."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def context_length(llm: Any) -> int:
    """The number of positions the model in ``llm`` was made for (its GGUF ``<architecture>.context_length``)."""
    return int(llm.metadata[f"{llm.metadata['general.architecture']}.context_length"])


def _check_ids(llm: Any, ids: Sequence[int], extra: int = 0) -> list[int]:
    ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
    if not ids:
        raise ValueError("ids must hold at least one token")
    if min(ids) < 0 or max(ids) >= llm.n_vocab():
        raise ValueError(f"ids must be in [0, {llm.n_vocab()}), got values from {min(ids)} to {max(ids)}")
    if len(ids) + extra > context_length(llm):
        raise ValueError(f"{len(ids)} tokens{f' + {extra} new ones' if extra else ''} are more than the "
                         f"context of {context_length(llm)} positions")
    return ids


def llama_logits(llm: Any, ids: Sequence[int]) -> np.ndarray:
    """llama.cpp's next-token logits (T, V) at every position of ``ids`` (one sequence from position 0; the cache is
    emptied first). Introduced in Chapter 7."""
    ids = _check_ids(llm, ids)
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def llama_greedy_matches(llm: Any, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[bool]:
    """For each (prompt ids, answer ids): whether llama.cpp's greedy choice after the prompt and each prefix of the
    answer is the answer's next token, i.e. whether greedy decoding writes the answer (teacher forcing, one pass per
    pair, as ``llmbook.tasks.greedy_matches`` does for the book's GPT). Introduced in Chapter 7."""
    out = []
    for prompt, answer in pairs:
        if not len(prompt) or not len(answer):
            raise ValueError("every prompt and answer must hold at least one token")
        ids = [*prompt, *answer]
        predicted = llama_logits(llm, ids).argmax(-1)[len(prompt) - 1:len(ids) - 1]
        out.append(bool((predicted == np.asarray(answer)).all()))
    return out


def llama_greedy(llm: Any, ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """The ``max_new_tokens`` tokens llama.cpp's greedy sampler (temperature 0) writes after ``ids``.
    Introduced in Chapter 7."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    ids = _check_ids(llm, ids, max_new_tokens)
    out: list[int] = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(int(token))
        if len(out) == max_new_tokens:
            break
    return out


def llama_tokens_per_second(llm: Any, ids: Sequence[int], max_new_tokens: int, repeats: int = 3) -> float:
    """New tokens per second of ``llama_greedy`` (the prompt's reading included), the best of ``repeats`` runs
    after a warm-up. Introduced in Chapter 7."""
    llama_greedy(llm, ids, max_new_tokens)
    best = min(_timed(lambda: llama_greedy(llm, ids, max_new_tokens)) for _ in range(repeats))
    return max_new_tokens / best


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def gelu_like_ggml(x: Tensor) -> Tensor:
    """GELU (tanh form) as ggml's CPU code computes it: the input rounded to half precision, GELU of that, the
    result rounded to half precision (its table holds f16 values); inputs beyond +-10 pass as ggml does (0 or x).
    Introduced in Chapter 7."""
    h = x.to(torch.float16).to(torch.float32)
    y = torch.nn.functional.gelu(h, approximate="tanh").to(torch.float16).to(x.dtype)
    return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, y))
