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
CHEAP_INITS = ("uniform", "orthogonal")
INPUT_NORMS = ("stats", "batch")
POOLINGS = ("mean", "last", "max")
OBJECTIVES = ("stream", "clip")
WARM_STARTS = ("clip", "none")
FEATURE_KINDS = ("mfcc", "logmel")
TASKS = ("gsc12", "gsc35", "custom")
# The default training budget: at least this many training items (sequences or clips) and
# epochs (``budget_epochs``). Counted in items, not optimiser steps, so a larger batch saves time.
MIN_ITEMS = 27_000
MIN_EPOCHS = 20
MAX_EPOCHS = 400

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


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    choices: Optional[tuple[str, ...]] = None,
    option: Optional[str] = None,
    factory: Any = dataclasses.MISSING,
    multiple: bool = False,
) -> Any:
    """A config field with what its command-line option needs (``kws_ghost.cli.options``):
    help text, allowed values, the option name where it is not ``--field-name``, and for a list
    whether its option is given once per item (``multiple``, for paths that may hold commas)
    rather than comma-separated."""
    metadata = {"help": help, "choices": choices, "option": option, "multiple": multiple}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


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
    """A keyword classifier: recurrent stack -> per-frame linear head."""

    arch: str = setting("ghost-gru", "Recurrent architecture.", ARCHITECTURES, "--model")
    input_dim: int = 40  # set from the front-end
    hidden: int = setting(112, "Width H of each recurrent layer.")
    layers: int = setting(2, "Recurrent layers.")
    ratio: float = setting(1.5, "Ghost ratio s: intrinsic size m = ceil(H / s) (gru and lstm: 1).")
    cheap_op: str = setting(
        "linear", "Cheap operation that makes the ghost states.", CHEAP_OPERATIONS
    )
    cheap_activation: str = setting(
        "tanh", "Activation after the cheap operation ('none' allows folding).", ACTIVATIONS
    )
    cheap_init: str = setting(
        "uniform",
        "Initial cheap operation: uniform (+-1/sqrt(m), as torch.nn.Linear) or orthogonal (the "
        "ghost states start as a norm-keeping map of the intrinsic ones; elementwise: +-1 copies).",
        CHEAP_INITS,
    )
    input_norm: str = setting(
        "stats",
        "Feature normalisation: stats (the training split's per-coefficient mean and std) or "
        "batch (those, then a BatchNorm over frames, as ref_gru_baseline.py; at inference both "
        "are one per-coefficient affine map, so exports and devices see no difference).",
        INPUT_NORMS,
    )
    dropout: float = setting(0.2, "Dropout between layers and before the head.")
    pooling: str = setting(
        "max",
        "How clip scores come from frame logits: max (the streaming rule: the keyword whose "
        "posterior peaks highest if one reaches 0.5, else _unknown_ or _silence_), mean or last "
        "(clip objective).",
        POOLINGS,
    )
    num_classes: int = 12  # set from the labels
    # the training objective (kws_ghost.objectives), set by train; None in files of earlier
    # versions, whose pooling tells (max: stream)
    objective: Optional[str] = None

    def validate(self) -> None:
        _choice("model", self.arch, ARCHITECTURES)
        if self.objective is not None:
            _choice("objective", self.objective, OBJECTIVES)
        _choice("cheap operation", self.cheap_op, CHEAP_OPERATIONS)
        _choice("cheap-operation activation", self.cheap_activation, ACTIVATIONS)
        _choice("cheap-operation initialisation", self.cheap_init, CHEAP_INITS)
        _choice("input normalisation", self.input_norm, INPUT_NORMS)
        _choice("pooling", self.pooling, POOLINGS)
        if self.hidden < 1 or self.layers < 1 or self.input_dim < 1 or self.num_classes < 1:
            raise KwsError("hidden, layers, input_dim and num_classes must be positive")
        if self.ratio < 1:
            raise KwsError(f"ratio must be >= 1, not {self.ratio}")
        if not 0 <= self.dropout < 1:
            raise KwsError(f"dropout must be in [0, 1), not {self.dropout}")

    @property
    def streams(self) -> bool:
        """Whether the model was trained on streams, so its state may be carried forever
        (clip-trained models only score windows from a zero state)."""
        if self.objective is not None:
            return self.objective == "stream"
        return self.pooling == "max"

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
    """Decision settings; times in seconds.

    ``threshold`` None: taken from the model's validation DET, at ``false_alarms_per_hour`` if
    given, else at the model's own operating point (``kws_ghost.stream.resolve_threshold``).
    """

    threshold: Optional[float] = setting(
        None, "Smoothed posterior needed to fire [default: from the model's validation DET]."
    )
    false_alarms_per_hour: Optional[float] = setting(
        None, "Pick the threshold that gave this many false alarms per hour on validation."
    )
    smoothing: float = setting(0.1, "Seconds of posteriors averaged before the threshold.")
    patience: float = setting(0.03, "Seconds above the threshold an event needs.")
    refractory: float = setting(0.5, "Seconds after an event before another can fire.")
    keywords: Optional[list[str]] = setting(None, "Only these keywords (comma-separated).")
    hop_ms: float = setting(100.0, "Window scorer only: rescore the 1 s window this often.")

    def at(self, threshold: float) -> DetectorConfig:
        """These settings with ``threshold`` fixed (a false-alarm rate already resolved to it)."""
        return dataclasses.replace(self, threshold=threshold, false_alarms_per_hour=None)

    def validate(self) -> None:
        if self.threshold is not None and self.false_alarms_per_hour is not None:
            raise KwsError("give a threshold or a false-alarm rate, not both")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise KwsError(f"threshold must be in (0, 1], not {self.threshold}")
        if self.false_alarms_per_hour is not None and self.false_alarms_per_hour < 0:
            raise KwsError("false alarms per hour must not be negative")
        if self.hop_ms <= 0 or self.smoothing < 0 or self.patience < 0 or self.refractory < 0:
            raise KwsError("hop must be positive; smoothing, patience and refractory not negative")
        if self.patience >= 1.0:  # a run gives its event after 1 s (stream.MAX_RUN_SECONDS)
            raise KwsError(f"patience must be under 1 s, not {self.patience}")


