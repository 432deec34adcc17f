"""Scale-out: two CPU processes under torchrun (gloo) make the updates one process makes on the combined batch,
and the pre-training script runs under torchrun."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

import distributed_worker as worker
from llmbook.gpt import GPT
from llmbook.gpt import PRESETS as GPT_PRESETS
from llmbook.pretrain import SCALES
from llmbook.tokenizer import BPETokenizer
from llmbook.trainer import load_model_weights

WORKER = Path(__file__).with_name("distributed_worker.py")


def read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    return load_file(str(path)), metadata


def test_two_processes_train_like_one_process_on_the_combined_batch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(WORKER.parent), env.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(WORKER), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    single = worker.make_trainer()
    history = single.fit()
    expected = {k: v.detach() for k, v in single.model.state_dict().items()}
    (w0, m0), (w1, m1) = read(tmp_path / "rank0.safetensors"), read(tmp_path / "rank1.safetensors")
    assert m0["world_size"] == m1["world_size"] == "2"
    # Each process computed half of every batch (the data is sharded, not repeated).
    half = [worker.BATCH_SIZE // 2] * worker.STEPS
    assert json.loads(m0["rows_seen"]) == json.loads(m1["rows_seen"]) == half
    for name, value in expected.items():
        torch.testing.assert_close(w0[name], w1[name], rtol=0, atol=0)  # DDP keeps the processes identical
        torch.testing.assert_close(w0[name], value, rtol=1e-4, atol=1e-5)  # float sums in another order
    assert not torch.equal(expected["layers.0.ff.W_1.weight"], worker.make_trainer().model.state_dict()[
        "layers.0.ff.W_1.weight"])  # the weights did move: the comparison is not between two initialisations
    # The logged loss is the mean over both processes' halves: the loss of the whole batch.
    torch.testing.assert_close(torch.tensor(json.loads(m0["train_loss"])), torch.tensor(history.train_loss),
                               rtol=1e-5, atol=1e-6)
    assert json.loads(m0["train_loss"]) == json.loads(m1["train_loss"])
    # Rank 0 alone writes the checkpoint and draws the progress bar.
    assert json.loads(m0["checkpoints"]) == [worker.STEPS] and json.loads(m1["checkpoints"]) == []
    checkpoint, _ = read(tmp_path / "checkpoint.safetensors")
    torch.testing.assert_close(checkpoint["model.layers.0.ff.W_1.weight"], w0["layers.0.ff.W_1.weight"])
    assert run.stderr.count(f"{worker.STEPS}/{worker.STEPS}") == 1, run.stderr[-2000:]


def test_the_pretraining_script_runs_under_torchrun(tmp_path):
    # The command book/running.md gives for several GPUs, here on 2 CPU processes for 2 steps of Chapter 2's CPU scale.
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                          "llmbook.pretrain", "--scale", "cpu", "--steps", "2", "--batch-size", "4", "--device", "cpu",
                          "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 process(es) on cpu" in run.stdout and run.stdout.count("2 steps in") == 1  # rank 0 reports, once
    tokenizer = BPETokenizer.load(tmp_path)
    shape = {k: SCALES["cpu"][k] for k in ("context_length", "d_model", "n_heads", "n_layers", "d_ff")}
    config = dataclasses.replace(GPT_PRESETS["small"], vocab_size=tokenizer.vocab_size, norm_first=True,
                                 final_norm=True, dropout=0.0, **shape)
    model = load_model_weights(str(tmp_path / "gpt.safetensors"), GPT(config))
    _, metadata = read(tmp_path / "gpt.safetensors")
    assert metadata["step"] == "2"
    assert model(torch.tensor([tokenizer.encode("To be, or not to be")])).shape[-1] == tokenizer.vocab_size
