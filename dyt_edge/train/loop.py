"""The training loop: :func:`train` loads the data, builds the model (backbone weights,
initialisations, gate bias, freezing), fits it with the recipe, evaluates it on the held-out
split the training never sees (see :mod:`dyt_edge.data`) and saves it.

Runs are deterministic for a given seed and thread count: seeds for python/numpy/torch, a fixed
thread count, ``torch.use_deterministic_algorithms`` (restored afterwards), a seeded shuffle.
A ``time_limit_s`` that stops training early makes the result depend on machine speed.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..artifacts import utc_now
from ..config import DyTConfig, Preprocessing
from ..errors import ConfigError, DataError
from ..token_maps import ascii_token_maps, choose_shown, shown_images, token_maps
from .backbone import init_pos_embed, load_backbone, mimetic_init, read_backbone_weights
from .evaluation import Evaluation, background_rates, evaluate, patch_background
from .presets import TrainConfig, model_config, resolve
from .recipe import augment, dyt_loss, lr_at, param_groups, seed_everything

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..data import ImageSet
    from ..model import DyTVisionTransformer

SHOWCASE_IMAGES = 3
KIND = "train"
SCHEMA_VERSION = 1
"""Version of :meth:`TrainResult.to_dict` (``dyt-edge train --json``, ``docs/reports.md``)."""
"""digits: held-out images drawn in :attr:`TrainResult.showcase`."""


@dataclass
class TrainEvent:
    """What :func:`train` reports to its ``progress`` callback."""

    kind: str
    """``note`` (a message), ``start``, ``step``, ``epoch``, ``eval`` or ``done``."""
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    """Total optimisation steps of the run."""
    loss: Optional[float] = None
    activation: Optional[float] = None
    accuracy: Optional[float] = None
    elapsed_s: float = 0.0
    message: Optional[str] = None


@dataclass
class TrainResult:
    """What :func:`train` returns: the model and how it did."""

    model: "DyTVisionTransformer"
    config: TrainConfig
    """The resolved configuration (every default filled in)."""
    model_config: DyTConfig
    history: list[dict[str, float]]
    """One row per epoch: loss terms, training accuracy and activation, lr, seconds."""
    accuracy: float
    """Held-out accuracy with exact dispatch (eval mode, ``topk``)."""
    accuracy_complete: float
    """Held-out accuracy of the same network with every token active."""
    activation_mean: float
    """Measured held-out activation rate (share of patch tokens the dispatchers keep)."""
    activation_per_dispatcher: list[float]
    dispatchers: list[str]
    seconds: float
    """Wall time of the training loop (data loading and evaluation excluded)."""
    total_seconds: float
    train_size: int
    test_size: int
    data_name: str
    skipped: int = 0
    checkpoint: Optional[Path] = None
    background_activation: Optional[float] = None
    """digits: activation on background patches (pixel == 0), and on digit patches."""
    foreground_activation: Optional[float] = None
    background_per_dispatcher: Optional[list[float]] = None
    foreground_per_dispatcher: Optional[list[float]] = None
    showcase: Optional[str] = None
    """digits: ASCII pictures of held-out digits next to each dispatcher's token map."""
    notes: list[str] = field(default_factory=list)
    stopped_early: bool = False
    created: str = ""
    """When the held-out evaluation finished (ISO-8601 UTC)."""

    def summary(self) -> dict[str, Any]:
        """JSON-able numbers (what the checkpoint metadata records)."""
        return {
            "data": self.data_name, "train_size": self.train_size, "test_size": self.test_size,
            "accuracy": self.accuracy, "accuracy_complete": self.accuracy_complete,
            "activation_mean": self.activation_mean,
            "activation_per_dispatcher": self.activation_per_dispatcher,
            "background_activation": self.background_activation,
            "foreground_activation": self.foreground_activation,
            "epochs_run": len(self.history), "seconds": round(self.seconds, 2),
            "stopped_early": self.stopped_early,
        }

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` report (``docs/reports.md``): the common header, where the model was
        saved, the resolved configuration, :meth:`summary`'s numbers, the dispatcher names,
        the per-epoch history and the notes."""
        from ..reports import report_header

        return {**report_header(KIND, SCHEMA_VERSION, self.created),
                "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
                "config": self.config.to_dict(), **self.summary(),
                "total_seconds": round(self.total_seconds, 2),
                "dispatchers": list(self.dispatchers),
                "background_per_dispatcher": self.background_per_dispatcher,
                "foreground_per_dispatcher": self.foreground_per_dispatcher,
                "history": self.history, "notes": list(self.notes)}


OnEvent = Callable[[TrainEvent], None]
"""What :func:`train` calls with each :class:`TrainEvent` (the core
:data:`dyt_edge.progress.Progress` takes a message instead)."""


class _Settings:
    """Threads and determinism for the run, restored afterwards."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self) -> "_Settings":
        import torch

        self.old_threads = torch.get_num_threads()
        self.old_det = torch.are_deterministic_algorithms_enabled()
        self.old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(True, warn_only=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        torch.set_num_threads(self.old_threads)
        torch.use_deterministic_algorithms(self.old_det, warn_only=self.old_warn)


def train(cfg: TrainConfig, progress: Optional[OnEvent] = None) -> TrainResult:
    """Train a DyT model per ``cfg``; evaluate it on the held-out split; save it if asked."""
    t_start = time.perf_counter()
    res = resolve(cfg)
    rc = res.cfg

    def emit(kind: str, **kw: Any) -> None:
        if progress is not None:
            progress(TrainEvent(kind, elapsed_s=time.perf_counter() - t_start, **kw))

    notes = list(res.notes)
    for note in notes:
        emit("note", message=note)

    def record(note: str) -> None:
        """A note for the user that the result keeps, too."""
        notes.append(note)
        emit("note", message=note)

    with _Settings(int(rc.threads)):
        seed_everything(rc.seed)
        pre = model_config(rc, 2).preprocessing
        name, train_set, test_set, num_classes = _load_data(rc, pre)
        skipped = train_set.skipped + test_set.skipped
        if skipped:
            record(f"{skipped} unreadable image file(s) skipped")
        mcfg = model_config(rc, num_classes)
        emit("note", message=(
            f"{name}: {len(train_set)} training / {len(test_set)} held-out images, "
            f"{num_classes} classes; ViT {mcfg.img_size}px patch {mcfg.patch_size} "
            f"({mcfg.num_patches} patch tokens), width {mcfg.embed_dim}, depth {mcfg.depth}, "
            f"{mcfg.num_heads} heads; {mcfg.variant} dispatch, {mcfg.adapter_kind} "
            f"bottleneck {mcfg.adapter_dim}; target rate {rc.target_rate}; "
            f"{rc.threads} thread(s)"))

        model = _build(rc, mcfg, record)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_total = sum(p.numel() for p in model.parameters())
        emit("note", message=f"training {n_train:,} of {n_total:,} parameters")

        history, stopped_early, seconds = _fit(model, rc, train_set, pre, emit, t_start)
        if stopped_early:
            notes.append(f"stopped by the time limit after {len(history)} epoch(s)")

        ev = evaluate(model, test_set.images, test_set.labels)
        model.set_dispatch("topk")
        masks = ev.masks
        per = masks.float().mean(dim=(0, 2)).tolist()
        result = TrainResult(
            model=model, config=rc, model_config=mcfg, history=history,
            accuracy=ev.accuracy, accuracy_complete=ev.accuracy_complete,
            activation_mean=float(masks.float().mean()), activation_per_dispatcher=per,
            dispatchers=mcfg.dispatcher_names, seconds=seconds, total_seconds=0.0,
            train_size=len(train_set), test_size=len(test_set), data_name=name,
            skipped=skipped, notes=notes, stopped_early=stopped_early, created=utc_now())
        if rc.data == "digits":
            raw = test_set.raw(pre)
            bg = patch_background(raw, mcfg.patch_size)
            (result.background_activation, result.foreground_activation,
             result.background_per_dispatcher, result.foreground_per_dispatcher) = \
                background_rates(masks, bg)
            result.showcase = _showcase(raw, ev, test_set, mcfg)
        emit("eval", accuracy=ev.accuracy, activation=result.activation_mean)

        if rc.output is not None:
            result.checkpoint = _save(model, rc, result,
                                      class_names=train_set.class_names or test_set.class_names)
    result.total_seconds = time.perf_counter() - t_start
    emit("done", accuracy=result.accuracy, activation=result.activation_mean)
    return result


def _load_data(rc: TrainConfig, pre: Preprocessing
               ) -> tuple[str, "ImageSet", "ImageSet", int]:
    """(data name, training split, held-out split, number of classes), checked for training."""
    from ..data import data_name, load_images

    train_set = load_images(rc.data, pre, split="train", limit=rc.limit, seed=rc.data_seed)
    test_set = load_images(rc.data, pre, split="test", seed=rc.data_seed)
    name = data_name(rc.data)
    for s in (train_set, test_set):
        if s.labels is None:
            raise DataError(f"{name} has no labels, training needs them",
                            "use class sub-folders (ImageFolder) or an .npz with 'labels'")
    num_classes = max(train_set.num_classes or 0, test_set.num_classes or 0)
    if num_classes < 2:
        raise DataError(f"{name} has {num_classes} class(es), training needs at least 2")
    if len(train_set) < 2:
        raise DataError(f"{name} has only {len(train_set)} training image(s)")
    return name, train_set, test_set, num_classes


def _build(rc: TrainConfig, mcfg: DyTConfig, record: Callable[[str], None]
           ) -> "DyTVisionTransformer":
    """The model to train: built from the seed, the backbone weights copied in (or, from random
    init, the preset's initialisations), the gates' starting bias, the backbone frozen if
    asked."""
    import torch

    from ..model import build_model

    seed_everything(rc.seed)
    model = build_model(mcfg)
    gates_loaded = False
    if rc.weights is not None:
        state = read_backbone_weights(rc.weights)
        gates_loaded = any("_token_select." in k for k in state)
        for note in load_backbone(model, state, Path(rc.weights).name):
            record(note)
    with torch.no_grad():
        if rc.weights is None and rc.attn_init == "mimetic":
            mimetic_init(model)
        if rc.weights is None and rc.pos_embed_init != "timm":
            init_pos_embed(model, rc.pos_embed_init)
        if not gates_loaded:
            for ts in model.token_selects:
                ts.mlp_head.bias.fill_(float(rc.gate_bias))
    if rc.freeze_backbone:
        trainable = set(model.dyt_parameter_names())
        for n, p in model.named_parameters():
            p.requires_grad_(n in trainable)
    return model


def _showcase(raw: "torch.Tensor", ev: Evaluation, test_set: "ImageSet",
              mcfg: DyTConfig) -> str:
    """A few held-out images (one of each class first) next to each dispatcher's token map,
    as text."""
    labels = test_set.labels.numpy()
    shown = choose_shown(len(labels), SHOWCASE_IMAGES, labels)
    maps = token_maps(shown_images(raw, shown), ev.masks.numpy(), shown, ev.predictions.numpy(),
                      labels, mcfg, test_set.class_names)
    return ascii_token_maps(maps)


def _fit(model, rc: TrainConfig, train_set: "ImageSet", pre: Preprocessing,
         emit: Callable[..., None], t_start: float) -> tuple[list[dict[str, float]], bool, float]:
    """Optimise ``model`` on the training split: (one history row per epoch, stopped by the
    time limit, seconds)."""
    import torch

    images, labels = train_set.images, train_set.labels
    n = len(images)
    bs = min(int(rc.batch_size), n)
    steps_per_epoch = math.ceil(n / bs)
    total = steps_per_epoch * int(rc.epochs)
    warmup = min(steps_per_epoch, max(1, total // 10))
    params = param_groups(model, float(rc.weight_decay), float(rc.gate_lr_scale))
    if not params:
        raise ConfigError("nothing to train: every parameter is frozen")
    opt = torch.optim.AdamW(params, lr=float(rc.lr), betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(rc.seed)
    fill = ((torch.zeros(3) - torch.tensor(pre.mean)) / torch.tensor(pre.std)).to(images.dtype)
    history: list[dict[str, float]] = []
    emit("start", epochs=int(rc.epochs), steps=total)
    t0 = time.perf_counter()
    step = 0
    stopped = False
    model.train()
    for epoch in range(int(rc.epochs)):
        te = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        sums: dict[str, float] = {}
        correct = 0
        for s in range(0, n, bs):
            idx = order[s:s + bs]
            x, y = images[idx], labels[idx]
            x = augment(x, str(rc.augment), int(rc.patch_size), fill, gen)
            lr = lr_at(step, total, warmup, float(rc.lr))
            for g in opt.param_groups:
                g["lr"] = lr * g["lr_scale"]
            logits, masks = model(x, return_masks=True)
            with model.dispatching("complete"):
                logits_full = model(x)
            loss, terms = dyt_loss(logits, logits_full, masks, y, float(rc.target_rate))
            if not math.isfinite(terms["loss"]):
                raise ConfigError(f"training diverged at epoch {epoch + 1} (loss "
                                  f"{terms['loss']})", "lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
            correct += int((logits.detach().argmax(-1) == y).sum())
            emit("step", epoch=epoch + 1, epochs=int(rc.epochs), step=step, steps=total,
                 loss=terms["loss"], activation=terms["activation"])
            if rc.time_limit_s is not None and time.perf_counter() - t_start > rc.time_limit_s:
                stopped = True
                break
        seen = min(n, (s + bs)) if stopped else n
        row = {k: v / seen for k, v in sums.items()}
        row.update(epoch=epoch + 1, train_accuracy=correct / seen, lr=lr,
                   seconds=time.perf_counter() - te)
        history.append(row)
        emit("epoch", epoch=epoch + 1, epochs=int(rc.epochs), step=step, steps=total,
             loss=row["loss"], activation=row["activation"], accuracy=row["train_accuracy"])
        if stopped:
            break
    model.eval()
    return history, stopped, time.perf_counter() - t0


def _save(model, rc: TrainConfig, result: TrainResult,
          class_names: Optional[list[str]] = None) -> Path:
    """The checkpoint, with the training record and (when the data names them, one per class)
    the class names in its metadata."""
    from ..checkpoint import save_model, training_metadata
    from ..class_names import METADATA_KEY

    metadata = training_metadata(rc.to_dict(), result.summary())
    if class_names and len(class_names) == model.config.num_classes \
            and len(set(class_names)) == len(class_names):
        metadata[METADATA_KEY] = json.dumps([str(n) for n in class_names])
    return Path(save_model(model, Path(rc.output), metadata=metadata))
