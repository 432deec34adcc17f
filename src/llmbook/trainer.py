"""The one training loop of the book: AdamW, a learning-rate schedule, gradient clipping, evaluation, checkpoints.

The trainer knows nothing about any particular model (minGPT's trainer is the model for this). It is given
- ``loss_fn(model, batch) -> Tensor``: the scalar loss of one batch (``make_loss_fn`` builds the usual one);
- ``train_batch(step) -> batch``: the batch for update number ``step``. Making the data a function of the step,
  not an iterator, is what lets a run resumed from a checkpoint see exactly the batches it would have seen;
- optionally ``val_batch(i)`` (the validation loss is the mean over ``i = 0 .. eval_batches - 1``) and
  ``eval_fn(model) -> dict`` for other metrics, such as exact match after decoding.
Callbacks ``on_step``, ``on_eval`` and ``on_checkpoint`` receive the trainer; the chapters use them to record
snapshots for their widgets. Checkpoints are safetensors files, never pickles.

Speed: AdamW runs its fused kernel, ``precision`` switches matmuls to bfloat16 autocast (the default "auto" does so
on CUDA GPUs that support it, where float32 matmuls also use TF32), and the host waits for the device only when a
number is read: at ``log_every`` steps, or when a callback reads ``loss`` or ``grad_norm``.

Scale-out: launched by ``torchrun --nproc_per_node=N script.py``, every process builds the same trainer; the trainer
joins the process group (NCCL on GPUs, gloo on CPUs), wraps the model in ``DistributedDataParallel`` and trains each
process on its slice of every batch, so N processes run the updates one process would run on the whole batch.
Progress bars and checkpoints are written by rank 0 only.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from llmbook.config import check_bool, check_choice, check_int, check_real, is_real

Batch = Any
LossFn = Callable[[nn.Module, Batch], Tensor]
SCHEDULES = ("constant", "linear", "cosine", "inverse_sqrt")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "float32", "bfloat16")
EVENTS = ("on_step", "on_eval", "on_checkpoint")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random generators (torch.manual_seed also seeds every GPU).

    Introduced in Chapter 1.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def select_device(device: str = "auto") -> torch.device:
    """The torch device for ``device``: "auto" picks CUDA, then Apple's MPS, then the CPU.

    The environment variable ``LLMBOOK_DEVICE`` (cpu, cuda or mps) overrides "auto": the book's checks set it to cpu,
    so that a machine with a GPU reproduces the stored CPU-scale outputs. Introduced in Chapter 1.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto" and os.environ.get("LLMBOOK_DEVICE"):
        device = os.environ["LLMBOOK_DEVICE"]
        if device not in DEVICES[1:]:
            raise ValueError(f"LLMBOOK_DEVICE must be one of {DEVICES[1:]}, got {device!r}")
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if device == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (device == "cuda" and not cuda) or (device == "mps" and not mps):
        raise ValueError(f"device={device!r} was asked for but is not available here; use 'auto' or 'cpu'")
    return torch.device(device)


