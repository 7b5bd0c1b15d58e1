"""Training: one process or many (``torchrun``), resumable from the last finished epoch.

The pieces: ``build_data`` (corpus, labels, the split's clips or training sequences, the
validation recordings), ``build_network`` (the model with the training split's feature
statistics), ``build_optimizer`` (AdamW with warm-up and cosine decay), and ``Trainer``, the loop.

The default objective, ``stream``, trains the model a device runs: long sequences of corpus items
with per-frame targets (``kws_ghost.sequences``, ``kws_ghost.losses.stream_loss``), the state
carried from batch to batch. After every epoch the model is scored on the validation clips (clip
accuracy) and on recordings of validation speakers (hit rate at ``target_fa_per_hour``), and
``best.pt`` is the epoch that ``selection_key`` ranks first. ``clip`` is the earlier recipe: one
label per 1 s clip.

A run folder holds ``config.json``, ``metrics.jsonl`` (one line per epoch), ``last.pt`` (with the
optimiser, scheduler and RNG state) and ``best.pt``, each written atomically at the end of every
epoch, so a killed run loses at most the epoch in progress. ``runs/latest`` points at the newest
run under ``runs/`` once it has written its first checkpoint. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from kws_ghost.config import (
    FrontendConfig,
    ModelConfig,
    TrainConfig,
    budget_epochs,
    from_dict,
    to_dict,
)
from kws_ghost.data import (
    SILENCE,
    UNKNOWN,
    ClipDataset,
    Corpus,
    EpochSampler,
    Item,
    UnreadableClips,
    build_items,
    count_labels,
    resolve_labels,
    scan_corpus,
    spec_augment,
)
from kws_ghost.errors import KwsError, print_stderr
from kws_ghost.fileio import atomic_open, owned_by, write_json, write_marker
from kws_ghost.sequences import IGNORE

RUNS = Path("runs")
BACKGROUND = (SILENCE, UNKNOWN)
RUN_MARKER = ".kws-ghost-run"  # a folder holding it was made by `kws-ghost train`


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


def default_run_dir(model_config: ModelConfig) -> Path:
    return RUNS / f"{time.strftime('%Y%m%d-%H%M%S')}-{model_config.arch}"


def point_latest(run_dir: Path) -> None:
    """Make ``runs/latest`` a symlink to ``run_dir`` (replaced atomically) when the run lives in
    ``runs/``, where the default model lookup reads it; a run elsewhere leaves it alone, and so
    does a ``runs/latest`` that is not our link to a run folder."""
    if run_dir.resolve().parent != RUNS.resolve():
        return
    latest = RUNS / "latest"
    if latest.is_symlink() and latest.exists() and not owned_by(latest, RUN_MARKER):
        return  # a link of the user's, to a folder that is not a run: never replace it
    if latest.exists() and not latest.is_symlink():
        return  # not ours: never replace it
    tmp = RUNS / f".latest.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, latest)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


def feature_statistics(dataset: ClipDataset, frontend: Any, limit: int, seed: int) -> tuple:
    """Per-coefficient mean and std of un-augmented training features (a seeded subset)."""
    import numpy as np
    import torch

    count = min(limit, len(dataset))
    chosen = np.random.default_rng([seed, 7]).choice(len(dataset), size=count, replace=False)
    total = torch.zeros(frontend.config.num_features, dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    frames = 0
    for start in range(0, count, 256):
        batch = np.stack([dataset[int(i)][0] for i in chosen[start : start + 256]])
        # (an unreadable clip is silence here; training names it when it meets it)
        with torch.no_grad():
            feats = frontend(torch.from_numpy(batch)).double().reshape(-1, total.numel())
        total += feats.sum(0)
        total_sq += feats.square().sum(0)
        frames += feats.shape[0]
    mean = total / frames
    std = (total_sq / frames - mean.square()).clamp_min(1e-10).sqrt()
    return mean.float(), std.float()


# -- the pieces ----------------------------------------------------------------------------------


@dataclasses.dataclass
class RunData:
    """What a run trains and validates on."""

    corpus: Corpus
    labels: list[str]
    train_items: list[Item]
    val_items: list[Item]
    train_set: Any  # ClipDataset (clip objective) or SequenceDataset (stream objective)
    train_clips: ClipDataset  # the training items' clips (inside train_set)
    val_clips: ClipDataset
    recordings: Any = None  # ValidationRecordings (stream objective, validation speakers)


def build_data(
    config: TrainConfig,
    frontend: FrontendConfig,
    labels: Optional[list[str]] = None,
    log: Callable[[str], None] = print,
    recordings: bool = True,
) -> RunData:
    """Index the corpus and build the training set and validation material of ``config``
    (the validation recordings only with ``recordings``: rank 0 of many scores them)."""
    corpus = scan_corpus(config.data, warn=log)
    if labels is None:
        labels = resolve_labels(corpus, config.task, config.keywords, warn=log)
    if len(labels) < 2:
        raise KwsError(f"{corpus.root}: only {len(labels)} class(es) with data")
    seed, fraction = config.seed, config.extra_fraction
    train_items = build_items(corpus, labels, "training", seed, fraction)
    val_items = build_items(corpus, labels, "validation", seed, fraction)
    if not train_items:
        raise KwsError(f"{corpus.root}: the training split is empty")
    if not val_items:
        log("note: the validation split is empty: best.pt will be the last epoch")
    clip, rate = frontend.clip_samples, frontend.sample_rate
    val_clips = ClipDataset(corpus, val_items, clip, rate, None, seed)
    validation_recordings = None
    if config.objective == "stream":
        from kws_ghost.sequences import SequenceDataset

        train_clips = ClipDataset(corpus, train_items, clip, rate, None, seed)
        others = [
            p
            for word in sorted(corpus.words)
            if word not in labels
            for p in corpus.clips(word, "training")
        ]
        train_set: Any = SequenceDataset(
            train_clips, labels, config.sequence, frontend, seed, others
        )
        from kws_ghost.validation import ValidationRecordings

        if recordings and ValidationRecordings.possible(corpus, labels):
            validation_recordings = ValidationRecordings(
                corpus, labels, frontend, config.val_recording_minutes, seed, log
            )
        elif recordings and val_items:
            log("note: no validation keyword clips: best.pt is chosen by clip accuracy")
    else:
        fragment = labels.index(UNKNOWN) if UNKNOWN in labels else None
        train_clips = ClipDataset(corpus, train_items, clip, rate, config.augment, seed, fragment)
        train_set = train_clips
    return RunData(
        corpus,
        labels,
        train_items,
        val_items,
        train_set,
        train_clips,
        val_clips,
        validation_recordings,
    )


def build_network(
    model_config: ModelConfig, frontend: FrontendConfig, data: RunData, config: TrainConfig
) -> Any:
    """The model for ``data``'s labels and features, normalised by training-split statistics."""
    import torch

    from kws_ghost.features import Frontend
    from kws_ghost.models import build_model

    model_config = dataclasses.replace(
        model_config, input_dim=frontend.num_features, num_classes=len(data.labels)
    )
    if config.objective == "clip" and model_config.pooling == "max":
        # the streaming rule scores per-frame targets; a clip-trained head pools over the clip
        model_config = dataclasses.replace(model_config, pooling="mean")
    torch.manual_seed(config.seed)
    model = build_model(model_config)
    plain = ClipDataset(
        data.corpus, data.train_items, frontend.clip_samples, frontend.sample_rate, None
    )
    mean, std = feature_statistics(plain, Frontend(frontend), config.norm_clips, config.seed)
    model.set_normalization(mean, std)
    return model