@dataclasses.dataclass
class AugmentConfig:
    """Training-time augmentation (off for evaluation). Defaults follow TF speech_commands:
    +-100 ms shift, background noise with probability 0.8 at volume <= 0.1; plus SpecAugment and
    VTLP 0.1 (+2.4 points of clip accuracy on held-out speakers of the real-speech subset)."""

    time_shift_ms: float = setting(100.0, "Clip objective: random shift of up to this much.")
    noise_prob: float = setting(0.8, "Clip objective: probability of mixing in background noise.")
    noise_volume: float = setting(0.1, "Clip objective: ... at a volume of up to this.")
    time_masks: int = setting(2, "SpecAugment time masks per second of audio.")
    time_mask_frames: int = setting(10, "Longest time mask, in frames.")
    freq_masks: int = setting(2, "SpecAugment feature masks.")
    freq_mask_bins: int = setting(5, "Widest feature mask, in coefficients.")
    fragment_prob: float = setting(
        0.0,
        "Clip objective: probability that a word clip is cut to a fragment and taught as "
        "_unknown_, as a sliding window sees it before and after the word.",
        option="--fragment-negatives",
    )
    vtlp: float = setting(
        0.1,
        "Vocal tract length perturbation: each training item's mel filters read the spectrum "
        "warped by a factor drawn from [1 - x, 1 + x], as another speaker's would be (0: off).",
    )

    def validate(self) -> None:
        if not 0 <= self.vtlp < 0.5:
            raise KwsError(f"--vtlp must be in [0, 0.5), not {self.vtlp}")


