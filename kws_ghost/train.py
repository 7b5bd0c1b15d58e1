"""Training: one process or many (``torchrun``), resumable from the last finished epoch.

``Trainer`` is the loop: device and DDP, mixed precision, the weights' moving average (EMA) and
the epochs. The pieces of a run are ``kws_ghost.build``; what the objective trains on and how it
scores a batch and validates, ``kws_ghost.objectives`` (``stream``, the model a device runs, by
default; ``clip``, the earlier recipe); the run folder, its checkpoints and ``best.pt``,
``kws_ghost.runs``. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from kws_ghost.build import build_data, build_network, build_optimizer, make_loader
from kws_ghost.config import (
    FrontendConfig,
    ModelConfig,
    TrainConfig,
    budget_epochs,
    from_dict,
    stored_train_config,
    to_dict,
)
from kws_ghost.data import EpochSampler, UnreadableClips, count_labels
from kws_ghost.errors import KwsError, print_stderr
from kws_ghost.objectives import check_model
from kws_ghost.runs import (
    CLIP_STAGE,
    RunFolder,
    best_epoch,
    brief,
    check_new_run_dir,
    default_run_dir,
    epoch_line,
    load_resumable,
)


@dataclasses.dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistributedContext:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): gloo (CPU) or nccl."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]))


def pick_device(requested: str, local_rank: int = 0) -> Any:
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise KwsError("--device cuda: no CUDA device is available (use --device cpu)")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if requested != "cpu":
        raise KwsError(f"unknown device {requested!r}: use auto, cpu or cuda")
    return torch.device("cpu")


class Trainer:
    """A run's state; ``run()`` trains until ``config.epochs`` and returns the history.

    ``Trainer(...)`` starts a new run; ``Trainer.resume(run_dir)`` continues one. A trainer is
    one stage: ``train_run`` and ``resume_run`` run both stages of a warm-started run.
    ``outer`` and ``then`` make it the clip stage of the run in ``outer`` whose stream stage
    ``then`` (its training and model configs) describes; ``last.pt`` keeps ``then`` for a
    resume. ``after_clip_stage``: the stream stage that follows, in the folder around it.
    """

    def __init__(
        self,
        train_config: TrainConfig,
        model_config: ModelConfig,
        frontend_config: FrontendConfig,
        run_dir: Optional[Path] = None,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
        checkpoint: Any = None,
        outer: Optional[RunFolder] = None,
        then: Optional[tuple[TrainConfig, ModelConfig]] = None,
        after_clip_stage: bool = False,
    ) -> None:
        train_config.validate()
        if not train_config.data:
            raise KwsError("--data is required (a Speech Commands-layout folder)")
        if train_config.clip_stage_first and checkpoint is None:
            raise KwsError(
                "a warm-started stream run begins with its clip stage: train it with "
                "kws_ghost.train.train_run (or set warm_start='none')"
            )
        check_model(train_config, model_config)
        self.then = then
        if checkpoint is None:
            train_config = with_absolute_paths(train_config)
        self.config = train_config
        self.frontend_config = frontend_config
        self.progress = progress
        self.log = log or print_stderr
        self.device = pick_device(train_config.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = init_distributed(self.device.type)
        if not self.dist.is_main:
            self.log = lambda message: None
            self.progress = False
        if outer is not None:  # the clip stage of the run in outer, in its folder
            if self.dist.world_size > 1:
                outer.path = self._agree_on_run_dir(outer.path)
            check_new_run_dir(outer.path)
            path = outer.path / CLIP_STAGE
        else:
            path = Path(run_dir) if run_dir else default_run_dir(model_config)
            if self.dist.world_size > 1:
                path = self._agree_on_run_dir(path)
        if checkpoint is None:
            check_new_run_dir(path, after_clip_stage)
        default_name = run_dir is None and outer is None
        self.folder = RunFolder(path, default_name, self.log, outer, after_clip_stage)
        labels = checkpoint.labels if checkpoint is not None else None
        self.data = build_data(train_config, frontend_config, labels, self.log, self.dist.is_main)
        self.labels = self.data.labels
        self.objective = self.data.objective
        if checkpoint is not None:
            from kws_ghost.models import build_model

            self.model = build_model(checkpoint.model_config)
        else:
            self.model = build_network(model_config, frontend_config, self.data, train_config)
        self.model.to(self.device)
        self.teachers: list[Any] = []  # the frozen stream models this run distils from
        if train_config.teacher:
            from kws_ghost.build import load_teacher

            self.teachers = [
                load_teacher(path, frontend_config, self.labels).to(self.device)
                for path in train_config.teacher
            ]
        from kws_ghost.features import Frontend

        self.frontend = Frontend(frontend_config).to(self.device)
        self.batch_size = max(1, math.ceil(train_config.batch_size / self.dist.world_size))
        self.sampler = EpochSampler(
            len(self.data.train_set), train_config.seed, True, self.dist.rank, self.dist.world_size
        )
        steps_per_epoch = math.ceil(len(self.sampler) / self.batch_size)
        if train_config.epochs is None:  # the budget: recorded, so a resume keeps it
            items = len(self.sampler) * self.dist.world_size
            self.config = train_config = dataclasses.replace(
                train_config, epochs=budget_epochs(items)
            )
            option = "--warm-start-epochs" if then else "--epochs"
            self.log(
                f"note: {train_config.epochs} epochs of {items:,} {self.objective.items} "
                f"(the training budget; {option} sets it)"
            )
        self.optimizer, self.scheduler = build_optimizer(self.model, train_config, steps_per_epoch)
        self.autocast, self.scaler = self._mixed_precision()
        self.ema: Any = None  # the weights' moving average, what validation and files hold
        if train_config.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(train_config.ema_decay)
            )
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        if checkpoint is not None:
            self._restore(checkpoint)
        self.ddp_model = self.model
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.unreadable = UnreadableClips(self.data.train_clips, self.log)
        self.unreadable_val = UnreadableClips(self.data.val_clips, self.log)

    @classmethod
    def resume(
        cls,
        run_dir: str | os.PathLike[str],
        epochs: Optional[int] = None,
        data: Optional[str] = None,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
        **overrides: Any,
    ) -> Trainer:
        """Continue the run in ``run_dir`` from its ``last.pt`` (model, optimiser, scheduler, RNG
        and history), optionally to more ``epochs``, on ``data`` (the corpus moved), or with
        ``overrides`` of run-time settings (device, workers) that do not change the recipe."""
        run_dir = Path(run_dir)
        config, checkpoint = load_resumable(run_dir, epochs, data, log)
        config = dataclasses.replace(config, **overrides)
        model, frontend = checkpoint.model_config, checkpoint.frontend_config
        return cls(config, model, frontend, run_dir, progress, log, checkpoint=checkpoint)

    def _agree_on_run_dir(self, run_dir: Path) -> Path:
        """Every rank uses rank 0's folder name (timestamps may differ by a second)."""
        import torch.distributed as dist

        names = [str(run_dir)]
        dist.broadcast_object_list(names, src=0)
        return Path(names[0])

    def _restore(self, checkpoint: Any) -> None:
        import torch

        state = checkpoint.extra["train_state"]
        if self.ema is not None:  # the file holds the average; the raw weights are kept apart
            self.ema.module.load_state_dict(checkpoint.model_state)
            self.ema.n_averaged.fill_(int(state["ema_steps"]))
            self.model.load_state_dict(state["raw_model"])
        else:
            self.model.load_state_dict(checkpoint.model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"])
        self.history = list(state["history"])
        if state.get("then"):
            then = state["then"]
            self.then = (
                stored_train_config(then["train"], "stream stage's train config"),
                from_dict(ModelConfig, then["model"], "stream stage's model config"),
            )
        self.log(f"resuming {self.run_dir} after epoch {self.start_epoch}")

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    def run(self, stop_after: Optional[int] = None) -> list[dict[str, Any]]:
        """Train to ``config.epochs`` (or stop early after epoch ``stop_after``, leaving a run that
        ``resume`` continues as if it had been interrupted there)."""
        last_epoch = min(self.config.epochs, stop_after or self.config.epochs)
        for epoch in range(self.start_epoch, last_epoch):
            record = self._train_epoch(epoch)
            detection = None
            if self.data.val_items and self._validates(epoch):
                started = time.perf_counter()
                metrics, detection = self.objective.validate(self)
                record.update(metrics, val_seconds=round(time.perf_counter() - started, 3))
            self.history.append(record)
            self.log(epoch_line(record, self.config.epochs, self.objective.unit))
            if self.dist.is_main:
                self._save(epoch + 1, record, detection)
            self._barrier()
        if self.dist.is_main and self.history:
            best = best_epoch(self.history)
            self.log(f"done: {self.run_dir} (best.pt: epoch {best['epoch']}, {brief(best)})")
        return self.history

    def _validates(self, epoch: int) -> bool:
        """Every ``val_every`` epochs after ``val_from`` of them, and the last (by the epoch
        alone, so a resumed run validates the epochs an uninterrupted one does)."""
        done, config = epoch + 1, self.config
        if done == config.epochs:
            return True
        return done > config.val_from * config.epochs and done % config.val_every == 0

    def loader(self, dataset: Any, sampler: Any, batch_size: int) -> Any:
        pin = self.device.type == "cuda"
        return make_loader(dataset, sampler, batch_size, self.config.workers, pin)

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        import torch
        from tqdm import tqdm

        self.model.train()
        self.sampler.set_epoch(epoch)
        self.objective.start_epoch()
        loader = self.loader(self.data.train_set, self.sampler, self.batch_size)
        generator = torch.Generator().manual_seed(self.config.seed * 1000003 + epoch)
        autocast, scaler = self.autocast, self.scaler
        totals = {"loss": 0.0, "right": 0, "seen": 0}
        unit = self.objective.unit
        started = time.perf_counter()
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            disable=not self.progress,
            leave=False,
            unit="batch",
            file=sys.stderr,
        )
        for batch in bar:
            with autocast:
                loss, right, seen = self.objective.step(self, batch, generator)
            self.optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            scaler.step(self.optimizer)
            scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            totals["loss"] += loss.item() * seen
            totals["right"] += right
            totals["seen"] += seen
            bar.set_postfix(  # the training objective's own items, not validation clips
                {
                    f"{unit}_loss": f"{totals['loss'] / max(1, totals['seen']):.3f}",
                    f"{unit}_acc": f"{totals['right'] / max(1, totals['seen']):.3f}",
                }
            )
        bar.close()
        loss_sum, right, seen = self.all_reduce([totals["loss"], totals["right"], totals["seen"]])
        seconds = time.perf_counter() - started
        return {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(1, seen),
            "train_accuracy": right / max(1, seen),
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 3),
        }

    @property
    def published_model(self) -> Any:
        """The model validation scores and checkpoints hold: the weights' average when
        ``ema_decay`` is set, else the trained weights themselves."""
        return self.ema.module if self.ema is not None else self.model

    def _mixed_precision(self) -> tuple[Any, Any]:
        """bf16 autocast on CUDA where supported (fp16 with a gradient scaler otherwise)."""
        import torch

        if self.device.type != "cuda":
            return contextlib.nullcontext(), torch.amp.GradScaler("cpu", enabled=False)
        if torch.cuda.is_bf16_supported():
            return (
                torch.autocast("cuda", dtype=torch.bfloat16),
                torch.amp.GradScaler("cuda", enabled=False),
            )
        return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")

    def all_reduce(self, values: list[float]) -> list[float]:
        if self.dist.world_size == 1:
            return values
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def _barrier(self) -> None:
        if self.dist.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def _save(self, epochs_done: int, record: dict[str, Any], detection: Any) -> None:
        import torch

        common = dict(train_config=to_dict(self.config), metrics=record, epoch=epochs_done)
        common["detection"] = detection
        train_state = {
            "epoch": epochs_done,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "history": self.history,
        }
        if self.then is not None:
            train_state["then"] = {"train": to_dict(self.then[0]), "model": to_dict(self.then[1])}
        if self.ema is not None:  # the file holds the average; the raw weights go beside it
            train_state["raw_model"] = {
                k: v.detach().cpu() for k, v in self.model.state_dict().items()
            }
            train_state["ema_steps"] = int(self.ema.n_averaged)
        counts = {"world_size": self.dist.world_size}
        for key, items in (("train", self.data.train_items), ("validation", self.data.val_items)):
            counts[f"{key}_counts"] = count_labels(items, self.labels)
        model, fe = self.published_model, self.frontend_config
        self.folder.save(model, fe, self.labels, self.history, common, train_state, counts)