def move_to(batch: Batch, device: torch.device) -> Batch:
    """The batch with every tensor in it (also inside tuples, lists and dicts) moved to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to(x, device) for x in batch)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch


@dataclass(frozen=True)
class TrainerConfig:
    """Hyperparameters of a training run. ``lr`` is the peak learning rate, reached at the end of warmup.

    Introduced in Chapter 1.
    """

    max_steps: int = 1000
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 0
    schedule: str = "constant"  # one of SCHEDULES; "linear" and "cosine" decay to 0 at max_steps
    grad_clip: float | None = 1.0  # clip the global gradient norm to this; None: no clipping
    eval_every: int = 0  # evaluate every eval_every steps and at max_steps; 0: never
    eval_batches: int = 10
    log_every: int = 1  # record the training loss and lr in the history every log_every steps
    seed: int = 0
    device: str = "auto"
    checkpoint_path: str | None = None  # when set, save here every checkpoint_every steps and at max_steps
    checkpoint_every: int = 0
    progress: bool = False  # show a tqdm progress bar
    # "bfloat16": autocast matmuls to bfloat16 (weights, optimizer and loss stay float32); "auto": bfloat16 on CUDA
    # GPUs that support it, float32 elsewhere (on CPUs its speed and its rounding depend on the instruction set).
    precision: str = "auto"

    def __post_init__(self) -> None:
        check_int(self, "max_steps", 1)
        check_real(self, "lr", 0, min_open=True)
        betas = self.betas
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(is_real(b) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"betas must be two real numbers in [0, 1), got {betas!r}")
        check_real(self, "eps", 0, min_open=True)
        check_real(self, "weight_decay", 0)
        check_choice(self, "schedule", SCHEDULES)
        # The run reaches the peak lr; the inverse square root schedule divides by warmup_steps.
        low = 1 if self.schedule == "inverse_sqrt" else 0
        allowed = f"an integer in [{low}, max_steps={self.max_steps}]" + (" for inverse_sqrt" if low else "")
        check_int(self, "warmup_steps", low, self.max_steps, allowed=allowed)
        check_real(self, "grad_clip", 0, min_open=True, optional=True)
        check_int(self, "eval_every", 0, allowed="an integer >= 0 (0 = never)")
        check_int(self, "eval_batches", 1)
        check_int(self, "log_every", 1)
        check_int(self, "seed", 0, 2**32 - 1)  # NumPy's seeds are 32-bit
        check_choice(self, "device", DEVICES)
        if self.checkpoint_path is not None and not isinstance(self.checkpoint_path, str):
            raise ValueError(f"checkpoint_path must be a str or None, got {self.checkpoint_path!r}")
        check_int(self, "checkpoint_every", 0, allowed="an integer >= 0 (0 = only at max_steps)")
        if self.checkpoint_every and self.checkpoint_path is None:
            raise ValueError(f"checkpoint_every must be 0 when checkpoint_path is None, got {self.checkpoint_every!r}")
        check_bool(self, "progress")
        check_choice(self, "precision", PRECISIONS)


def lr_at(step: int, config: TrainerConfig) -> float:
    """The learning rate of update number ``step`` (1 .. max_steps): linear warmup to ``config.lr``, then the schedule.

    "inverse_sqrt" is the Transformer paper's lr = d_model^-0.5 * min(step^-0.5, step * warmup^-1.5), rescaled so
    that its peak (at step = warmup) is ``config.lr``; ``transformer_peak_lr`` gives the paper's peak. Introduced in
    Chapter 1.
    """
    peak, warmup = config.lr, config.warmup_steps
    if step <= 0:
        return 0.0 if warmup else peak
    if config.schedule == "inverse_sqrt":
        return peak * warmup**0.5 * min(step**-0.5, step * warmup**-1.5)
    if step < warmup:
        return peak * step / warmup
    if config.schedule == "constant":
        return peak
    progress = min(1.0, (step - warmup) / max(1, config.max_steps - warmup))  # 0 after warmup, 1 at max_steps
    if config.schedule == "linear":
        return peak * (1.0 - progress)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def transformer_peak_lr(d_model: int, warmup_steps: int) -> float:
    """The paper's peak learning rate (d_model * warmup)^-0.5, e.g. 7.0e-4 for d_model 512 and 4000 warmup steps.

    Introduced in Chapter 1.
    """
    return (d_model * warmup_steps) ** -0.5


def cross_entropy_loss(logits: Tensor, targets: Tensor, ignore_index: int = -100,
                       label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of (..., V) logits against (...) targets, skipping ``ignore_index`` positions.

    With label smoothing eps the target is (1 - eps) on the right token plus eps spread uniformly over all V
    tokens, so the loss is (1 - eps) * NLL + eps * (cross-entropy with the uniform distribution). Equals
    ``F.cross_entropy(..., label_smoothing=eps)``. Introduced in Chapter 1.
    """
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    log_probs = logits.reshape(-1, logits.shape[-1]).float().log_softmax(dim=-1)  # (N, V)
    targets = targets.reshape(-1)  # (N,)
    keep = targets != ignore_index
    log_probs, targets = log_probs[keep], targets[keep]  # (N', V), (N',)
    nll = -log_probs.gather(1, targets[:, None]).squeeze(1)  # (N',)
    uniform = -log_probs.mean(dim=-1)  # (N',)
    return ((1 - label_smoothing) * nll + label_smoothing * uniform).mean()


def make_loss_fn(ignore_index: int = -100, label_smoothing: float = 0.0) -> LossFn:
    """A ``loss_fn`` for batches ``(*model_inputs, targets)``: cross-entropy of ``model(*model_inputs)``.

    Works for language models, batch (x, y), and encoder-decoders, batch (src, tgt_in, tgt_out). A model that
    returns a tuple whose first element is the logits (as ``GPTClassifier``) is fine. Introduced in Chapter 1.
    """
    if not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")

    def loss_fn(model: nn.Module, batch: Batch) -> Tensor:
        *inputs, targets = batch
        logits = model(*inputs)
        if isinstance(logits, tuple):
            logits = logits[0]
        return cross_entropy_loss(logits, targets, ignore_index, label_smoothing)

    return loss_fn


