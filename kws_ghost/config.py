"""Configuration dataclasses. Each checkpoint stores them as plain dicts, so a model file rebuilds
its model and front-end without repeated flags."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, TypeVar

from kws_ghost.errors import KwsError

ARCHITECTURES = ("ghost-gru", "gru", "ghost-lstm", "lstm")
CHEAP_OPERATIONS = ("linear", "elementwise")
ACTIVATIONS = ("none", "tanh", "relu", "sigmoid")
POOLINGS = ("mean", "last")
FEATURE_KINDS = ("mfcc", "logmel")
TASKS = ("gsc12", "gsc35", "custom")

T = TypeVar("T")


def from_dict(cls: type[T], values: dict[str, Any], what: str = "config") -> T:
    """Build dataclass ``cls`` from ``values``: unknown keys are an error, missing ones default."""
    if not isinstance(values, dict):
        raise KwsError(f"{what}: expected a mapping, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise KwsError(f"{what}: unknown field(s) {', '.join(unknown)}")
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain dict (JSON- and weights_only-safe)."""
    return dataclasses.asdict(obj)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise KwsError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")


@dataclasses.dataclass
class FrontendConfig:
    """Feature front-end: 16 kHz audio -> frames of MFCCs (or log-mel energies) every hop.

    Frames follow ``torch.stft(center=False)``: frame i covers samples [i*hop, i*hop + n_fft) with a
    Hann window of ``window_ms`` centred in it, so streaming needs no look-ahead.
    """

    kind: str = "mfcc"
    sample_rate: int = 16000
    window_ms: float = 30.0
    hop_ms: float = 10.0
    n_fft: int = 512
    n_mels: int = 40
    n_mfcc: int = 40
    fmin: float = 20.0
    fmax: Optional[float] = 7600.0
    # Mel power floor before the log: 1e-8 (-80 dB) keeps zero padding from dominating the
    # features; 1e-6 clipped a third of real speech's log-mel values (see README).
    log_floor: float = 1e-8
    clip_seconds: float = 1.0

    def validate(self) -> None:
        _choice("feature kind", self.kind, FEATURE_KINDS)
        if self.win_length > self.n_fft:
            raise KwsError(
                f"window ({self.win_length} samples) is longer than n_fft ({self.n_fft})"
            )
        if self.hop_length <= 0:
            raise KwsError("hop must be positive")
        if self.kind == "mfcc" and not 0 < self.n_mfcc <= self.n_mels:
            raise KwsError(f"n_mfcc must be in 1..n_mels ({self.n_mels}), not {self.n_mfcc}")

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.window_ms / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    @property
    def num_features(self) -> int:
        return self.n_mfcc if self.kind == "mfcc" else self.n_mels

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Frames the offline front-end yields for ``num_samples`` samples."""
        if num_samples < self.n_fft:
            return 0
        return 1 + (num_samples - self.n_fft) // self.hop_length


@dataclasses.dataclass
class ModelConfig:
    """A keyword classifier: recurrent stack -> pooling over time -> linear head."""

    arch: str = "ghost-gru"
    input_dim: int = 40
    hidden: int = 128
    layers: int = 2
    # Ghost ratio s: intrinsic size m = ceil(hidden / s). Ignored (treated as 1) for gru / lstm.
    ratio: float = 2.0
    cheap_op: str = "linear"
    cheap_activation: str = "tanh"
    dropout: float = 0.2
    pooling: str = "mean"
    num_classes: int = 12

    def validate(self) -> None:
        _choice("model", self.arch, ARCHITECTURES)
        _choice("cheap operation", self.cheap_op, CHEAP_OPERATIONS)
        _choice("cheap-operation activation", self.cheap_activation, ACTIVATIONS)
        _choice("pooling", self.pooling, POOLINGS)
        if self.hidden < 1 or self.layers < 1 or self.input_dim < 1 or self.num_classes < 1:
            raise KwsError("hidden, layers, input_dim and num_classes must be positive")
        if self.ratio < 1:
            raise KwsError(f"ratio must be >= 1, not {self.ratio}")
        if not 0 <= self.dropout < 1:
            raise KwsError(f"dropout must be in [0, 1), not {self.dropout}")

    @property
    def cell(self) -> str:
        return "lstm" if self.arch.endswith("lstm") else "gru"

    @property
    def effective_ratio(self) -> float:
        return self.ratio if self.arch.startswith("ghost-") else 1.0

    @property
    def intrinsic(self) -> int:
        return math.ceil(self.hidden / self.effective_ratio)


@dataclasses.dataclass
class DetectorConfig:
    """Decision settings. Times in seconds; ``hop_ms`` is rounded to whole feature frames."""

    hop_ms: float = 100.0
    threshold: float = 0.6
    smoothing: int = 3  # hops averaged (3 x 100 ms)
    patience: int = 2  # consecutive hops above threshold before a run counts
    refractory: float = 0.5  # seconds after an event's end before any keyword can fire again
    keywords: Optional[list[str]] = None  # None: every keyword label of the model

    def validate(self) -> None:
        if not 0 < self.threshold <= 1:
            raise KwsError(f"threshold must be in (0, 1], not {self.threshold}")
        if self.hop_ms <= 0 or self.smoothing < 1 or self.patience < 1 or self.refractory < 0:
            raise KwsError("hop must be positive, smoothing and patience at least 1")


@dataclasses.dataclass
class AugmentConfig:
    """Training-time augmentation (off for evaluation). Defaults follow TF speech_commands:
    +-100 ms shift, background noise with probability 0.8 at volume <= 0.1; plus SpecAugment."""

    time_shift_ms: float = 100.0
    noise_prob: float = 0.8
    noise_volume: float = 0.1
    time_masks: int = 2
    time_mask_frames: int = 10
    freq_masks: int = 2
    freq_mask_bins: int = 5
    # Probability that a word clip becomes an _unknown_ example holding only a fragment of the
    # word, as a sliding window sees it just before and after the word. Off by default: 5% cut
    # false alarms on a synthetic stream fivefold but did not help on real speech (README).
    fragment_prob: float = 0.0


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and data choices of a run (the model and front-end have their own configs).

    Defaults: AdamW with a one-epoch warm-up and cosine decay, label smoothing 0.1, TF-style shift
    and noise augmentation plus SpecAugment masks.
    """

    data: str = ""
    task: str = "gsc12"
    keywords: list[str] = dataclasses.field(default_factory=list)
    extra_fraction: float = 0.1  # _silence_ and _unknown_ each, of every split
    epochs: int = 40
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    grad_clip: float = 5.0
    seed: int = 0
    device: str = "auto"
    workers: int = -1  # -1: one per spare core, at most 4
    norm_clips: int = 2000
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise KwsError("epochs, batch size and learning rate must be positive")
        if isinstance(self.augment, dict):
            self.augment = from_dict(AugmentConfig, self.augment, "augment config")
