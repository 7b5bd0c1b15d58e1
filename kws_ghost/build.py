"""The pieces a training run is made of: its data (``build_data``), its network normalised by
the training split's feature statistics (``build_network``) and its optimiser and schedule
(``build_optimizer``: AdamW, linear warm-up, cosine decay). What differs between training
objectives comes from the run's ``Objective`` (``kws_ghost.objectives``)."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Optional

from kws_ghost.config import FrontendConfig, ModelConfig, TrainConfig
from kws_ghost.data import ClipDataset, Corpus, Item, build_items, resolve_labels, scan_corpus
from kws_ghost.errors import KwsError
from kws_ghost.objectives import Objective, make_objective


@dataclasses.dataclass
class RunData:
    """What a run trains and validates on."""

    corpus: Corpus
    labels: list[str]
    objective: Objective
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
    val_clips = ClipDataset(
        corpus, val_items, frontend.clip_samples, frontend.sample_rate, None, seed
    )
    objective = make_objective(config, labels)
    train_set, train_clips = objective.training_set(corpus, train_items, frontend)
    validation_recordings = None
    if recordings:
        validation_recordings = objective.validation_recordings(
            corpus, frontend, log, bool(val_items)
        )
    return RunData(
        corpus,
        labels,
        objective,
        train_items,
        val_items,
        train_set,
        train_clips,
        val_clips,
        validation_recordings,
    )


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


def build_network(
    model_config: ModelConfig, frontend: FrontendConfig, data: RunData, config: TrainConfig
) -> Any:
    """The model for ``data``'s labels and features, as its objective trains it, normalised by
    training-split statistics."""
    import torch

    from kws_ghost.features import Frontend
    from kws_ghost.models import build_model

    model_config = dataclasses.replace(
        model_config, input_dim=frontend.num_features, num_classes=len(data.labels)
    )
    model_config = data.objective.network_config(model_config)
    torch.manual_seed(config.seed)
    model = build_model(model_config)
    if config.init:  # its weights come with the normalisation they were trained under
        load_initial_weights(model, config.init, frontend, data.labels)
        return model
    plain = ClipDataset(
        data.corpus, data.train_items, frontend.clip_samples, frontend.sample_rate, None
    )
    mean, std = feature_statistics(plain, Frontend(frontend), config.norm_clips, config.seed)
    model.set_normalization(mean, std)
    return model


# fields that may differ between a run and the model file it starts from
INIT_MAY_DIFFER = ("objective", "pooling", "dropout")


def load_initial_weights(
    model: Any, path: str, frontend: FrontendConfig, labels: list[str]
) -> None:
    """Copy the weights (and feature normalisation) of model file ``path`` into ``model``;
    one clear line where that file's model, labels or front-end differ from the run's."""
    source = load_matching(path, "--init", frontend, labels)
    ours = dataclasses.asdict(model.config)
    theirs = dataclasses.asdict(source.model_config)
    differ = sorted(k for k in ours if k not in INIT_MAY_DIFFER and ours[k] != theirs.get(k))
    if differ:
        described = ", ".join(f"{k} {theirs.get(k)} (this run: {ours[k]})" for k in differ)
        raise KwsError(f"--init {path}: another model: {described}")
    model.load_state_dict(source.model_state, strict=True)


def load_matching(path: str, option: str, frontend: FrontendConfig, labels: list[str]) -> Any:
    """The checkpoint in model file ``path`` (given as ``option``); one clear line where its
    labels or front-end differ from the run's."""
    from kws_ghost.checkpoint import load_checkpoint

    source = load_checkpoint(path)
    if source.labels != list(labels):
        raise KwsError(f"{option} {path}: its labels {source.labels} are not this run's {labels}")
    if source.frontend_config != frontend:
        raise KwsError(f"{option} {path}: its features differ from this run's front-end")
    return source


def load_teacher(path: str, frontend: FrontendConfig, labels: list[str]) -> Any:
    """The stream model in ``path`` that a run distils from, frozen in eval mode; one clear line
    where its labels, front-end or objective differ from the run's."""
    import torch

    from kws_ghost.models import build_model

    source = load_matching(path, "--teacher", frontend, labels)
    if source.model_config.objective != "stream":
        raise KwsError(
            f"--teacher {path}: a {source.model_config.objective} model; a teacher streams"
        )
    with torch.random.fork_rng(devices=[]):  # its random init must not move the run's seed
        teacher = build_model(source.model_config)
    teacher.load_state_dict(source.model_state, strict=True)
    return teacher.eval().requires_grad_(False)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to 1% of the peak."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


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


def make_loader(dataset: Any, sampler: Any, batch_size: int, workers: int, pin: bool) -> Any:
    """A DataLoader over ``dataset``; ``workers`` < 0: up to 4, leaving a core to the model."""
    import torch

    if workers < 0:
        workers = max(0, min(4, (os.cpu_count() or 1) - 1))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=_worker_init,
        pin_memory=pin,
    )


def _worker_init(worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)  # data workers decode audio; leave the cores to the model
