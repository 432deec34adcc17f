import math
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from llmbook.trainer import (
    Trainer,
    TrainerConfig,
    cross_entropy_loss,
    load_model_weights,
    lr_at,
    make_loss_fn,
    make_optimizer,
    seed_everything,
    select_device,
    shard_batch,
    transformer_peak_lr,
)

N_IN, N_CLASSES = 8, 4
TARGET_MAP = torch.randn(N_IN, N_CLASSES, generator=torch.Generator().manual_seed(123))
CPU = TrainerConfig(device="cpu", lr=1e-2, max_steps=10)


def toy_batch(step: int, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed mapping to learn: the class of x is argmax(x @ TARGET_MAP); the batch depends only on the step."""
    x = torch.randn(batch_size, N_IN, generator=torch.Generator().manual_seed(step))
    return x, (x @ TARGET_MAP).argmax(-1)


def toy_model(dropout: float = 0.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_IN, 32), nn.ReLU(), nn.Dropout(dropout), nn.LayerNorm(32),
                         nn.Linear(32, N_CLASSES))


def test_trainer_lowers_loss_on_a_toy_task():
    config = replace(CPU, max_steps=150, eval_every=50, eval_batches=2)
    trainer = Trainer(toy_model(), make_loss_fn(), toy_batch, config, val_batch=lambda i: toy_batch(10_000 + i))
    history = trainer.fit()
    assert history.step == list(range(1, 151))
    assert abs(history.train_loss[0] - math.log(N_CLASSES)) < 0.5  # near ln V at initialization
    assert np.mean(history.train_loss[-10:]) < 0.3 * history.train_loss[0]
    assert history.eval_step == [50, 100, 150]
    assert history.eval["val_loss"][-1] < 0.3 * history.train_loss[0]


def test_make_loss_fn_accepts_models_that_return_attention_weights():
    class WithWeights(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = toy_model()

        def forward(self, x):
            return self.inner(x), None

    x, y = toy_batch(0)
    model = WithWeights()
    torch.testing.assert_close(make_loss_fn()(model, (x, y)), F.cross_entropy(model.inner(x), y))


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_warmup_rises_linearly_to_the_peak_at_warmup_steps(schedule):
    config = TrainerConfig(lr=1.0, warmup_steps=10, max_steps=110, schedule=schedule)
    rates = [lr_at(s, config) for s in range(0, 111)]
    assert rates[:11] == pytest.approx([s / 10 for s in range(11)])
    assert max(rates) == pytest.approx(1.0) and rates[10] == pytest.approx(1.0)
    after = {"constant": (1.0, 1.0), "linear": (0.5, 0.0), "cosine": (0.5, 0.0)}[schedule]
    assert (rates[60], rates[110]) == pytest.approx(after)  # halfway through the decay, and at max_steps
    if schedule == "cosine":
        assert rates[35] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_inverse_sqrt_is_the_papers_schedule():
    d_model, warmup = 512, 4000
    config = TrainerConfig(lr=transformer_peak_lr(d_model, warmup), warmup_steps=warmup, max_steps=100_000,
                           schedule="inverse_sqrt")
    for step in (1, 100, 3999, 4000, 4001, 16_000, 100_000):
        paper = d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
        assert lr_at(step, config) == pytest.approx(paper, rel=1e-12)
    assert transformer_peak_lr(512, 4000) == pytest.approx(6.988e-4, rel=1e-3)
    assert lr_at(4 * warmup, config) == pytest.approx(config.lr / 2)  # decays as 1 / sqrt(step)


def test_history_records_the_scheduled_learning_rates():
    config = replace(CPU, max_steps=20, warmup_steps=5, schedule="cosine", log_every=4)
    history = Trainer(toy_model(), make_loss_fn(), toy_batch, config).fit()
    assert history.step == [4, 8, 12, 16, 20]
    assert history.lr == [lr_at(s, config) for s in history.step]


def test_cross_entropy_with_label_smoothing_equals_torch():
    logits = torch.randn(3, 5, 11, generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(1))
    targets[0, 3:] = 0  # padding, ignored
    for eps in (0.0, 0.1, 0.5):
        expected = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), ignore_index=0, label_smoothing=eps)
        torch.testing.assert_close(cross_entropy_loss(logits, targets, ignore_index=0, label_smoothing=eps), expected)
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy_loss(logits, targets, label_smoothing=1.0)


def test_grad_clipping_bounds_the_gradient_norm():
    clip, seen = 0.01, []

    def record(trainer):  # gradients are still there after the optimizer step
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.model.parameters()]))
        seen.append((trainer.grad_norm, norm.item()))

    trainer = Trainer(toy_model(), make_loss_fn(), toy_batch, replace(CPU, grad_clip=clip, max_steps=5))
    trainer.add_callback("on_step", record)
    trainer.fit()
    assert len(seen) == 5
    for before, after in seen:
        assert before > clip and after == pytest.approx(clip, rel=1e-4)


def test_weight_decay_applies_to_matrices_only():
    model = toy_model()
    decay, no_decay = make_optimizer(model, TrainerConfig(weight_decay=0.1)).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(m.weight) for m in model if isinstance(m, nn.Linear)}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_callbacks_fire_at_the_right_steps(tmp_path):
    config = replace(CPU, max_steps=10, eval_every=4, checkpoint_path=str(tmp_path / "ckpt.safetensors"),
                     checkpoint_every=3)
    trainer = Trainer(toy_model(), make_loss_fn(), toy_batch, config, eval_fn=lambda model: {"answer": 42.0})
    fired = {"on_step": [], "on_eval": [], "on_checkpoint": []}
    for event, steps in fired.items():
        trainer.add_callback(event, lambda t, steps=steps: steps.append(t.step))
    history = trainer.fit()
    assert fired == {"on_step": list(range(1, 11)), "on_eval": [4, 8, 10], "on_checkpoint": [3, 6, 9, 10]}
    assert history.eval == {"answer": [42.0] * 3}
    with pytest.raises(ValueError, match="event"):
        trainer.add_callback("on_epoch", print)


def test_checkpoint_resume_reproduces_an_uninterrupted_run(tmp_path):
    path = str(tmp_path / "run.safetensors")
    config = replace(CPU, max_steps=12, warmup_steps=3, schedule="cosine", eval_every=4)
    make = lambda model, cfg: Trainer(model, make_loss_fn(), toy_batch, cfg, val_batch=toy_batch)  # noqa: E731

    full = make(toy_model(dropout=0.3), config).fit()

    first = make(toy_model(dropout=0.3), replace(config, checkpoint_path=path, checkpoint_every=5))
    first.fit(steps=5)
    assert first.step == 5
    resumed = make(toy_model(dropout=0.3, seed=99), config)  # different initial weights: all must come from the file
    resumed.load_checkpoint(path)
    history = resumed.fit()
    assert history.train_loss == full.train_loss  # exactly, dropout included
    assert history.eval == full.eval and history.step == full.step and history.lr == full.lr

    tensors = load_file(path)  # a plain safetensors file, no pickle
    assert {k.split(".")[0] for k in tensors} == {"model", "optimizer", "rng"}
    assert "optimizer.0.exp_avg_sq" in tensors
    with safe_open(path, framework="pt") as f:
        assert f.metadata()["step"] == "5"
    weights = load_model_weights(path, toy_model(seed=7))
    torch.testing.assert_close(weights[0].weight, tensors["model.0.weight"])


def test_checkpoint_handles_tied_weights(tmp_path):
    def tied_model():
        model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
        model[1].weight = model[0].weight  # tied, as in GPT: safetensors refuses shared memory unless we copy
        return model

    batch = lambda step: (torch.arange(5)[None], torch.arange(5)[None])  # noqa: E731
    trainer = Trainer(tied_model(), make_loss_fn(), batch, replace(CPU, max_steps=2))
    trainer.fit()
    trainer.save_checkpoint(str(tmp_path / "tied.safetensors"))
    fresh = Trainer(tied_model(), make_loss_fn(), batch, CPU)
    fresh.load_checkpoint(str(tmp_path / "tied.safetensors"))
    torch.testing.assert_close(fresh.model[1].weight, trainer.model[0].weight)
    assert fresh.model[1].weight is fresh.model[0].weight


@pytest.mark.parametrize("field, value, allowed", [
    ("max_steps", 0, "a positive integer"), ("max_steps", 1.5, r"a positive integer, got 1.5 \(float\)"),
    ("max_steps", True, "a positive integer"), ("lr", 0.0, "a real number > 0"),
    ("lr", "3e-4", r"a real number > 0, got '3e-4' \(str\)"), ("lr", float("nan"), "a real number > 0"),
    ("betas", (0.9, 1.0), r"two real numbers in \[0, 1\)"), ("betas", (0.9,), "two real numbers"),
    ("betas", ("0.9", 0.99), "two real numbers"), ("eps", -1.0, "a real number > 0"),
    ("weight_decay", -0.1, "a real number >= 0"), ("weight_decay", True, "a real number >= 0"),
    ("schedule", "step", "one of"), ("schedule", None, "one of"),
    ("warmup_steps", -1, r"an integer in \[0, max_steps=1000\]"), ("warmup_steps", 2.0, "an integer in"),
    ("warmup_steps", 1001, r"an integer in \[0, max_steps=1000\]"), ("grad_clip", 0.0, "a real number > 0 or None"),
    ("grad_clip", "1", "a real number > 0 or None"), ("eval_every", -1, "an integer >= 0"),
    ("eval_every", 0.5, "an integer >= 0"),
    ("eval_batches", 0, "a positive integer"), ("log_every", 0, "a positive integer"),
    ("seed", -1, r"an integer in \[0, 4294967295\]"), ("seed", 1.0, "an integer"), ("device", "tpu", "one of"),
    ("checkpoint_path", 3, "a str or None"), ("checkpoint_every", 5, "0 when checkpoint_path is None"),
    ("checkpoint_every", -1, "an integer >= 0"), ("progress", 1, "True or False"),
    ("precision", "float16", "one of"),
])
def test_config_validation_names_the_field_and_what_is_allowed(field, value, allowed):
    with pytest.raises(ValueError, match=f"{field} must be {allowed}"):
        TrainerConfig(**{field: value})


def test_warmup_fits_in_the_run_and_inverse_sqrt_needs_warmup():
    with pytest.raises(ValueError, match=r"warmup_steps must be an integer in \[0, max_steps=10\], got 20"):
        TrainerConfig(max_steps=10, warmup_steps=20)
    assert TrainerConfig(max_steps=10, warmup_steps=10).warmup_steps == 10
    with pytest.raises(ValueError, match=r"warmup_steps must be an integer in \[1, max_steps=1000\] for inverse_sqrt"):
        TrainerConfig(schedule="inverse_sqrt", warmup_steps=0)
    assert TrainerConfig(lr=np.float64(0.1)).lr == 0.1  # a float64 is a float
    with pytest.raises(ValueError, match=r"max_steps must be a positive integer, got .*10.* \(int64\)"):
        TrainerConfig(max_steps=np.int64(10))  # not an int: json.dumps, which writes checkpoints, refuses it


def test_seed_everything_and_runs_are_reproducible():
    draws = []
    for _ in range(2):
        seed_everything(3)
        draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]
    runs = [Trainer(toy_model(dropout=0.5), make_loss_fn(), toy_batch, replace(CPU, seed=1)).fit() for _ in range(2)]
    assert runs[0].train_loss == runs[1].train_loss
    other = Trainer(toy_model(dropout=0.5), make_loss_fn(), toy_batch, replace(CPU, seed=2)).fit()
    assert other.train_loss != runs[0].train_loss  # the seed drives dropout


def test_select_device(monkeypatch):
    monkeypatch.delenv("LLMBOOK_DEVICE", raising=False)
    assert select_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert select_device("auto").type == expected
    with pytest.raises(ValueError, match="device"):
        select_device("tpu")


def test_llmbook_device_overrides_auto_only(monkeypatch):
    # The book's checks set LLMBOOK_DEVICE=cpu so that a machine with a GPU reproduces the stored CPU-scale outputs.
    monkeypatch.setenv("LLMBOOK_DEVICE", "cpu")
    assert select_device("auto") == torch.device("cpu")
    monkeypatch.setenv("LLMBOOK_DEVICE", "tpu")
    with pytest.raises(ValueError, match="LLMBOOK_DEVICE must be one of"):
        select_device("auto")
    assert select_device("cpu") == torch.device("cpu")  # an explicit device ignores it



def test_the_optimizer_runs_adamws_fused_kernel_with_the_same_updates():
    fused = make_optimizer(toy_model(), CPU)
    assert fused.defaults["fused"] is True
    runs = []
    for use_fused in (True, False):
        model = toy_model()
        trainer = Trainer(model, make_loss_fn(), toy_batch, CPU)
        if not use_fused:  # the reference: torch's for-loop AdamW with the same groups and hyperparameters
            groups = [{"params": g["params"], "weight_decay": g["weight_decay"]}
                      for g in trainer.optimizer.param_groups]
            trainer.optimizer = torch.optim.AdamW(groups, lr=CPU.lr, betas=CPU.betas, eps=CPU.eps)
            assert not trainer.optimizer.defaults["fused"]
        trainer.fit()
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-6)


def test_loss_and_grad_norm_are_read_when_asked_and_equal_the_history():
    trainer = Trainer(toy_model(), make_loss_fn(), toy_batch, CPU)
    assert math.isnan(trainer.loss) and math.isnan(trainer.grad_norm)
    seen = []
    trainer.add_callback("on_step", lambda t: seen.append((t.loss, t.grad_norm)))
    history = trainer.fit()
    assert [loss for loss, _ in seen] == history.train_loss
    assert all(norm > 0 for _, norm in seen)
    unclipped = Trainer(toy_model(), make_loss_fn(), toy_batch, replace(CPU, grad_clip=None))
    unclipped.fit()
    assert math.isnan(unclipped.grad_norm)


def test_a_loss_that_is_not_finite_stops_training_with_an_error():
    def exploding(model, batch):
        loss = make_loss_fn()(model, batch)
        return loss * float("inf") if trainer.step == 3 else loss

    trainer = Trainer(toy_model(), exploding, toy_batch, CPU)
    with pytest.raises(FloatingPointError, match=r"the training loss is (inf|nan) at step 3: training diverged"):
        trainer.fit()
    assert trainer.history.step == [1, 2]


def test_bfloat16_precision_autocasts_and_trains_like_float32():
    dtypes = []

    def loss_fn(model, batch):
        x, y = batch
        logits = model(x)
        dtypes.append(logits.dtype)
        return F.cross_entropy(logits.float(), y)

    config = replace(CPU, max_steps=120)
    runs = {}
    for precision in ("float32", "bfloat16"):
        dtypes.clear()
        trainer = Trainer(toy_model(), loss_fn, toy_batch, replace(config, precision=precision))
        runs[precision] = trainer.fit().train_loss
        assert set(dtypes) == {torch.float32 if precision == "float32" else torch.bfloat16}
        assert trainer.model[0].weight.dtype == torch.float32  # the weights stay float32
    assert TrainerConfig(device="cpu").precision == "auto"
    assert Trainer(toy_model(), loss_fn, toy_batch, CPU).autocast_dtype is None  # auto: float32 on the CPU
    f32, bf16 = np.array(runs["float32"]), np.array(runs["bfloat16"])
    assert f32[-20:].mean() < 0.5 * f32[0]  # both learned...
    assert abs(bf16[-20:].mean() - f32[-20:].mean()) < 0.05 * f32[0]  # ...about equally well


def test_shard_batch_gives_each_process_an_equal_slice():
    x, y = torch.arange(12).view(6, 2), torch.arange(6)
    shards = [shard_batch({"x": x, "y": [y]}, rank, 3) for rank in range(3)]
    assert torch.equal(torch.cat([s["x"] for s in shards]), x)
    assert torch.equal(shards[1]["y"][0], torch.tensor([2, 3]))
    with pytest.raises(ValueError, match=r"a batch of \(6, 2\) does not split into 4 equal slices"):
        shard_batch((x, y), 0, 4)