def make_optimizer(model: nn.Module, config: TrainerConfig) -> torch.optim.AdamW:
    """AdamW that decays matrices (linear and embedding weights) but not biases and LayerNorm gains (as nanoGPT).

    Decaying a bias or a gain towards 0 does not make the function simpler, it only shifts or shrinks it. The update
    runs AdamW's fused kernel (one pass over all parameters instead of a loop of small operations) on the CPU and on
    CUDA, where torch has it (2.4 and later). Introduced in Chapter 1.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    fused = _has_fused_adamw() and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=fused or None)


def _has_fused_adamw() -> bool:
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return (major, minor) >= (2, 4)  # the CPU kernel arrived in 2.4


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype ``precision`` autocasts matmuls to on ``device``, None for plain float32. Introduced in Chapter 1."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if precision == "bfloat16" else None


def shard_batch(batch: Batch, rank: int, world_size: int) -> Batch:
    """Process ``rank``'s slice of ``batch``: rows [rank * B / N, (rank + 1) * B / N) of every tensor in it.

    Equal slices: the mean loss of each slice, averaged over the N processes by DistributedDataParallel, is then the
    mean loss of the whole batch. Introduced in Chapter 1.
    """
    if isinstance(batch, Tensor):
        if batch.dim() == 0 or batch.shape[0] % world_size:
            raise ValueError(f"a batch of {tuple(batch.shape)} does not split into {world_size} equal slices of its "
                             "first dimension; make the batch size a multiple of the number of processes")
        size = batch.shape[0] // world_size
        return batch[rank * size:(rank + 1) * size]
    if isinstance(batch, (tuple, list)):
        return type(batch)(shard_batch(x, rank, world_size) for x in batch)
    if isinstance(batch, dict):
        return {k: shard_batch(v, rank, world_size) for k, v in batch.items()}
    return batch


def load_model_weights(path: str, model: nn.Module) -> nn.Module:
    """Load the model weights of a trainer checkpoint (a safetensors file) into ``model``. Introduced in Chapter 1."""
    model.load_state_dict({k.removeprefix("model."): v for k, v in load_file(path).items() if k.startswith("model.")})
    return model


def _cpu_copy(t: Tensor) -> Tensor:
    # A copy, not a view: safetensors refuses tensors that share memory, as tied embeddings do.
    return t.detach().to("cpu", copy=True).contiguous()


@dataclass
class History:
    """What ``Trainer.fit`` records, as plain lists for plotting: train loss and lr every ``log_every`` steps,
    evaluation metrics (``eval["val_loss"]`` and those of ``eval_fn``) at ``eval_step``. Introduced in Chapter 1.
    """

    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval: dict[str, list[float]] = field(default_factory=dict)


class Trainer:
    """Trains any model on any data given a loss function and a batch function; see the module docstring.

    State that callbacks may read: ``step`` (updates done), ``loss`` and ``lr`` of the latest step, ``grad_norm``
    (before clipping; NaN without clipping), ``metrics`` of the latest evaluation, ``history``; under torchrun
    ``rank`` and ``world_size`` (0 and 1 otherwise). ``loss`` is the mean over all processes. Introduced in
    Chapter 1.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, train_batch: Callable[[int], Batch],
                 config: TrainerConfig | None = None, val_batch: Callable[[int], Batch] | None = None,
                 eval_fn: Callable[[nn.Module], dict[str, float]] | None = None) -> None:
        self.config = config if config is not None else TrainerConfig()
        self.device = select_device(self.config.device)
        self.rank, self.world_size = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun with several processes
            self._join_process_group()
        if self.device.type == "cuda":  # TF32 matmuls: float32 range, 10-bit mantissa, several times faster
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.autocast_dtype = autocast_dtype(self.config.precision, self.device)
        self.model = model.to(self.device)
        # The module that training runs: under torchrun, DDP averages the gradients of the processes in backward.
        self.train_model: nn.Module = self.model
        if self.world_size > 1:
            self.train_model = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type ==
                                                       "cuda" else None)
        self.loss_fn, self.train_batch, self.val_batch, self.eval_fn = loss_fn, train_batch, val_batch, eval_fn
        self.optimizer = make_optimizer(self.model, self.config)
        self.history = History()
        self.step, self.lr = 0, 0.0
        self._loss: Tensor | None = None  # read lazily: .item() makes the host wait for the device
        self._grad_norm: Tensor | None = None
        self.metrics: dict[str, float] = {}
        self.callbacks: dict[str, list[Callable[[Trainer], None]]] = {event: [] for event in EVENTS}

    def _join_process_group(self) -> None:
        if self.device.type == "mps":
            raise ValueError("torchrun with several processes needs device='cpu' or 'cuda'; MPS has no process group")
        if self.device.type == "cuda":  # one GPU per process
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    @property
    def loss(self) -> float:
        """The training loss of the latest step (the mean over all processes); NaN before the first step."""
        return math.nan if self._loss is None else self._loss.item()

    @property
    def grad_norm(self) -> float:
        """The global gradient norm of the latest step, before clipping; NaN without clipping."""
        return math.nan if self._grad_norm is None else self._grad_norm.item()

    def add_callback(self, event: str, fn: Callable[[Trainer], None]) -> None:
        """Call ``fn(trainer)`` on ``event``: "on_step" (after every update), "on_eval", "on_checkpoint"."""
        if event not in EVENTS:
            raise ValueError(f"event must be one of {EVENTS}, got {event!r}")
        self.callbacks[event].append(fn)

    def _fire(self, event: str) -> None:
        for fn in self.callbacks[event]:
            fn(self)

    def _autocast(self) -> torch.autocast:
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The validation loss over ``eval_batches`` batches (when ``val_batch`` is given) and ``eval_fn``'s metrics."""
        self.model.eval()
        metrics = {}
        if self.val_batch is not None:
            with self._autocast():
                losses = [self.loss_fn(self.model, move_to(self.val_batch(i), self.device)).item()
                          for i in range(self.config.eval_batches)]
            metrics["val_loss"] = sum(losses) / len(losses)
        if self.eval_fn is not None:
            metrics.update(self.eval_fn(self.model))
        self.model.train()
        return metrics

    def _train_step(self) -> None:
        """One update: forward and loss (autocast if asked), backward, clipping, AdamW. Nothing waits for the device."""
        batch = self.train_batch(self.step)
        if self.world_size > 1:
            batch = shard_batch(batch, self.rank, self.world_size)
        with self._autocast():
            loss = self.loss_fn(self.train_model, move_to(batch, self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            self._grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        loss = loss.detach()
        if self.world_size > 1:
            dist.all_reduce(loss)  # the sum over processes
            loss /= self.world_size
        self._loss = loss

    def fit(self, steps: int | None = None) -> History:
        """Train until ``config.max_steps``, or for at most ``steps`` more updates; return the whole history.

        A fresh trainer seeds everything with ``config.seed`` (plus the rank, so that processes draw different
        dropout masks) first; a resumed one continues its saved generators. A loss that is not finite stops the run
        with an error at the next logged step.
        """
        c = self.config
        if self.step == 0:
            seed_everything(c.seed + self.rank)
        end = c.max_steps if steps is None else min(c.max_steps, self.step + steps)
        bar = tqdm(total=end - self.step, disable=not c.progress or self.rank != 0)
        self.model.train()
        while self.step < end:
            self.step += 1
            self.lr = lr_at(self.step, c)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr
            self._train_step()
            if self.step % c.log_every == 0:
                loss = self.loss
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"the training loss is {loss} at step {self.step}: training diverged. Lower lr "
                        f"(now {c.lr}), raise warmup_steps (now {c.warmup_steps}) or clip gradients (grad_clip)")
                self.history.step.append(self.step)
                self.history.train_loss.append(loss)
                self.history.lr.append(self.lr)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update(1)
            self._fire("on_step")
            if c.eval_every and (self.step % c.eval_every == 0 or self.step == c.max_steps):
                self.metrics = self.evaluate()
                self.history.eval_step.append(self.step)
                for name, value in self.metrics.items():
                    self.history.eval.setdefault(name, []).append(value)
                self._fire("on_eval")
            if c.checkpoint_path and ((c.checkpoint_every and self.step % c.checkpoint_every == 0)
                                      or self.step == c.max_steps):
                if self.rank == 0:
                    self.save_checkpoint(c.checkpoint_path)
        bar.close()
        return self.history

    def save_checkpoint(self, path: str) -> None:
        """Save model, optimizer state, random generators, step and history to a safetensors file.

        Optimizer state tensors are stored under "optimizer.<param index>.<name>" (e.g. "optimizer.3.exp_avg"), the
        optimizer's hyperparameters, the step, the config and the history as JSON metadata.
        """
        tensors = {f"model.{k}": _cpu_copy(v) for k, v in self.model.state_dict().items()}
        optimizer_state = self.optimizer.state_dict()
        for i, state in optimizer_state["state"].items():
            tensors.update({f"optimizer.{i}.{name}": _cpu_copy(v) for name, v in state.items()})
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        metadata = {"step": str(self.step), "param_groups": json.dumps(optimizer_state["param_groups"]),
                    "config": json.dumps(asdict(self.config)), "history": json.dumps(asdict(self.history))}
        save_file(tensors, path, metadata=metadata)
        self._fire("on_checkpoint")

    def load_checkpoint(self, path: str) -> None:
        """Restore a checkpoint written by ``save_checkpoint``; ``fit()`` then continues exactly where it stopped."""
        tensors = load_file(path)
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata()
        self.model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
        torch.set_rng_state(tensors["rng.cpu"])
        if torch.cuda.is_available() and f"rng.cuda.{torch.cuda.device_count() - 1}" in tensors:
            torch.cuda.set_rng_state_all([tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count())])
        self.step = int(metadata["step"])
        self.history = History(**json.loads(metadata["history"]))
