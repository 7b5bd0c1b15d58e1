"""Training: one process or many (``torchrun``), resumable from the last finished epoch.

A run folder holds ``config.json``, ``metrics.jsonl`` (one line per epoch), ``last.pt`` (with the
optimiser, scheduler and RNG state) and ``best.pt`` (best validation accuracy, ties broken by the
lower validation loss), each written atomically at the end of every epoch, so a killed run loses
at most the epoch in progress.
``runs/latest`` points at the newest run. Only rank 0 writes files.
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

from kws_ghost.config import FrontendConfig, ModelConfig, TrainConfig, from_dict, to_dict
from kws_ghost.data import (
    UNKNOWN,
    ClipDataset,
    EpochSampler,
    build_items,
    count_labels,
    resolve_labels,
    scan_corpus,
    spec_augment,
)
from kws_ghost.errors import KwsError
from kws_ghost.fileio import write_json


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
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{model_config.arch}"


def point_latest(run_dir: Path) -> None:
    """Make ``runs/latest`` (beside the run folder) a symlink to it, replaced atomically."""
    latest = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}"
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
        with torch.no_grad():
            feats = frontend(torch.from_numpy(batch)).double().reshape(-1, total.numel())
        total += feats.sum(0)
        total_sq += feats.square().sum(0)
        frames += feats.shape[0]
    mean = total / frames
    std = (total_sq / frames - mean.square()).clamp_min(1e-10).sqrt()
    return mean.float(), std.float()


class Trainer:
    """Holds a run's state; ``run()`` trains until ``config.epochs`` and returns the history."""

    def __init__(
        self,
        train_config: TrainConfig,
        model_config: ModelConfig,
        frontend_config: FrontendConfig,
        run_dir: Optional[Path] = None,
        resume: bool = False,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        import torch

        train_config.validate()
        self.config = train_config
        self.frontend_config = frontend_config
        self.progress = progress
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self.device = pick_device(train_config.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = init_distributed(self.device.type)
        if not self.dist.is_main:
            self.log = lambda message: None
            self.progress = False
        self.run_dir = Path(run_dir) if run_dir else default_run_dir(model_config)
        if self.dist.world_size > 1:
            self.run_dir = self._agree_on_run_dir(self.run_dir)
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_accuracy = -1.0
        self.best_loss = float("inf")
        checkpoint = self._resume_point() if resume else None
        if checkpoint is None and resume:
            raise KwsError(f"{self.run_dir}: nothing to resume (no last.pt)")
        if checkpoint is not None:
            model_config = checkpoint.model_config
            self.frontend_config = frontend_config = checkpoint.frontend_config
        elif (self.run_dir / "last.pt").exists():
            raise KwsError(
                f"{self.run_dir} already holds a run: add --resume to continue it, or choose "
                "another --out"
            )

        corpus = scan_corpus(train_config.data, warn=self.log)
        if checkpoint is not None:
            self.labels = checkpoint.labels
        else:
            self.labels = resolve_labels(
                corpus, train_config.task, train_config.keywords, warn=self.log
            )
        if len(self.labels) < 2:
            raise KwsError(f"{corpus.root}: only {len(self.labels)} class(es) with data")
        seed = train_config.seed
        fraction = train_config.extra_fraction
        self.train_items = build_items(corpus, self.labels, "training", seed, fraction)
        self.val_items = build_items(corpus, self.labels, "validation", seed, fraction)
        if not self.train_items:
            raise KwsError(f"{corpus.root}: the training split is empty")
        if not self.val_items:
            self.log("note: the validation split is empty: best.pt will be the last epoch")
        clip = frontend_config.clip_samples
        rate = frontend_config.sample_rate
        fragment_label = self.labels.index(UNKNOWN) if UNKNOWN in self.labels else None
        self.train_set = ClipDataset(
            corpus, self.train_items, clip, rate, train_config.augment, seed, fragment_label
        )
        self.val_set = ClipDataset(corpus, self.val_items, clip, rate, None, seed)

        from kws_ghost.features import Frontend
        from kws_ghost.models import build_model

        model_config = dataclasses.replace(
            model_config, input_dim=frontend_config.num_features, num_classes=len(self.labels)
        )
        torch.manual_seed(seed)
        self.model = build_model(model_config).to(self.device)
        self.frontend = Frontend(frontend_config).to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=train_config.lr, weight_decay=train_config.weight_decay
        )
        self.batch_size = max(1, math.ceil(train_config.batch_size / self.dist.world_size))
        self.sampler = EpochSampler(
            len(self.train_set), seed, True, self.dist.rank, self.dist.world_size
        )
        steps_per_epoch = math.ceil(len(self.sampler) / self.batch_size)
        total = steps_per_epoch * train_config.epochs
        warmup = max(1, int(steps_per_epoch * train_config.warmup_epochs))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, warmup, total)
        )
        if checkpoint is not None:
            self._restore(checkpoint)
        else:
            mean, std = feature_statistics(
                ClipDataset(corpus, self.train_items, clip, rate, None, seed),
                self.frontend.cpu(),
                train_config.norm_clips,
                seed,
            )
            self.frontend.to(self.device)
            self.model.set_normalization(mean.to(self.device), std.to(self.device))
        self.ddp_model = self.model
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    # -- set-up helpers ---------------------------------------------------------------------------

    def _agree_on_run_dir(self, run_dir: Path) -> Path:
        """Every rank uses rank 0's folder name (timestamps may differ by a second)."""
        import torch.distributed as dist

        names = [str(run_dir)]
        dist.broadcast_object_list(names, src=0)
        return Path(names[0])

    def _resume_point(self) -> Any:
        from kws_ghost.checkpoint import load_checkpoint

        last = self.run_dir / "last.pt"
        if not last.exists():
            return None
        return load_checkpoint(last)

    def _restore(self, checkpoint: Any) -> None:
        import torch

        state = checkpoint.extra.get("train_state")
        if not isinstance(state, dict):
            raise KwsError(f"{checkpoint.path}: holds no training state to resume from")
        stored = checkpoint.extra.get("train_config", {})
        if (
            stored.get("data")
            and Path(stored["data"]).resolve() != Path(self.config.data).resolve()
        ):
            self.log(f"note: resuming on {self.config.data} (the run started on {stored['data']})")
        self.model.load_state_dict(checkpoint.model_state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.start_epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.best_accuracy, self.best_loss = best_so_far(self.history)
        self.log(f"resuming {self.run_dir} after epoch {self.start_epoch}")

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stop_after: Optional[int] = None) -> list[dict[str, Any]]:
        """Train to ``config.epochs`` (or stop early after epoch ``stop_after``, leaving a run that
        ``--resume`` continues as if it had been interrupted there)."""
        if self.dist.is_main:
            self._write_run_files()
        last_epoch = min(self.config.epochs, stop_after or self.config.epochs)
        for epoch in range(self.start_epoch, last_epoch):
            record = self._train_epoch(epoch)
            if self.val_items:
                record.update(self._validate(epoch))
            self.history.append(record)
            self.log(_summary(record, self.config.epochs))
            if self.dist.is_main:
                self._save(epoch + 1, record)
            self._barrier()
        if self.dist.is_main:
            best = max((r.get("val_accuracy", -1) for r in self.history), default=-1)
            self.log(f"done: {self.run_dir} (best validation accuracy {best:.4f})")
        return self.history

    def _loader(self, dataset: ClipDataset, sampler: Any, batch_size: int) -> Any:
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
        loader = self._loader(self.train_set, self.sampler, self.batch_size)
        generator = torch.Generator().manual_seed(self.config.seed * 1000003 + epoch)
        autocast, scaler = self._mixed_precision()
        loss_sum, correct, seen = 0.0, 0, 0
        started = time.perf_counter()
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            disable=not self.progress,
            leave=False,
            unit="batch",
            file=sys.stderr,
        )
        for audio, target in bar:
            audio = audio.to(self.device, non_blocking=True)
            target = target.to(self.device, non_blocking=True)
            with torch.no_grad():
                features = self.frontend(audio)
                features = spec_augment(
                    features, self.config.augment, self.model.feature_mean, generator
                )
            with autocast:
                logits, _ = self.ddp_model(features)
                loss = torch.nn.functional.cross_entropy(
                    logits.float(), target, label_smoothing=self.config.label_smoothing
                )
            self.optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            scaler.step(self.optimizer)
            scaler.update()
            self.scheduler.step()
            loss_sum += loss.item() * len(target)
            correct += (logits.argmax(1) == target).sum().item()
            seen += len(target)
            rate = seen * self.dist.world_size / (time.perf_counter() - started)
            bar.set_postfix(
                loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", clips_s=f"{rate:.0f}"
            )
        bar.close()
        totals = self._all_reduce([loss_sum, correct, seen])
        seconds = time.perf_counter() - started
        return {
            "epoch": epoch + 1,
            "train_loss": totals[0] / totals[2],
            "train_accuracy": totals[1] / totals[2],
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 3),
            "clips_per_second": round(totals[2] / seconds, 1),
        }

    def _validate(self, epoch: int) -> dict[str, Any]:
        import torch

        from kws_ghost.evaluate import predict

        sampler = EpochSampler(
            len(self.val_set),
            shuffle=False,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            even=False,
        )
        loader = self._loader(self.val_set, sampler, 256)
        self.model.eval()
        logits, targets = predict(
            lambda features: self.model(features)[0], self.frontend, loader, self.device
        )
        loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        correct = (logits.argmax(1) == targets).sum().item()
        loss, correct, count = self._all_reduce([loss, correct, len(targets)])
        return {"val_loss": loss / count, "val_accuracy": correct / count}

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

    def _config_record(self) -> dict[str, Any]:
        from kws_ghost import __version__

        return {
            "package_version": __version__,
            "labels": self.labels,
            "model": to_dict(self.model.config),
            "frontend": to_dict(self.frontend_config),
            "train": to_dict(self.config),
            "world_size": self.dist.world_size,
            "train_counts": count_labels(self.train_items, self.labels),
            "validation_counts": count_labels(self.val_items, self.labels),
        }

    def _write_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "config.json", self._config_record())
        # metrics.jsonl mirrors the checkpoint's history: rewrite it (a resumed run drops any
        # line written after the last checkpoint).
        from kws_ghost.fileio import atomic_open

        with atomic_open(self.run_dir / "metrics.jsonl") as handle:
            import json

            for record in self.history:
                handle.write(json.dumps(record) + "\n")
        point_latest(self.run_dir)

    def _save(self, epochs_done: int, record: dict[str, Any]) -> None:
        import torch

        from kws_ghost.checkpoint import save_checkpoint
        from kws_ghost.fileio import append_jsonl

        accuracy = record.get("val_accuracy", -1.0)
        loss = record.get("val_loss", float("inf"))
        improved = not self.val_items or is_better(
            accuracy, loss, self.best_accuracy, self.best_loss
        )
        if improved:
            self.best_accuracy, self.best_loss = accuracy, loss
        common = {
            "train_config": to_dict(self.config),
            "metrics": record,
            "epoch": epochs_done,
        }
        train_state = {
            "epoch": epochs_done,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "history": self.history,
        }
        save_checkpoint(
            self.run_dir / "last.pt",
            self.model,
            self.frontend_config,
            self.labels,
            train_state=train_state,
            **common,
        )
        if improved:
            save_checkpoint(
                self.run_dir / "best.pt", self.model, self.frontend_config, self.labels, **common
            )
        append_jsonl(self.run_dir / "metrics.jsonl", record)