def build_optimizer(model: Any, config: TrainConfig, steps_per_epoch: int) -> tuple[Any, Any]:
    """AdamW, one epoch (``warmup_epochs``) of linear warm-up, then cosine decay to 1%."""
    import torch

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    total = steps_per_epoch * config.epochs
    warmup = max(1, int(steps_per_epoch * config.warmup_epochs))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total)
    )
    return optimizer, scheduler


def selection_key(record: dict[str, Any]) -> tuple[float, ...]:
    """How epochs rank for ``best.pt`` (higher is better): hit rate on the validation recording
    at the target false-alarm rate where measured, then clip accuracy, then the lower validation
    loss. A small validation set often ties epochs on accuracy, and the lower-loss one of them
    generalised better to held-out speakers."""
    return (
        record.get("val_hit_rate", -1.0),
        record.get("val_accuracy", -1.0),
        -record.get("val_loss", math.inf),
    )


def best_epoch(history: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The record ``best.pt`` holds: the first epoch with the highest ``selection_key``."""
    best: Optional[dict[str, Any]] = None
    for record in history:
        if best is None or selection_key(record) > selection_key(best):
            best = record
    return best


# -- the loop ------------------------------------------------------------------------------------


class Trainer:
    """A run's state; ``run()`` trains until ``config.epochs`` and returns the history.

    ``Trainer(...)`` starts a new run; ``Trainer.resume(run_dir)`` continues one.
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
    ) -> None:
        train_config.validate()
        if not train_config.data:
            raise KwsError("--data is required (a Speech Commands-layout folder)")
        if train_config.objective == "stream" and model_config.pooling != "max":
            raise KwsError(
                f"--pooling {model_config.pooling} goes with --objective clip: a streaming "
                "model's clips are scored by the streaming rule (--pooling max)"
            )
        if checkpoint is None:  # the corpus as an absolute path: eval and analyze run anywhere
            absolute = str(Path(train_config.data).resolve())
            train_config = dataclasses.replace(train_config, data=absolute)
        self.config = train_config
        self.frontend_config = frontend_config
        self.progress = progress
        self.log = log or print_stderr
        self._unit = "clip" if train_config.objective == "clip" else "frame"  # a training item
        self.device = pick_device(train_config.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = init_distributed(self.device.type)
        if not self.dist.is_main:
            self.log = lambda message: None
            self.progress = False
        self.default_dir = run_dir is None  # a default name may be taken by a parallel run
        self.run_dir = Path(run_dir) if run_dir else default_run_dir(model_config)
        if self.dist.world_size > 1:
            self.run_dir = self._agree_on_run_dir(self.run_dir)
        if checkpoint is None:
            _check_new_run_dir(self.run_dir)
        labels = checkpoint.labels if checkpoint is not None else None
        self.data = build_data(train_config, frontend_config, labels, self.log, self.dist.is_main)
        self.labels = self.data.labels
        if checkpoint is not None:
            from kws_ghost.models import build_model

            self.model = build_model(checkpoint.model_config)
        else:
            self.model = build_network(model_config, frontend_config, self.data, train_config)
        self.model.to(self.device)
        from kws_ghost.features import Frontend

        self.frontend = Frontend(frontend_config).to(self.device)
        self.batch_size = max(1, math.ceil(train_config.batch_size / self.dist.world_size))
        self.sampler = EpochSampler(
            len(self.data.train_set), train_config.seed, True, self.dist.rank, self.dist.world_size
        )
        steps_per_epoch = math.ceil(len(self.sampler) / self.batch_size)
        if train_config.epochs is None:  # the step budget: recorded, so a resume keeps it
            self.config = train_config = dataclasses.replace(
                train_config, epochs=budget_epochs(steps_per_epoch)
            )
            self.log(
                f"note: {train_config.epochs} epochs of {steps_per_epoch} steps (the step budget; "
                "--epochs sets it)"
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
        self.state: Any = None  # the stream objective's recurrent state, carried across batches
        self.background = [i for i, label in enumerate(self.labels) if label in BACKGROUND]
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
        from kws_ghost.checkpoint import load_checkpoint, stored_data_path

        run_dir = Path(run_dir)
        last = run_dir / "last.pt"
        if not last.exists():
            raise KwsError(f"{run_dir}: nothing to resume (no last.pt)")
        checkpoint = load_checkpoint(last)
        stored = checkpoint.extra.get("train_config")
        if not isinstance(stored, dict) or not isinstance(
            checkpoint.extra.get("train_state"), dict
        ):
            raise KwsError(f"{last}: holds no training state to resume from")
        if "objective" not in stored:  # runs of earlier versions trained on clips
            stored = {**stored, "objective": "clip"}
        config = from_dict(TrainConfig, stored, f"{last}: train config")
        if data is not None:
            if Path(data).resolve() != Path(config.data).resolve():
                note = f"note: resuming on {data} (the run started on {config.data})"
                (log or print_stderr)(note)
            config.data = str(Path(data).resolve())
        else:
            found = stored_data_path(stored, checkpoint.path)
            config.data = str(found) if found is not None else config.data
        if epochs is not None:
            config.epochs = epochs
        config = dataclasses.replace(config, **overrides)
        return cls(
            config,
            checkpoint.model_config,
            checkpoint.frontend_config,
            run_dir,
            progress,
            log,
            checkpoint=checkpoint,
        )

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
        self.log(f"resuming {self.run_dir} after epoch {self.start_epoch}")

    def run(self, stop_after: Optional[int] = None) -> list[dict[str, Any]]:
        """Train to ``config.epochs`` (or stop early after epoch ``stop_after``, leaving a run that
        ``resume`` continues as if it had been interrupted there)."""
        last_epoch = min(self.config.epochs, stop_after or self.config.epochs)
        for epoch in range(self.start_epoch, last_epoch):
            record = self._train_epoch(epoch)
            detection = None
            if self.data.val_items:
                started = time.perf_counter()
                metrics, detection = self._validate()
                record.update(metrics, val_seconds=round(time.perf_counter() - started, 3))
            self.history.append(record)
            self.log(_summary(record, self.config.epochs, self._unit))
            if self.dist.is_main:
                self._save(epoch + 1, record, detection)
            self._barrier()
        if self.dist.is_main and self.history:
            best = best_epoch(self.history)
            self.log(f"done: {self.run_dir} (best.pt: epoch {best['epoch']}, {_brief(best)})")
        return self.history

    def _loader(self, dataset: Any, sampler: Any, batch_size: int) -> Any:
        import torch

        workers = self.config.workers
        if workers < 0:
            workers = max(0, min(4, (os.cpu_count() or 1) - 1))
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=workers,
            worker_init_fn=_worker_init,
            pin_memory=self.device.type == "cuda",
        )

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        import torch
        from tqdm import tqdm

        self.model.train()
        self.sampler.set_epoch(epoch)
        self.state = None
        loader = self._loader(self.data.train_set, self.sampler, self.batch_size)
        generator = torch.Generator().manual_seed(self.config.seed * 1000003 + epoch)
        autocast, scaler = self.autocast, self.scaler
        totals = {"loss": 0.0, "right": 0, "seen": 0}
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
                loss, right, seen = self._step(batch, generator)
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
                    f"{self._unit}_loss": f"{totals['loss'] / max(1, totals['seen']):.3f}",
                    f"{self._unit}_acc": f"{totals['right'] / max(1, totals['seen']):.3f}",
                }
            )
        bar.close()
        loss_sum, right, seen = self._all_reduce([totals["loss"], totals["right"], totals["seen"]])
        seconds = time.perf_counter() - started
        return {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(1, seen),
            "train_accuracy": right / max(1, seen),
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 3),
        }

    def _step(self, batch: Any, generator: Any) -> tuple[Any, int, int]:
        """(loss, items right, items seen) of one batch. Items: clips for the clip objective;
        keyword regions found at their peak and background frames right for the stream one."""
        import torch

        from kws_ghost.losses import clip_loss, stream_loss

        smoothing = self.config.label_smoothing
        augment = self.config.augment
        if self.config.objective == "clip":
            audio, target, failed = batch
            self.unreadable.add(failed.tolist())
            target = target.masked_fill(failed >= 0, IGNORE)
            audio, target = audio.to(self.device), target.to(self.device)
            with torch.no_grad():
                features = spec_augment(
                    self.frontend(audio), augment, self.model.feature_mean, generator
                )
            logits, _ = self.ddp_model(features)
            loss, predicted = clip_loss(logits, target, self.model.config.pooling, smoothing)
            return loss, int((predicted == target).sum()), int((target != IGNORE).sum())
        audio, targets, regions, failed = batch
        self.unreadable.add(failed.flatten().tolist())
        audio, targets, regions = (t.to(self.device) for t in (audio, targets, regions))
        seconds = max(1, round(self.config.sequence.seconds))
        masks = dataclasses.replace(augment, time_masks=augment.time_masks * seconds)
        with torch.no_grad():
            features = spec_augment(self.frontend(audio), masks, self.model.feature_mean, generator)
        logits, state = self.ddp_model(features, self._carried_state(len(audio), generator))
        self.state = state.detach()
        region_mean = self.config.sequence.keyword_targets == "region"
        loss, stats = stream_loss(logits, targets, regions, self.background, smoothing, region_mean)
        right = int(stats["keywords_right"]) + int(stats["background_right"])
        seen = int(stats["keywords"]) + int(stats["background"])
        return loss, right, seen

    def _reserve_run_dir(self) -> None:
        """Make the run folder at the first checkpoint (a failed run leaves none), checked again:
        another run may have taken a default name (it holds the time to the second) meanwhile,
        and then this run takes the next free one."""
        run_dir, suffix = self.run_dir, 1
        while True:
            try:
                run_dir.mkdir(parents=True, exist_ok=not self.default_dir)
                break
            except FileExistsError:
                suffix += 1
                run_dir = self.run_dir.with_name(f"{self.run_dir.name}-{suffix}")
        _check_new_run_dir(run_dir)
        if run_dir != self.run_dir:
            self.log(f"note: {self.run_dir} was taken meanwhile; this run is {run_dir}")
            self.run_dir = run_dir
        write_marker(run_dir, RUN_MARKER)

    @property
    def published_model(self) -> Any:
        """The model validation scores and checkpoints hold: the weights' average when
        ``ema_decay`` is set, else the trained weights themselves."""
        return self.ema.module if self.ema is not None else self.model

    def _carried_state(self, batch: int, generator: Any) -> Any:
        """Each row's state from the previous batch, or zeros (at random, and at epoch starts)."""
        import torch

        state = self.state
        if state is None:
            return None
        if state.shape[1] != batch:
            return None
        keep = torch.rand(batch, generator=generator) >= self.config.sequence.state_reset_prob
        return state * keep.to(state.device, state.dtype)[None, :, None]

    def _validate(self) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
        """Clip accuracy and loss on the validation clips; with validation recordings, the hit
        rate at the target false-alarm rate and the DET summary a checkpoint carries."""
        import numpy as np

        from kws_ghost.evaluate import clip_predictions
        from kws_ghost.runtime import TorchRuntime, log_softmax

        model = self.published_model
        model.eval()
        runtime = TorchRuntime(model, self.labels, self.frontend_config)
        sampler = EpochSampler(
            len(self.data.val_clips),
            shuffle=False,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            even=False,
        )
        scores, targets, failed = clip_predictions(
            runtime, self._loader(self.data.val_clips, sampler, 256), self.frontend
        )
        self.unreadable_val.add(failed)
        # stream models' clip scores are decision margins in [-1, 1]: sharpen them first
        sharp = scores if self.model.config.pooling != "max" else scores / 0.1
        loss = -log_softmax(sharp)[np.arange(len(targets)), targets].sum()
        correct = int((scores.argmax(1) == targets).sum())
        loss, correct, count = self._all_reduce([float(loss), correct, len(targets)])
        metrics: dict[str, Any] = {"val_loss": loss / count, "val_accuracy": correct / count}
        detection = None
        if self.data.recordings is not None and self.dist.is_main:
            detection = self.data.recordings.evaluate(runtime, self.config.target_fa_per_hour)
            metrics.update(
                {
                    "val_hit_rate": detection["hit_rate"],
                    "val_fa_per_hour": detection["false_alarms_per_hour"],
                    "val_threshold": detection["threshold"],
                }
            )
        self.model.train()
        return metrics, detection

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

    def _all_reduce(self, values: list[float]) -> list[float]:
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

    # -- files ------------------------------------------------------------------------------------

    def config_record(self) -> dict[str, Any]:
        from kws_ghost import __version__

        return {
            "package_version": __version__,
            "labels": self.labels,
            "model": to_dict(self.model.config),
            "frontend": to_dict(self.frontend_config),
            "train": to_dict(self.config),
            "world_size": self.dist.world_size,
            "train_counts": count_labels(self.data.train_items, self.labels),
            "validation_counts": count_labels(self.data.val_items, self.labels),
        }

    def _save(self, epochs_done: int, record: dict[str, Any], detection: Any) -> None:
        import torch

        from kws_ghost.checkpoint import save_checkpoint

        first = not (self.run_dir / "last.pt").exists()
        if first:
            self._reserve_run_dir()
            write_json(self.run_dir / "config.json", self.config_record())
        common = {
            "train_config": to_dict(self.config),
            "metrics": record,
            "epoch": epochs_done,
            "detection": detection,
        }
        train_state = {
            "epoch": epochs_done,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "history": self.history,
        }
        fe, labels = self.frontend_config, self.labels
        if best_epoch(self.history) is record:
            save_checkpoint(self.run_dir / "best.pt", self.published_model, fe, labels, **common)
        if self.ema is not None:
            train_state["raw_model"] = {
                k: v.detach().cpu() for k, v in self.model.state_dict().items()
            }
            train_state["ema_steps"] = int(self.ema.n_averaged)
        save_checkpoint(
            self.run_dir / "last.pt",
            self.published_model,
            fe,
            labels,
            train_state=train_state,
            **common,
        )
        # metrics.jsonl mirrors the checkpoint's history, rewritten whole (a few KB): a resumed
        # run never keeps a line written after the checkpoint it resumed from
        with atomic_open(self.run_dir / "metrics.jsonl") as handle:
            for line in self.history:
                handle.write(json.dumps(line) + "\n")
        if first:
            point_latest(self.run_dir)


