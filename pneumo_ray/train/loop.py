"""The train/evaluate loop: plain PyTorch, no Ray. Used unchanged by a plain call, by Ray Train
workers (pass rank/world and a DDP-wrapped model) and by Tune trials (via `on_epoch`).

A phase can stop after any epoch and continue later as if it never had: `fit(on_state=...)` hands
out the full `TrainingState` after every epoch (weights, optimizer moments, schedule, the global
random streams, the FitResult so far) and `fit(resume=state)` carries on from it. On the CPU the
continued run is bit-identical to an uninterrupted one."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike

from pneumo_ray.analysis.metrics import decision_threshold, roc_auc
from pneumo_ray.config.train import COMPILE_MODES
from pneumo_ray.data.study_data import ImageSet
from pneumo_ray.storage.progress import progress as progress_report
from pneumo_ray.train.augment import Augment, Normalize, to_float
from pneumo_ray.train.device_data import Batches, batches, on_device
from pneumo_ray.train.ema import WeightEMA
from pneumo_ray.train.models import train_mode
from pneumo_ray.train.photometric import Photometric
from pneumo_ray.train.tta import views


@dataclass(frozen=True, kw_only=True)
class Phase:
    """Hyper-parameters of one training phase (pre-training or fine-tuning). Keyword-only: a dozen
    positional values of the same types would train silently with two of them swapped."""

    name: str
    epochs: int
    lr: float
    batch_size: int = 32
    aug_strength: float = 0.5
    hflip: bool = False
    class_weight: str | float = "auto"
    class_weight_scale: float = 1.0
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    seed: int = 0
    # the ingredients (config/ingredients.py), off by default
    ema: float = 0.0
    mixup: float = 0.0
    label_smoothing: float = 0.0
    photometric: float = 0.0
    tta: bool = False


@dataclass
class FitResult:
    history: list[dict]
    best_state: dict | None  # state dict (CPU) of the best-validation epoch (last epoch without val)
    best_epoch: int
    best_val_auc: float
    normalize: Normalize
    weights: tuple[float, float]
    best_val_probs: np.ndarray | None = None  # validation probabilities of the best epoch
    threshold: float = 0.5  # the decision rule of this phase's loss (metrics.decision_threshold)


@dataclass(frozen=True)
class RandomState:
    """The global random streams: torch's CPU generator, the CUDA device's (None off CUDA), numpy's
    and Python's. The loop's shuffles and augmentation draw from their own seeded generators; what
    draws from these is dropout (torch's, on the model's device)."""

    cpu: torch.Tensor  # torch.get_rng_state(): uint8
    cuda: torch.Tensor | None  # torch.cuda.get_rng_state(device): uint8
    numpy: tuple  # np.random.get_state()
    python: tuple  # random.getstate()

    @staticmethod
    def capture(device: torch.device) -> RandomState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return RandomState(torch.get_rng_state(), cuda, np.random.get_state(), random.getstate())

    def restore(self, device: torch.device) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None and device.type == "cuda":
            torch.cuda.set_rng_state(self.cuda, device)
        np.random.set_state(self.numpy)
        random.setstate(self.python)


@dataclass(frozen=True, kw_only=True)
class TrainingState:
    """Everything `fit` needs to continue `phase` after `epoch` as if it had never stopped. All
    tensors are CPU copies: the state stays valid while training goes on.
    checkpoints.save_training_state / load_training_state write and read it (safetensors + JSON)."""

    phase: Phase
    world: int  # the shards depend on it: a state resumes only with the same number of workers
    epoch: int  # the last completed epoch (1-based)
    model: dict[str, torch.Tensor]  # the bare model's state dict (no DDP "module." prefix)
    optimizer: dict[str, Any]  # optimizer.state_dict()
    scheduler: dict[str, Any] | None  # lr_scheduler.state_dict(), None without a schedule
    rng: RandomState
    result: FitResult  # the FitResult after `epoch`: history, best epoch and weights, normalization
    ema: dict[str, torch.Tensor] | None = None  # WeightEMA.state_dict() (phase.ema > 0), else None


def _cpu_copy(obj: Any) -> Any:
    """A deep copy with every tensor detached and on the CPU (optimizer and model state dicts)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def _snapshot(result: FitResult) -> FitResult:
    """A copy of the FitResult that later epochs do not change (they replace best_state, never edit it)."""
    return dataclasses.replace(result, history=[dict(h) for h in result.history])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA GPU")
    return torch.device(name)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def class_weights(labels: ArrayLike, spec: str | float = "auto", scale: float = 1.0) -> tuple[float, float]:
    """(NORMAL weight, PNEUMONIA weight). 'auto' = inverse class frequency, PNEUMONIA fixed at 1;
    `scale` multiplies the NORMAL weight."""
    labels = np.asarray(labels)
    n0, n1 = int((labels == 0).sum()), int((labels == 1).sum())
    if spec == "auto":
        if n0 == 0 or n1 == 0:
            raise ValueError(
                f"class_weight 'auto' needs both classes in the training set (NORMAL {n0}, PNEUMONIA {n1})"
            )
        return scale * n1 / n0, 1.0
    return scale * float(spec), 1.0