@dataclasses.dataclass
class SequenceConfig:
    """Long training sequences for the streaming objective: corpus clips laid end to end over
    background noise, with per-frame targets (``kws_ghost.sequences``)."""

    seconds: float = setting(3.0, "Length of each training sequence.", option="--sequence-seconds")
    words: int = setting(2, "Corpus items per sequence.", option="--sequence-words")
    distractors: int = setting(
        1,
        "Other words added to each sequence, drawn from all of the split's non-keyword clips "
        "(the items hold only a sample of them): most false alarms are other speech.",
    )
    keyword_tail_seconds: float = setting(
        0.3,
        "A keyword may fire from its onset until this long after it ends (a causal model hears "
        "the whole word only at its end).",
    )
    keyword_targets: str = setting(
        "region",
        "max: only max-pooling over each keyword's region; tail: also frame targets from the "
        "word's end to the end of its region; region: also the cross-entropy of the region's "
        "mean frame logits (denser supervision).",
        ("max", "tail", "region"),
    )
    negative_peak: float = setting(
        0.0,
        "Weight of a max-pooling term on negatives: each sequence's background frame where a "
        "keyword's posterior peaks is pushed towards _silence_/_unknown_ (0: off).",
    )
    trim_prob: float = setting(0.5, "Probability a word is cut to its speech (else its 1 s clip).")
    gain_db: float = setting(6.0, "Each word's level varies by up to this much, either way.")
    noise_prob: float = setting(
        0.8, "Probability a sequence lies over background noise.", option="--sequence-noise-prob"
    )
    noise_volume: float = setting(
        0.1, "... at a volume of up to this.", option="--sequence-noise-volume"
    )
    state_reset_prob: float = setting(
        0.25,
        "Training carries each stream's state from batch to batch (so it stays healthy on audio "
        "of any length), restarting from zeros with this probability.",
    )
    reverb_prob: float = setting(
        0.0,
        "Probability that a sequence's speech is convolved with a simulated room impulse "
        "response (exponentially decaying noise, RT60 0.15-0.8 s).",
    )
    speed_perturb: float = setting(
        0.0,
        "Each word is played up to this share faster or slower, tempo and pitch together (as "
        "Kaldi's speed perturbation; 0.1: 0.9-1.1x): more voices from the same speakers.",
    )

    def validate(self) -> None:
        if self.seconds <= 0 or self.words < 1 or self.distractors < 0:
            raise KwsError("sequence seconds and words must be positive")
        if self.negative_peak < 0:
            raise KwsError(f"--negative-peak must not be negative, not {self.negative_peak}")
        if not 0 <= self.speed_perturb < 0.5:
            raise KwsError(f"speed perturbation must be in [0, 0.5), not {self.speed_perturb}")
        if (self.words + self.distractors) * 1.0 > self.seconds:
            raise KwsError(
                f"{self.words + self.distractors} words of up to 1 s do not fit in {self.seconds} s"
            )


def budget_epochs(items_per_epoch: int) -> int:
    """Epochs of the default budget: at least ``MIN_EPOCHS`` and ``MIN_ITEMS`` training items,
    counted in items, not optimiser steps, so a larger batch saves time. A fixed 40 epochs gave a
    24-voice synthetic corpus too few updates (0.73 held-out accuracy, training 0.93); the
    real-speech development subset (1,102 sequences an epoch) gets 25 epochs of batch 64, at
    about 0.4x the wall time of the earlier 40 epochs of batch 16 (benchmarks/plans/speed-*)."""
    return min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(MIN_ITEMS / max(1, items_per_epoch))))