def _check_new_run_dir(run_dir: Path) -> None:
    """A new run goes into a fresh folder, or an empty one, never over another run or files."""
    if (run_dir / "last.pt").exists():
        raise KwsError(
            f"{run_dir} already holds a run: add --resume to continue it, or choose another --out"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise KwsError(f"--out {run_dir} is a file, not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / RUN_MARKER).exists():
        raise KwsError(f"--out {run_dir} exists and holds other files: choose another folder")


def _brief(record: dict[str, Any]) -> str:
    parts = []
    if "val_hit_rate" in record:
        parts.append(f"validation hit rate {record['val_hit_rate']:.3f}")
    if "val_accuracy" in record:
        parts.append(f"clip accuracy {record['val_accuracy']:.4f}")
    return ", ".join(parts) or "no validation"


def _summary(record: dict[str, Any], epochs: int, unit: str = "frame") -> str:
    """One line per epoch that names what each figure measures: training figures are over
    training ``unit``s (frames for the stream objective, clips for the clip one), validation
    ones over whole validation clips and recordings."""
    text = (
        f"epoch {record['epoch']}/{epochs}: train {unit} loss {record['train_loss']:.4f} "
        f"{unit} acc {record['train_accuracy']:.4f}"
    )
    if "val_accuracy" in record:
        text += f" | val clip loss {record['val_loss']:.4f} clip acc {record['val_accuracy']:.4f}"
    if "val_hit_rate" in record:
        fa = record["val_fa_per_hour"]
        text += f" hit rate {record['val_hit_rate']:.3f}" + (
            f" @ {fa:.1f} FA/h" if fa is not None else ""
        )
    return text + f" | {record['seconds']:.1f} s"


def _worker_init(worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)  # data workers decode audio; leave the cores to the model