def is_better(accuracy: float, loss: float, best_accuracy: float, best_loss: float) -> bool:
    """Whether an epoch's validation result beats the best so far: higher accuracy, or the same
    accuracy at a lower loss. A small validation set often scores several epochs the same, and the
    first of them (taken alone) generalised worse to held-out speakers than the lower-loss one."""
    return accuracy > best_accuracy or (accuracy == best_accuracy and loss < best_loss)


def best_so_far(history: list[dict[str, Any]]) -> tuple[float, float]:
    """Validation accuracy and loss of the best epoch in ``history`` (-1, inf: none validated)."""
    best = (-1.0, float("inf"))
    for record in history:
        if "val_accuracy" in record and is_better(
            record["val_accuracy"], record["val_loss"], *best
        ):
            best = (record["val_accuracy"], record["val_loss"])
    return best


def _summary(record: dict[str, Any], epochs: int) -> str:
    text = (
        f"epoch {record['epoch']}/{epochs}: loss {record['train_loss']:.4f} "
        f"acc {record['train_accuracy']:.4f}"
    )
    if "val_accuracy" in record:
        text += f" | val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f}"
    return text + f" | {record['seconds']:.1f} s, {record['clips_per_second']:.0f} clips/s"


def _worker_init(worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)  # data workers decode audio; leave the cores to the model


def train_config_from_dict(values: dict[str, Any]) -> TrainConfig:
    return from_dict(TrainConfig, values, "train config")