@dataclasses.dataclass
class TrainConfig:
    """Optimisation and data choices of a run (the model and front-end have their own configs).

    Defaults: the stream objective, AdamW with a one-epoch warm-up and cosine decay, label
    smoothing 0.1, SpecAugment masks, batch 64, the item budget (``budget_epochs``), validation
    every 2nd epoch of the second half; best.pt by validation clip accuracy plus hit rate at 10
    false alarms per hour.
    """

    data: str = setting("", "Corpus folder (Speech Commands layout).")
    task: str = setting("gsc12", "gsc12, gsc35 (every word) or custom (with --keywords).", TASKS)
    keywords: list[str] = setting(
        help="Comma-separated keywords; other words become _unknown_.", factory=list
    )
    extra_fraction: float = setting(0.1, "Share of _silence_ and of _unknown_ in every split.")
    objective: str = setting(
        "stream",
        "stream: per-frame targets on long sequences (each keyword's region max-pooled and "
        "averaged, frame cross-entropy elsewhere), the model a device streams; clip: one label "
        "per 1 s clip.",
        OBJECTIVES,
    )
    epochs: Optional[int] = setting(
        None,
        f"Passes over the training items [default: the budget, at least {MIN_EPOCHS} epochs and "
        f"{MIN_ITEMS:,} training items, so a small corpus trains long enough].",
    )
    init: str = setting(
        "",
        "Start from this model file's weights and feature normalisation (fine-tuning, or the "
        "stream objective after the clip one): same architecture, width, labels and front-end.",
    )
    warm_start: str = setting(
        "clip",
        "clip: the stream objective starts from weights trained first on 1 s clips (the clip "
        "objective, in RUN/clip; 2.5 points more clip accuracy on held-out speakers at 1.4x the "
        "time); none: from random weights. Unused with --init or the clip objective.",
        WARM_STARTS,
    )
    warm_start_epochs: Optional[int] = setting(
        None, "Epochs of the clip stage [default: the clip objective's budget]."
    )
    batch_size: int = setting(64, "Global batch (sequences or clips), split across processes.")
    lr: float = setting(6e-3, "Peak learning rate (AdamW, warm-up then cosine decay).")
    weight_decay: float = setting(1e-2, "AdamW weight decay.")
    warmup_epochs: float = setting(1.0, "Epochs of linear learning-rate warm-up.")
    label_smoothing: float = setting(0.1, "Label smoothing of the cross-entropy terms.")
    grad_clip: float = setting(5.0, "Gradient norm clipping.")
    seed: int = setting(0, "Seed of everything random (splits, order, augmentation, weights).")
    device: str = setting("auto", "auto, cpu or cuda.", ("auto", "cpu", "cuda"))
    workers: int = setting(-1, "Data-loading processes (-1: one per spare core, at most 4).")
    norm_clips: int = 2000  # training clips the feature statistics come from
    target_fa_per_hour: float = setting(
        10.0,
        "best.pt is the epoch with the highest validation clip accuracy plus hit rate at this "
        "many false alarms per hour (stream objective).",
    )
    val_every: int = setting(
        2,
        "Validate every this many epochs from --val-from on (and after the last); best.pt is "
        "the best validated epoch. Validation recordings cost half an epoch.",
    )
    val_from: float = setting(
        0.5,
        "Share of the epochs after which validation starts (0: from the first): the best "
        "epoch of a run lies in its second half.",
    )
    val_recording_minutes: float = setting(
        30.0, "Minutes of validation negatives (other words, noise) that count false alarms."
    )
    ema_decay: float = setting(
        0.0,
        "Exponential moving average of the weights per step (e.g. 0.999; 0: off): validation and "
        "checkpoints use the average.",
    )
    teacher: list[str] = setting(
        help="Distil from this stream model file (same labels and front-end, any width or cell): "
        "the stream loss mixes in each frame's divergence from the teacher's posteriors; the "
        "clip stage trains without it. Given again, the teacher is the mean of the models' "
        "logits (an ensemble).",
        factory=list,
        multiple=True,
    )
    teacher_weight: float = setting(
        0.5, "Share of the distillation term in the stream loss (with --teacher)."
    )
    teacher_temperature: float = setting(
        2.0, "Temperature of both models' posteriors in the distillation term."
    )
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    sequence: SequenceConfig = dataclasses.field(default_factory=SequenceConfig)

    @property
    def clip_stage_first(self) -> bool:
        """Whether the run starts with its clip stage (the stream objective, warm-started from
        clip weights, no --init)."""
        return self.objective == "stream" and self.warm_start == "clip" and not self.init

    def clip_stage(self) -> TrainConfig:
        """The first stage of a warm-started run: the same recipe with the clip objective."""
        return dataclasses.replace(
            self,
            objective="clip",
            warm_start="none",
            epochs=self.warm_start_epochs,
            warm_start_epochs=None,
            teacher=[],  # a stream model's posteriors teach frames, not 1 s clips
        )

    def validate(self) -> None:
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1 or self.lr <= 0:
            raise KwsError("epochs, batch size and learning rate must be positive")
        if self.val_every < 1 or not 0 <= self.val_from <= 1:
            raise KwsError("--val-every must be at least 1 and --val-from in [0, 1]")
        _choice("objective", self.objective, OBJECTIVES)
        _choice("warm start", self.warm_start, WARM_STARTS)
        if not 0 <= self.teacher_weight <= 1 or self.teacher_temperature <= 0:
            raise KwsError("--teacher-weight must be in [0, 1] and --teacher-temperature positive")
        if isinstance(self.teacher, str):  # a checkpoint from before ensembles: one path or ""
            self.teacher = [self.teacher] if self.teacher else []
        if self.teacher and self.objective != "stream":
            raise KwsError("--teacher distils a stream model: it goes with --objective stream")
        if self.warm_start_epochs is not None and self.warm_start_epochs < 1:
            raise KwsError("--warm-start-epochs must be at least 1")
        if isinstance(self.augment, dict):
            self.augment = from_dict(AugmentConfig, self.augment, "augment config")
        self.augment.validate()
        if isinstance(self.sequence, dict):
            self.sequence = from_dict(SequenceConfig, self.sequence, "sequence config")
        self.sequence.validate()
        if self.target_fa_per_hour <= 0:
            raise KwsError(
                f"target false alarms per hour must be positive: {self.target_fa_per_hour}"
            )


def stored_train_config(stored: dict[str, Any], what: str) -> TrainConfig:
    """A checkpoint's stored train config, with what runs of earlier versions did where they
    did not write it down (their defaults differed from today's)."""
    if not isinstance(stored, dict):
        raise KwsError(f"{what}: expected a mapping, got {type(stored).__name__}")
    earlier = {"objective": "clip", "warm_start": "none"}  # runs trained clips, from scratch
    stored = {**earlier, **stored}
    augment = stored.get("augment")
    if isinstance(augment, dict):  # ... and without VTLP
        stored["augment"] = {"vtlp": 0.0, **augment}
    return from_dict(TrainConfig, stored, what)