def normalizer_for(data: ImageSet, max_images: int = 2000, seed: int = 0) -> Normalize:
    """Mean/std of the (sampled) training images in [0, 1]: the normalization of that phase."""
    rows = np.sort(np.random.default_rng(seed).choice(len(data), min(len(data), max_images), replace=False))
    x = data.batch(rows).astype(np.float64) / 255.0
    return Normalize(float(x.mean()), float(max(x.std(), 1e-3)))


def _sub_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1)[0])


def epoch_order(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[np.ndarray]:
    """Seeded shuffle, sharded across `world` workers with equal batch counts (DDP needs them equal)."""
    perm = np.random.default_rng(_sub_seed(seed, epoch)).permutation(n)
    per_worker = n // world
    mine = perm[rank * per_worker : (rank + 1) * per_worker] if world > 1 else perm
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


def _inputs(batch_u8: torch.Tensor, channels_last: bool) -> torch.Tensor:
    x = to_float(batch_u8)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _targets(y: torch.Tensor, smoothing: float) -> torch.Tensor:
    """BCE targets: the labels, or with label smoothing ε: ε/2 and 1 − ε/2."""
    return y * (1 - smoothing) + smoothing / 2 if smoothing else y


def _weighted_bce(logits, y, weights, smoothing: float = 0.0) -> torch.Tensor:
    w = torch.where(y > 0.5, weights[1], weights[0])
    bce = F.binary_cross_entropy_with_logits(logits.float(), _targets(y, smoothing), reduction="none")
    return (bce * w).sum() / w.sum()


def _mixup_bce(logits, y, weights, lam: float, smoothing: float = 0.0) -> torch.Tensor:
    """The loss of the batch mixed as lam·x + (1 − lam)·x.flip(0): each image's two labels, each with
    its own class weight, weighted lam and 1 − lam (and smoothed alike), normalised by the total
    weight. So every class keeps its total weight in the loss, and the decision rule of the unmixed
    loss is kept (metrics.decision_threshold says how near it is); at lam = 1 this is `_weighted_bce`."""
    z, y2 = logits.float(), y.flip(0)
    a = lam * torch.where(y > 0.5, weights[1], weights[0])
    b = (1 - lam) * torch.where(y2 > 0.5, weights[1], weights[0])
    bce_a = F.binary_cross_entropy_with_logits(z, _targets(y, smoothing), reduction="none")
    bce_b = F.binary_cross_entropy_with_logits(z, _targets(y2, smoothing), reduction="none")
    return (a * bce_a + b * bce_b).sum() / (a + b).sum()


def compiled(model: torch.nn.Module, mode: bool | str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """What the training steps call: `model` itself (mode False/None) or torch.compile(model, mode=...)
    (True = "default"; "reduce-overhead" adds CUDA graphs on a GPU). The compiled module shares the
    model's parameters; evaluation calls the model itself. An epoch's last, smaller batch is a second
    shape: it is compiled once more (and gets its own CUDA graph), then both are reused."""
    if mode is None or mode is False:
        return model
    mode = "default" if mode is True else mode
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r}: choose one of {', '.join(COMPILE_MODES)}")
    return torch.compile(model, mode=mode)


def train_one_epoch(
    model: torch.nn.Module,
    data: Batches,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    *,
    augment: Augment,
    normalize: Normalize,
    weights: tuple[float, float],
    device: torch.device,
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: str | None = None,
    photometric: float = 0.0,
    mixup: float = 0.0,
    label_smoothing: float = 0.0,
    ema: WeightEMA | None = None,
) -> dict:
    """One epoch over this worker's shard. `data` is an ImageSet (batches copied from the host) or a
    ResidentSet (gathered on the device); `forward` replaces `model(x)` (e.g. its torch.compile).
    The ingredients (off at 0 / None): `photometric` strength (before the warp), `mixup` alpha (each
    batch mixed with itself reversed, λ ~ Beta(alpha, alpha)), `label_smoothing` of the BCE targets,
    and the weight `ema` updated after every step. The photometric and mixup draws come from
    generators of their own, seeded per epoch and rank: with them off every number is as before.

    The loss is summed on the device and read once, at the end: no step waits for the host. The sum is
    float64 of each batch's float32 loss times its size, in batch order: exactly what adding up
    `loss.item() * len(rows)` on the host gave."""
    model.train()
    train_mode(unwrap(model))
    forward = model if forward is None else forward  # an OptimizedModule has no truth value (it asks len())
    cuda = device.type == "cuda"
    gen = torch.Generator().manual_seed(_sub_seed(seed, epoch, rank, 7))
    photo = Photometric(photometric) if photometric else None
    photo_gen = torch.Generator().manual_seed(_sub_seed(seed, epoch, rank, 11)) if photo else None
    mix_rng = np.random.default_rng(_sub_seed(seed, epoch, rank, 13)) if mixup else None
    w = torch.tensor(weights, device=device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    seen, t0 = 0, time.time()
    order = epoch_order(len(data), batch_size, seed, epoch, rank, world)
    bar = progress_report(sum(map(len, order)), progress or "", enabled=progress is not None, unit="img")
    last = len(order) - 1
    for step, (batch_u8, y) in enumerate(batches(data, order, device)):
        x = _inputs(batch_u8, cuda)
        if photo is not None:
            x = photo(x, photo_gen)
        x = augment(x, gen, normalize)
        lam = float(mix_rng.beta(mixup, mixup)) if mix_rng is not None else None
        if lam is not None:  # a scalar on the host: no copy to the device
            x = x.mul(lam).add_(x.flip(0), alpha=1 - lam)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits = forward(x)
        if lam is None:
            loss = _weighted_bce(logits, y, w, label_smoothing)
        else:
            loss = _mixup_bce(logits, y, w, lam, label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update(unwrap(model))
        total += loss.detach().double() * len(y)
        seen += len(y)
        # the running loss is read only when a line is written, and on a GPU only at the epoch's end:
        # a terminal's bar redraws every 0.5 s, and each read would make the host wait for the device
        shown = step == last or not cuda
        bar.update(len(y), **({"loss": lambda t=total, n=seen: t.item() / n} if shown else {}))
    train_loss = total.item() / max(seen, 1)  # the epoch's one wait for the device
    bar.close()
    seconds = time.time() - t0
    return dict(
        train_loss=train_loss,
        train_images=seen,
        train_seconds=seconds,
        train_images_per_s=seen / max(seconds, 1e-9),
    )


def _mean(probs: list[torch.Tensor]) -> torch.Tensor:
    """The mean of the views' probabilities, added one view after the other: a reduction over a
    stacked dimension rounds differently with the batch's size (measured: 6e-8)."""
    total = probs[0]
    for p in probs[1:]:
        total = total + p
    return total / len(probs)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    data: Batches,
    *,
    normalize: Normalize,
    device: torch.device,
    batch_size: int = 128,
    tta: bool = False,
) -> np.ndarray:
    """P(PNEUMONIA) for every image of `data` (an ImageSet or a ResidentSet), in order (no random
    augmentation; `tta`: the mean probability over tta.VIEWS); the probabilities stay on the device
    until the last batch."""
    net = unwrap(model)
    was_training = net.training
    net.eval()
    cuda = device.type == "cuda"
    rows = np.arange(len(data))
    order = [rows[i : i + batch_size] for i in range(0, len(data), batch_size)]
    out = []
    for batch_u8, _ in batches(data, order, device, labels=False):
        x = _inputs(batch_u8, cuda)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            if tta:
                out.append(_mean([torch.sigmoid(net(v).float()) for v in views(x, normalize)]))
            else:
                out.append(torch.sigmoid(net(normalize(x)).float()))
    net.train(was_training)
    return torch.cat(out).cpu().numpy().astype(np.float64) if out else np.zeros(0)


def evaluate(
    model: torch.nn.Module,
    data: Batches,
    *,
    normalize: Normalize,
    weights: tuple[float, float],
    device: torch.device,
    batch_size: int = 128,
    tta: bool = False,
) -> dict:
    """Loss (class-weighted, as in training, on the hard labels), AUC and the probabilities on a
    labelled set (`tta`: predict's test-time augmentation)."""
    probs = predict(model, data, normalize=normalize, device=device, batch_size=batch_size, tta=tta)
    p = torch.from_numpy(probs).clamp(1e-7, 1 - 1e-7)
    y = torch.tensor(data.labels, dtype=torch.float64)
    w = torch.where(y > 0.5, weights[1], weights[0])
    loss = float((F.binary_cross_entropy(p, y, reduction="none") * w).sum() / w.sum())
    return dict(loss=loss, auc=roc_auc(data.labels, probs), probs=probs)


def make_optimizer(
    model: torch.nn.Module, phase: Phase, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    params = [p for p in model.parameters() if p.requires_grad]
    cls = torch.optim.AdamW if phase.optimizer == "adamw" else torch.optim.Adam
    opt = cls(params, lr=phase.lr, weight_decay=phase.weight_decay)
    if phase.schedule == "cosine":
        # cosine decay to 1% of the peak over the whole phase, stepped per batch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s / max(steps, 1), 1.0)))
        )
    else:
        sched = None
    return opt, sched


def _resumed(
    state: TrainingState,
    phase: Phase,
    world: int,
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    ema: WeightEMA | None = None,
) -> FitResult:
    """Put the model, optimizer, schedule, weight EMA and random streams back as they were after
    `state.epoch`."""
    if state.phase != phase:
        raise ValueError(f"resume: the saved state is of {state.phase}, not of {phase}")
    if state.world != world:
        raise ValueError(f"resume: the saved state was trained by {state.world} worker(s), not {world}")
    net.load_state_dict(state.model, strict=True)
    if ema is not None:
        ema.load_state_dict(state.ema)
    optimizer.load_state_dict(state.optimizer)
    if scheduler is not None:
        scheduler.load_state_dict(_cpu_copy(state.scheduler))  # a copy: LambdaLR pops from the dict it loads
    state.rng.restore(device)
    return _snapshot(state.result)


def fit(
    model: torch.nn.Module,
    train: ImageSet,
    val: ImageSet | None,
    phase: Phase,
    *,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    on_epoch: Callable[[dict, torch.nn.Module, FitResult], object] | None = None,
    on_state: Callable[[TrainingState], object] | None = None,
    resume: TrainingState | None = None,
    resident: bool | None = None,
    compile: bool | str = False,
    progress: bool = True,
    log: Callable[[str], object] | None = print,
) -> FitResult:
    """Train `model` for `phase.epochs`; keep the epoch with the best validation AUC.

    `on_epoch(record, model, result)` is called after every epoch with the FitResult so far (Ray reports
    from there; `record["best_epoch"] == record["epoch"]` when this epoch is the new best); the model may be
    DDP-wrapped, in which case each worker trains on its shard (`rank`, `world`) and every worker
    evaluates the full validation set, so all of them agree on the metrics.

    `on_state(state)` is called after every epoch, just BEFORE on_epoch, with the full TrainingState:
    a caller that reports metrics and a checkpoint together (Ray) saves the state there and reports it
    with on_epoch's metrics; and a trial that Tune stops inside on_epoch has saved its state already.
    Neither callback can move the training's random streams (they are put back after both).
    `resume=state` continues after `state.epoch` (same phase and world; `model` freshly built): the
    history keeps each epoch once, and on the CPU every number is what the uninterrupted run gives.

    `resident`: hold the training and validation images on `device` and gather batches there (None:
    on CUDA only; the numbers are the same either way). `compile`: train through torch.compile(model)
    (True or a mode of COMPILE_MODES; see `compiled`).
    """
    net = unwrap(model)
    if device.type == "cuda":
        net.to(memory_format=torch.channels_last)
    normalize = normalizer_for(train, seed=phase.seed)
    weights = class_weights(train.labels, phase.class_weight, phase.class_weight_scale)
    augment = Augment(phase.aug_strength, phase.hflip)
    ema = WeightEMA(net, phase.ema) if phase.ema else None
    scored = ema.model if ema is not None else model  # what validation, selection and best_state see
    steps_per_epoch = math.ceil((len(train) // world) / phase.batch_size)
    optimizer, scheduler = make_optimizer(model, phase, steps_per_epoch * phase.epochs)
    result = FitResult(
        [],
        None,
        0,
        -math.inf,
        normalize,
        weights,
        threshold=decision_threshold(weights, train.class_counts(), phase.label_smoothing),
    )
    if resume is not None:
        result = _resumed(resume, phase, world, net, optimizer, scheduler, device, ema)
    first = resume.epoch + 1 if resume is not None else 1
    train_data = on_device(train, device, resident)
    val_data = on_device(val, device, resident) if val is not None and len(val) else None
    forward = compiled(model, compile)
    show = progress and rank == 0
    for epoch in range(first, phase.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.time()
        rec = dict(phase=phase.name, epoch=epoch, lr=lr)
        rec.update(
            train_one_epoch(
                model,
                train_data,
                optimizer,
                scheduler,
                augment=augment,
                normalize=normalize,
                weights=weights,
                device=device,
                batch_size=phase.batch_size,
                seed=phase.seed,
                epoch=epoch,
                rank=rank,
                world=world,
                forward=forward,
                progress=f"{phase.name} epoch {epoch}/{phase.epochs}" if show else None,
                photometric=phase.photometric,
                mixup=phase.mixup,
                label_smoothing=phase.label_smoothing,
                ema=ema,
            )
        )
        if val_data is not None:
            ev = evaluate(scored, val_data, normalize=normalize, weights=weights, device=device, tta=phase.tta)
            rec.update(val_loss=ev["loss"], val_auc=ev["auc"])
            improved = ev["auc"] > result.best_val_auc
        else:
            improved = True  # no validation: the last epoch is the result
        rec["epoch_seconds"] = time.time() - t0
        if improved:
            result.best_val_auc = rec.get("val_auc", math.nan)
            result.best_epoch = epoch
            best = unwrap(scored).state_dict()
            result.best_state = {k: v.detach().to("cpu", copy=True) for k, v in best.items()}
            result.best_val_probs = ev["probs"] if "val_auc" in rec else None
        rec["best_epoch"] = result.best_epoch
        rec["best_val_auc"] = result.best_val_auc
        result.history.append(rec)
        if show and log:
            val_txt = f"  val_loss {rec['val_loss']:.4f}  val_auc {rec['val_auc']:.4f}" if "val_auc" in rec else ""
            log(
                f"{phase.name} epoch {epoch}/{phase.epochs}  train_loss {rec['train_loss']:.4f}{val_txt}"
                f"  lr {lr:.2e}  {rec['train_images_per_s']:.0f} img/s  {rec['epoch_seconds']:.1f}s"
            )
        rng = RandomState.capture(device)
        if on_state is not None:
            on_state(
                TrainingState(
                    phase=phase,
                    world=world,
                    epoch=epoch,
                    model=_cpu_copy(net.state_dict()),
                    optimizer=_cpu_copy(optimizer.state_dict()),
                    scheduler=_cpu_copy(scheduler.state_dict()) if scheduler is not None else None,
                    rng=rng,
                    result=_snapshot(result),
                    ema=_cpu_copy(ema.state_dict()) if ema is not None else None,
                )
            )
        if on_epoch is not None:
            on_epoch(rec, model, result)
        rng.restore(device)
    return result
