"""Training objectives: what a run learns from, its loss, and how its model is used.

* ``stream`` (the default): long sequences of corpus items with per-frame targets
  (``kws_ghost.sequences``, ``kws_ghost.losses.stream_loss``), the recurrent state carried from
  batch to batch; validated on clips and on recordings of validation speakers (hit rate at a
  false-alarm rate). Its model streams: one step per frame, the state carried forever.
* ``clip``: the earlier recipe, one label per 1 s clip pooled over its frames
  (``losses.clip_loss``); validated on clips. Its model scores windows from a zero state.

The objective is recorded in the model config (``ModelConfig.objective``), so the runtime, the
scorers and the network builder read one field (files of earlier versions: derived from the
pooling). The ``Trainer`` asks its objective for everything that differs between the two.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

from kws_ghost.config import AugmentConfig, FrontendConfig, ModelConfig, TrainConfig
from kws_ghost.data import (
    SILENCE,
    UNKNOWN,
    ClipDataset,
    Corpus,
    EpochSampler,
    Item,
    spec_augment,
)
from kws_ghost.errors import KwsError
from kws_ghost.sequences import IGNORE

BACKGROUND = (SILENCE, UNKNOWN)


class Objective:
    """What differs between objectives; one instance per run (the stream one carries state)."""

    name = ""
    unit = ""  # what the training figures a run prints count (frames or clips)
    items = ""  # what one training item is (sequences or clips)
    streams = False

    def __init__(self, config: TrainConfig, labels: list[str]) -> None:
        self.config = config
        self.labels = labels
        self.background = [i for i, label in enumerate(labels) if label in BACKGROUND]

    @staticmethod
    def check(model_config: ModelConfig) -> None:
        """Refuse (one line) a model config this objective cannot train."""

    def network_config(self, model_config: ModelConfig) -> ModelConfig:
        """``model_config`` as this objective trains it, the objective recorded."""
        return dataclasses.replace(model_config, objective=self.name)

    def training_set(
        self, corpus: Corpus, train_items: list[Item], frontend: FrontendConfig
    ) -> tuple[Any, ClipDataset]:
        """(the dataset batches come from, the training items' clips inside it)."""
        raise NotImplementedError

    def validation_recordings(
        self, corpus: Corpus, frontend: FrontendConfig, log: Callable[[str], None], val: bool
    ) -> Any:
        """Recordings scored after every epoch (None: validation by clips alone)."""
        return None

    def start_epoch(self) -> None:
        """A new epoch begins."""

    def step(self, trainer: Any, batch: Any, generator: Any) -> tuple[Any, int, int]:
        """(loss, items right, items seen) of one batch, run through ``trainer``'s model."""
        raise NotImplementedError

    def sharpen(self, scores: Any) -> Any:
        """Validation clip scores as logits for the validation loss."""
        return scores

    def validate(self, trainer: Any) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
        """Clip accuracy and loss on the validation clips; with validation recordings, the hit
        rate at the target false-alarm rate and the DET summary a checkpoint carries."""
        import numpy as np

        from kws_ghost.evaluate import clip_predictions
        from kws_ghost.runtime import TorchRuntime, log_softmax

        model = trainer.published_model
        model.eval()
        runtime = TorchRuntime(model, trainer.labels, trainer.frontend_config)
        sampler = EpochSampler(
            len(trainer.data.val_clips),
            shuffle=False,
            rank=trainer.dist.rank,
            world_size=trainer.dist.world_size,
            even=False,
        )
        scores, targets, failed = clip_predictions(
            runtime, trainer.loader(trainer.data.val_clips, sampler, 256), trainer.frontend
        )
        trainer.unreadable_val.add(failed)
        sharp = self.sharpen(scores)
        loss = -log_softmax(sharp)[np.arange(len(targets)), targets].sum()
        correct = int((scores.argmax(1) == targets).sum())
        loss, correct, count = trainer.all_reduce([float(loss), correct, len(targets)])
        metrics: dict[str, Any] = {"val_loss": loss / count, "val_accuracy": correct / count}
        detection = None
        if trainer.data.recordings is not None and trainer.dist.is_main:
            detection = trainer.data.recordings.evaluate(runtime, self.config.target_fa_per_hour)
            metrics.update(
                {
                    "val_hit_rate": detection["hit_rate"],
                    "val_fa_per_hour": detection["false_alarms_per_hour"],
                    "val_threshold": detection["threshold"],
                }
            )
        trainer.model.train()
        return metrics, detection


class StreamObjective(Objective):
    name, unit, items, streams = "stream", "frame", "sequences", True

    def __init__(self, config: TrainConfig, labels: list[str]) -> None:
        super().__init__(config, labels)
        self.state: Any = None  # each sequence row's recurrent state, carried across batches
        self.teacher_states: Any = None  # each teacher's, carried and reset alike

    @staticmethod
    def check(model_config: ModelConfig) -> None:
        if model_config.pooling != "max":
            raise KwsError(
                f"--pooling {model_config.pooling} goes with --objective clip: a streaming "
                "model's clips are scored by the streaming rule (--pooling max)"
            )

    def training_set(
        self, corpus: Corpus, train_items: list[Item], frontend: FrontendConfig
    ) -> tuple[Any, ClipDataset]:
        from kws_ghost.sequences import SequenceDataset

        seed = self.config.seed
        clips = ClipDataset(
            corpus, train_items, frontend.clip_samples, frontend.sample_rate, None, seed
        )
        others = [
            p
            for word in sorted(corpus.words)
            if word not in self.labels
            for p in corpus.clips(word, "training")
        ]
        sequences = SequenceDataset(
            clips, self.labels, self.config.sequence, frontend, seed, others
        )
        return sequences, clips

    def validation_recordings(
        self, corpus: Corpus, frontend: FrontendConfig, log: Callable[[str], None], val: bool
    ) -> Any:
        from kws_ghost.validation import ValidationRecordings

        if ValidationRecordings.possible(corpus, self.labels):
            minutes = self.config.val_recording_minutes
            return ValidationRecordings(
                corpus, self.labels, frontend, minutes, self.config.seed, log
            )
        if val:
            log("note: no validation keyword clips: best.pt is chosen by clip accuracy")
        return None

    def start_epoch(self) -> None:
        self.state = self.teacher_states = None

    def step(self, trainer: Any, batch: Any, generator: Any) -> tuple[Any, int, int]:
        """Keyword regions found at their peak and background frames right count as right."""
        import torch

        from kws_ghost.losses import distillation_loss, stream_loss

        config = self.config
        audio, targets, regions, failed = batch
        trainer.unreadable.add(failed.flatten().tolist())
        audio, targets, regions = (t.to(trainer.device) for t in (audio, targets, regions))
        seconds = max(1, round(config.sequence.seconds))
        masks = dataclasses.replace(config.augment, time_masks=config.augment.time_masks * seconds)
        with torch.no_grad():
            features = training_features(trainer, audio, masks, generator)
        keep = self._kept_rows(len(audio), generator)
        logits, state = trainer.ddp_model(features, carried(self.state, keep))
        self.state = state.detach()
        region_mean = config.sequence.keyword_targets == "region"
        loss, stats = stream_loss(
            logits,
            targets,
            regions,
            self.background,
            config.label_smoothing,
            region_mean,
            config.sequence.negative_peak,
        )
        if trainer.teachers:
            states = self.teacher_states or [None] * len(trainer.teachers)
            with torch.no_grad():
                outputs = [
                    teacher(features, carried(state, keep))
                    for teacher, state in zip(trainer.teachers, states)
                ]
            self.teacher_states = [state for _, state in outputs]
            # an ensemble teaches the mean of its logits; one teacher, its own logits exactly
            teacher_logits = torch.stack([logits for logits, _ in outputs]).mean(0)
            weight = config.teacher_weight
            distilled = distillation_loss(logits, teacher_logits, config.teacher_temperature)
            loss = (1 - weight) * loss + weight * distilled
        right = int(stats["keywords_right"]) + int(stats["background_right"])
        seen = int(stats["keywords"]) + int(stats["background"])
        return loss, right, seen

    def _kept_rows(self, batch: int, generator: Any) -> Any:
        """Which rows carry their state from the previous batch (the others start from zeros,
        at random); None at epoch starts, when no state is carried."""
        import torch

        if self.state is None or self.state.shape[1] != batch:
            return None
        return torch.rand(batch, generator=generator) >= self.config.sequence.state_reset_prob

    def sharpen(self, scores: Any) -> Any:
        return scores / 0.1  # a stream model's clip scores are decision margins in [-1, 1]


class ClipObjective(Objective):
    name, unit, items, streams = "clip", "clip", "clips", False

    def network_config(self, model_config: ModelConfig) -> ModelConfig:
        if model_config.pooling == "max":  # the streaming rule scores per-frame targets
            model_config = dataclasses.replace(model_config, pooling="mean")
        return super().network_config(model_config)

    def training_set(
        self, corpus: Corpus, train_items: list[Item], frontend: FrontendConfig
    ) -> tuple[Any, ClipDataset]:
        fragment = self.labels.index(UNKNOWN) if UNKNOWN in self.labels else None
        clips = ClipDataset(
            corpus,
            train_items,
            frontend.clip_samples,
            frontend.sample_rate,
            self.config.augment,
            self.config.seed,
            fragment,
        )
        return clips, clips

    def step(self, trainer: Any, batch: Any, generator: Any) -> tuple[Any, int, int]:
        import torch

        from kws_ghost.losses import clip_loss

        audio, target, failed = batch
        trainer.unreadable.add(failed.tolist())
        target = target.masked_fill(failed >= 0, IGNORE)
        audio, target = audio.to(trainer.device), target.to(trainer.device)
        model = trainer.model
        with torch.no_grad():
            features = training_features(trainer, audio, self.config.augment, generator)
        logits, _ = trainer.ddp_model(features)
        loss, predicted = clip_loss(
            logits, target, model.config.pooling, self.config.label_smoothing
        )
        return loss, int((predicted == target).sum()), int((target != IGNORE).sum())


def training_features(trainer: Any, audio: Any, augment: AugmentConfig, generator: Any) -> Any:
    """A training batch's features: each row's mel filters VTLP-warped where ``augment.vtlp``
    asks (no random draws otherwise, so runs without it replay), then SpecAugment's masks."""
    import torch

    warp = None
    if augment.vtlp:
        warp = 1 + augment.vtlp * (2 * torch.rand(len(audio), generator=generator) - 1)
    features = trainer.frontend(audio, warp)
    return spec_augment(features, augment, trainer.model.feature_mean, generator)


def carried(state: Any, keep: Any) -> Any:
    """``state`` [layers, batch, hidden] with the rows ``keep`` does not hold zeroed; None (zeros)
    without a state or a ``keep``."""
    if state is None or keep is None:
        return None
    return state * keep.to(state.device, state.dtype)[None, :, None]


OBJECTIVE_CLASSES = {"stream": StreamObjective, "clip": ClipObjective}


def make_objective(config: TrainConfig, labels: list[str]) -> Objective:
    return OBJECTIVE_CLASSES[config.objective](config, labels)


def check_model(config: TrainConfig, model_config: ModelConfig) -> None:
    """Refuse (one line) a model config the run's objective cannot train."""
    OBJECTIVE_CLASSES[config.objective].check(model_config)