def with_absolute_paths(config: TrainConfig) -> TrainConfig:
    """``config`` with its corpus and model files as absolute paths (where given): eval, analyze
    and a resume find them from anywhere."""
    data, init = (str(Path(path).resolve()) if path else "" for path in (config.data, config.init))
    teacher = [str(Path(path).resolve()) for path in config.teacher]
    return dataclasses.replace(config, data=data, init=init, teacher=teacher)


def train_run(
    config: TrainConfig,
    model_config: ModelConfig,
    frontend_config: FrontendConfig,
    run_dir: Optional[Path] = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Trainer:
    """Train a new run as ``kws-ghost train`` does; returns its last stage's trainer, trained.

    A warm-started stream run (``config.clip_stage_first``, the default) trains its clip stage
    in RUN/clip first, then the stream stage in RUN from that stage's ``best.pt``: the clip
    objective's one label per clip teaches the words faster than frame targets do (2.5 points
    of held-out clip accuracy over seven speaker folds, at 1.4x the time).
    """
    if not config.clip_stage_first:
        trainer = Trainer(config, model_config, frontend_config, run_dir, progress, log)
        trainer.run()
        return trainer
    config.validate()
    check_model(config, model_config)  # refuse now what the stream stage could not train
    config = with_absolute_paths(config)  # the clip stage's last.pt keeps it for a resume
    path = Path(run_dir) if run_dir else default_run_dir(model_config)
    outer = RunFolder(path, run_dir is None, log or print_stderr)
    first = Trainer(
        config.clip_stage(),
        model_config,
        frontend_config,
        progress=progress,
        log=log,
        outer=outer,
        then=(config, model_config),
    )
    if config.teacher:  # refused now, not after the clip stage
        from kws_ghost.build import load_teacher

        for path in config.teacher:
            load_teacher(path, frontend_config, first.labels)
    first.log(f"stage 1 of 2: the clip objective, in {first.run_dir}")
    first.run()
    return _stream_stage(first, progress, log)


def resume_run(
    run_dir: str | os.PathLike[str],
    epochs: Optional[int] = None,
    data: Optional[str] = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> Trainer:
    """Continue the run in ``run_dir`` as ``Trainer.resume`` does, trained; a warm-started run
    stopped in its clip stage finishes that stage, then trains its stream stage (``epochs``
    are the stream stage's)."""
    run_dir = Path(run_dir)
    stage = run_dir / CLIP_STAGE
    if not (run_dir / "last.pt").exists() and (stage / "last.pt").exists():
        first = Trainer.resume(stage, None, data, progress, log, **overrides)
        if first.then is not None:
            if epochs is not None:
                first.then = (dataclasses.replace(first.then[0], epochs=epochs), first.then[1])
            first.run()
            return _stream_stage(first, progress, log)
    trainer = Trainer.resume(run_dir, epochs, data, progress, log, **overrides)
    trainer.run()
    return trainer


def _stream_stage(first: Trainer, progress: bool, log: Callable[[str], None] | None) -> Trainer:
    """The stream stage after clip stage ``first``, in the folder around it, from its best.pt
    (on its data and run-time settings: a resume may have changed them)."""
    assert first.then is not None
    config, model_config = first.then
    run_dir = first.run_dir.parent
    if first.dist.world_size > 1:  # rank 0's folder: a taken default name renamed it there
        run_dir = first._agree_on_run_dir(run_dir)
    init = run_dir / CLIP_STAGE / "best.pt"
    runtime = {name: getattr(first.config, name) for name in ("data", "device", "workers")}
    config = dataclasses.replace(config, init=str(init), **runtime)
    first.log(f"stage 2 of 2: the stream objective from {init}, in {run_dir}")
    trainer = Trainer(
        config, model_config, first.frontend_config, run_dir, progress, log, after_clip_stage=True
    )
    trainer.run()
    return trainer
