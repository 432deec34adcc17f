"""A chapter's scale: the hyperparameter table by device, the LLMBOOK_SCALE override, the cuts of LLMBOOK_MAX_STEPS
and LLMBOOK_MAX_EXAMPLES; and the window batches of pre-training (llmbook.pretrain)."""

from __future__ import annotations

import pytest
import torch

from llmbook.config import chapter_hyperparameters
from llmbook.pretrain import even_windows, random_windows

TABLE = {"cpu": dict(max_steps=1200, warmup_steps=100, eval_every=150, c4_eval_every=250, n_test=500, lr=2e-3,
                     steps_note="x"),
         "gpu": dict(max_steps=6000, warmup_steps=400, eval_every=500, c4_eval_every=500, n_test=1000, lr=1e-3,
                     steps_note="y")}


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch):
    monkeypatch.delenv("LLMBOOK_SCALE", raising=False)
    monkeypatch.delenv("LLMBOOK_MAX_STEPS", raising=False)
    monkeypatch.delenv("LLMBOOK_MAX_EXAMPLES", raising=False)


def test_the_device_picks_the_scale():
    assert chapter_hyperparameters(TABLE, torch.device("cpu")) == ("cpu", TABLE["cpu"])
    assert chapter_hyperparameters(TABLE, torch.device("cuda")) == ("gpu", TABLE["gpu"])
    assert chapter_hyperparameters(TABLE, torch.device("mps"))[0] == "cpu"


def test_llmbook_scale_and_max_steps_run_the_gpu_scale_cut_short(monkeypatch):
    monkeypatch.setenv("LLMBOOK_SCALE", "gpu")
    monkeypatch.setenv("LLMBOOK_MAX_STEPS", "2")
    scale, hp = chapter_hyperparameters(TABLE, torch.device("cpu"))
    assert scale == "gpu"
    assert hp == dict(max_steps=2, warmup_steps=2, eval_every=2, c4_eval_every=2, n_test=1000, lr=1e-3,
                      steps_note="y")
    monkeypatch.setenv("LLMBOOK_MAX_EXAMPLES", "50")
    assert chapter_hyperparameters(TABLE, torch.device("cpu"))[1]["n_test"] == 50
    assert TABLE["gpu"]["max_steps"] == 6000  # the table itself is left alone


@pytest.mark.parametrize("variable, value, message", [
    ("LLMBOOK_SCALE", "tpu", "LLMBOOK_SCALE must be one of"), ("LLMBOOK_MAX_STEPS", "0", "a positive integer"),
    ("LLMBOOK_MAX_STEPS", "two", "a positive integer, got 'two'"), ("LLMBOOK_MAX_EXAMPLES", "-3", "positive"),
])
def test_bad_overrides_name_the_variable(monkeypatch, variable, value, message):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=message):
        chapter_hyperparameters(TABLE, torch.device("cpu"))


def test_a_table_needs_both_scales():
    with pytest.raises(ValueError, match="table must have the keys"):
        chapter_hyperparameters({"cpu": {}}, torch.device("cpu"))


def test_window_batches_are_a_function_of_the_step():
    ids = torch.arange(1000)
    batch = random_windows(ids, batch_size=4, length=16)
    (x,) = batch(7)
    assert x.shape == (4, 16) and torch.equal(x, batch(7)[0]) and not torch.equal(x, batch(8)[0])
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 15, dtype=torch.long))  # contiguous windows of ids
    windows = even_windows(ids, 5, 100)
    assert windows[:, 0].tolist() == [0, 225, 450, 675, 900] and windows[-1, -1] == 999
    with pytest.raises(ValueError, match="longer than length=16"):
        random_windows(torch.arange(16), 2, 16)
    with pytest.raises(ValueError, match="1-D tensor"):
        even_windows(ids.view(10, 100), 2, 16)


def test_pretrain_script_scales_are_chapter_2s_hyperparameters():
    """llmbook.pretrain.SCALES restates Chapter 2's hyperparameter cell for the script; the two must not drift."""
    import ast
    import json
    from pathlib import Path

    from llmbook.pretrain import SCALES

    notebook = json.loads((Path(__file__).resolve().parents[1] / "chapters" / "02_gpt1.ipynb").read_text())
    cell = next("".join(c["source"]) for c in notebook["cells"]
                if c["cell_type"] == "code" and "chapter_hyperparameters({" in "".join(c["source"]))
    call = next(n for n in ast.walk(ast.parse(cell)) if isinstance(n, ast.Call)
                and getattr(n.func, "id", "") == "chapter_hyperparameters")
    table = eval(compile(ast.Expression(call.args[0]), "hp-cell", "eval"), {"__builtins__": {}, "dict": dict})
    names = {"steps": "pretrain_steps", "dropout": "pretrain_dropout"}
    for scale, script in SCALES.items():
        chapter = {**table[scale], **table[scale]["model"]}
        assert {key: chapter[names.get(key, key)] for key in script} == script, scale


def test_windows_can_be_kept_to_given_starts():
    ids = torch.arange(1000)
    starts = torch.tensor([0, 10, 500, 990])  # 990 leaves no room for 16 tokens: never drawn
    batch = random_windows(ids, batch_size=64, length=16, starts=starts)
    (x,) = batch(3)
    assert set(x[:, 0].tolist()) == {0, 10, 500} and torch.equal(x, batch(3)[0])
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(64, 15, dtype=torch.long))
    with pytest.raises(ValueError, match="no position in starts leaves room"):
        random_windows(ids, 2, 16, starts=torch.tensor([995]))
    with pytest.raises(ValueError, match="starts must be a 1-D integer tensor"):
        random_windows(ids, 2, 16, starts=torch.tensor([0.5]))
    with pytest.raises(ValueError, match="positions in ids"):
        random_windows(ids, 2, 16, starts=torch.tensor([-1, 3]))


def test_train_lm_is_seeded_and_reports_the_validation_loss():
    from llmbook.gpt import PRESETS
    from llmbook.pretrain import train_lm
    from llmbook.trainer import TrainerConfig

    ids = torch.arange(2000) % 50
    config = TrainerConfig(max_steps=3, lr=1e-3, eval_every=3, eval_batches=2, device="cpu", seed=5)
    runs = [train_lm(PRESETS["tiny"], random_windows(ids, 4, 16), config, even_windows(ids, 6, 16)) for _ in range(2)]
    (a, history), (b, _) = runs
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert history.eval_step == [3] and len(history.eval["val_loss"]) == 1
    with pytest.raises(ValueError, match="at least eval_batches=2"):
        train_lm(PRESETS["tiny"], random_windows(ids, 4, 16), config, even_windows(ids, 1, 16))
