"""Speech Commands-layout corpora: tasks, splits, and seeded waveform augmentation.

A corpus folder holds ``WORD/SPEAKER_nohash_N.wav``, ``validation_list.txt`` and
``testing_list.txt`` (training is the rest) and ``_background_noise_/*.wav``; an optional
``_silence_/`` folder holds real silence clips (as in the real-speech development subset).
Without the two lists, clips are split by a hash of the speaker, as TF's speech_commands does.

Tasks pick the label list: ``gsc12`` (10 keywords + ``_silence_`` + ``_unknown_``), ``gsc35`` (every
word) or custom keywords. ``_silence_`` items are 1 s crops of background noise (plus any real
silence clips), ``_unknown_`` items are other words; each is about ``fraction`` of the split.

Everything random derives from (seed, epoch, item index), so an epoch is the same whatever the
number of worker processes or machines, and a resumed run replays exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from kws_ghost.config import TASKS, AugmentConfig
from kws_ghost.errors import KwsError, print_stderr

SILENCE = "_silence_"
UNKNOWN = "_unknown_"
NOISE_DIR = "_background_noise_"
GSC12_KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SPLITS = ("training", "validation", "testing")
SPLIT_ALIASES = {"train": "training", "val": "validation", "valid": "validation", "test": "testing"}


def canonical_split(name: str) -> str:
    split = SPLIT_ALIASES.get(name, name)
    if split not in SPLITS:
        raise KwsError(f"unknown split {name!r}: use training, validation or testing")
    return split


@dataclasses.dataclass
class Item:
    """One example: a clip (``path`` relative to the corpus) or a generated silence crop."""

    label: int
    path: Optional[str] = None


@dataclasses.dataclass
class Corpus:
    """What a Speech Commands-layout folder holds, indexed once."""

    root: Path
    words: dict[str, list[str]]
    split_of: dict[str, str]
    noise_files: list[Path]
    silence_clips: list[str]

    def clips(self, word: str, split: str) -> list[str]:
        return [p for p in self.words.get(word, []) if self.split_of[p] == split]


def speaker_of(relpath: str) -> str:
    """``yes/0a7c2a8d_nohash_0.wav`` -> ``0a7c2a8d``."""
    name = os.path.basename(relpath)
    return re.sub(r"_nohash_.*$", "", os.path.splitext(name)[0])


def hash_split(
    relpath: str, validation_percent: float = 10.0, testing_percent: float = 10.0
) -> str:
    """TF speech_commands' ``which_set``: a stable split from a hash of the speaker id."""
    digest = hashlib.sha1(speaker_of(relpath).encode()).hexdigest()
    percent = (int(digest, 16) % (2**27)) * (100.0 / (2**27 - 1))
    if percent < validation_percent:
        return "validation"
    if percent < validation_percent + testing_percent:
        return "testing"
    return "training"


def _read_list(path: Path) -> set[str]:
    try:
        return {line.strip() for line in path.read_text().splitlines() if line.strip()}
    except (OSError, UnicodeDecodeError) as exc:
        raise KwsError(f"{path}: cannot read the split list ({exc})") from exc


def scan_corpus(root: str | os.PathLike[str], warn: Callable[[str], None] | None = None) -> Corpus:
    """Index a corpus folder; a clear error when it is not one."""
    warn = warn or print_stderr
    root = Path(root)
    if not root.exists():
        raise KwsError(f"{root}: no such data folder (get one with `kws-ghost download` or synth)")
    if not root.is_dir():
        raise KwsError(f"{root}: not a folder; --data takes a Speech Commands-layout folder")
    words: dict[str, list[str]] = {}
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name.startswith(".") or entry.name.startswith("_"):
            continue
        clips = sorted(f"{entry.name}/{f.name}" for f in entry.iterdir() if f.suffix == ".wav")
        if clips:
            words[entry.name] = clips
    if not words:
        raise KwsError(f"{root}: no WORD/*.wav clips: not a Speech Commands-layout folder")
    silence_dir = root / SILENCE
    silence = sorted(f"{SILENCE}/{f.name}" for f in silence_dir.glob("*.wav"))
    validation_list, testing_list = root / "validation_list.txt", root / "testing_list.txt"
    all_clips = [p for clips in words.values() for p in clips] + silence
    if validation_list.exists() or testing_list.exists():
        validation = _read_list(validation_list) if validation_list.exists() else set()
        testing = _read_list(testing_list) if testing_list.exists() else set()
        split_of = {
            p: "validation" if p in validation else "testing" if p in testing else "training"
            for p in all_clips
        }
    else:
        warn(f"note: {root} has no validation_list.txt/testing_list.txt; splitting by speaker hash")
        split_of = {p: hash_split(p) for p in all_clips}
    noise = sorted((root / NOISE_DIR).glob("*.wav"))
    return Corpus(root, words, split_of, noise, silence)


def resolve_labels(
    corpus: Corpus,
    task: str = "gsc12",
    keywords: Sequence[str] = (),
    warn: Callable[[str], None] | None = None,
) -> list[str]:
    """The label list for a task, dropping classes the corpus has no data for (with a note)."""
    warn = warn or print_stderr
    if task not in TASKS:
        raise KwsError(f"unknown task {task!r}: use {', '.join(TASKS)}")
    if task == "gsc35":
        if keywords:
            raise KwsError("--keywords goes with the custom task (or gsc12's default list)")
        return sorted(corpus.words)
    if task == "gsc12" and not keywords:
        keywords = GSC12_KEYWORDS
    elif not keywords:
        raise KwsError("the custom task needs --keywords a,b,c")
    keywords = list(dict.fromkeys(k.strip() for k in keywords if k.strip()))
    missing = [k for k in keywords if k not in corpus.words]
    if missing and len(missing) == len(keywords):
        raise KwsError(f"{corpus.root}: none of the keywords has clips ({', '.join(missing)})")
    if missing:
        warn(f"note: no clips for {', '.join(missing)} in {corpus.root}; training without them")
    keywords = [k for k in keywords if k in corpus.words]
    labels = []
    if corpus.noise_files or corpus.silence_clips:
        labels.append(SILENCE)
    else:
        warn(f"note: {corpus.root} has no background noise or _silence_ clips: no _silence_ class")
    if set(corpus.words) - set(keywords):
        labels.append(UNKNOWN)
    else:
        warn(f"note: {corpus.root} has no words besides the keywords: no _unknown_ class")
    return labels + keywords


def build_items(
    corpus: Corpus, labels: Sequence[str], split: str, seed: int = 0, fraction: float = 0.1
) -> list[Item]:
    """The examples of one split for a label list: every keyword clip, plus ``_unknown_`` (other
    words, sampled) and ``_silence_`` items, each about ``fraction`` of the split."""
    split = canonical_split(split)
    index = {label: i for i, label in enumerate(labels)}
    keywords = [label for label in labels if label not in (SILENCE, UNKNOWN)]
    items = [Item(index[w], p) for w in keywords for p in corpus.clips(w, split)]
    extras = [label for label in (SILENCE, UNKNOWN) if label in index]
    if not extras or not items:
        return items
    # each extra class is `fraction` of the whole split: n = K * f / (1 - f * extras)
    target = int(math.ceil(len(items) * fraction / (1 - fraction * len(extras))))
    rng = np.random.default_rng([seed, SPLITS.index(split), 12])
    if UNKNOWN in index:
        others = [
            p for w in sorted(corpus.words) if w not in keywords for p in corpus.clips(w, split)
        ]
        chosen = rng.choice(len(others), size=min(target, len(others)), replace=False)
        items += [Item(index[UNKNOWN], others[i]) for i in sorted(chosen)]
    if SILENCE in index:
        real = [p for p in corpus.silence_clips if corpus.split_of[p] == split]
        items += [Item(index[SILENCE], p) for p in real[:target]]
        if corpus.noise_files:
            items += [Item(index[SILENCE]) for _ in range(target - min(target, len(real)))]
    return items


def count_labels(items: Sequence[Item], labels: Sequence[str]) -> dict[str, int]:
    counts = Counter(item.label for item in items)
    return {label: counts.get(i, 0) for i, label in enumerate(labels)}


class ClipDataset:
    """Waveforms of a split as float32 [clip_samples], optionally augmented.

    Indexed by ``(epoch, i)`` so augmentation is a pure function of (seed, epoch, i); plain ``i``
    means epoch 0. Generated silence crops are fixed per item (same every epoch) unless augmented.
    """

    def __init__(
        self,
        corpus: Corpus,
        items: Sequence[Item],
        clip_samples: int = 16000,
        sample_rate: int = 16000,
        augment: Optional[AugmentConfig] = None,
        seed: int = 0,
        fragment_label: Optional[int] = None,
    ) -> None:
        self.corpus = corpus
        # Label of word fragments (the _unknown_ class) when augmentation makes them.
        self.fragment_label = fragment_label
        self.items = list(items)
        self.clip_samples = clip_samples
        self.sample_rate = sample_rate
        self.augment = augment
        self.seed = seed
        self._noise: Optional[list[np.ndarray]] = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def noise(self) -> list[np.ndarray]:
        """Background recordings, loaded on first use (in each worker process)."""
        if self._noise is None:
            from kws_ghost.audio import load_audio

            self._noise = [load_audio(p, self.sample_rate) for p in self.corpus.noise_files]
            self._noise = [n for n in self._noise if len(n) >= self.clip_samples]
        return self._noise

    def load_clip(self, relpath: str) -> np.ndarray:
        """A corpus clip, zero-padded (or cut) to exactly ``clip_samples``."""
        from kws_ghost.audio import load_audio

        audio = load_audio(self.corpus.root / relpath, self.sample_rate)
        return fit_length(audio, self.clip_samples)

    def noise_crop(self, rng: np.random.Generator) -> np.ndarray:
        noise = self.noise[rng.integers(len(self.noise))]
        start = rng.integers(0, len(noise) - self.clip_samples + 1)
        return noise[start : start + self.clip_samples]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[np.ndarray, int, int]:
        """(audio, label, failed): ``failed`` is -1, or the item's index when its clip could not
        be read (the audio is then silence). Workers cannot report a bad file themselves, so the
        caller names it and decides (``skip_unreadable``)."""
        epoch, i = key if isinstance(key, tuple) else (0, key)
        item = self.items[i]
        augmenting = self.augment is not None
        # Silence crops of evaluation splits are fixed per item; training ones vary per epoch.
        rng = np.random.default_rng([self.seed, epoch if augmenting else 0, i])
        failed = -1
        if item.path is None:
            audio = self.noise_crop(rng) * rng.uniform(0.0, 1.0)
        else:
            try:
                audio = self.load_clip(item.path)
            except KwsError:
                audio, failed = np.zeros(self.clip_samples, np.float32), i
        label = item.label
        if augmenting:
            cfg = self.augment
            assert cfg is not None
            if (
                self.fragment_label is not None
                and item.path is not None
                and label != self.fragment_label
                and rng.uniform() < cfg.fragment_prob
            ):
                audio, label = word_fragment(audio, rng, self.sample_rate), self.fragment_label
            audio = self._augment(audio, rng)
        return audio.astype(np.float32, copy=False), label, failed

    def _augment(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.augment
        assert cfg is not None
        limit = int(self.sample_rate * cfg.time_shift_ms / 1000)
        if limit:
            audio = time_shift(audio, int(rng.integers(-limit, limit + 1)))
        if self.noise and rng.uniform() < cfg.noise_prob:
            audio = audio + self.noise_crop(rng) * rng.uniform(0.0, cfg.noise_volume)
        return np.clip(audio, -1.0, 1.0)


class UnreadableClips:
    """Counts the clips a run could not read: each is named once in a warning; past
    ``max_fraction`` of the items (or when every item fails) it becomes an error."""

    def __init__(
        self, dataset: Any, warn: Callable[[str], None], max_fraction: float = 0.01
    ) -> None:
        self.dataset = dataset
        self.warn = warn
        self.limit = max(1, int(max_fraction * len(dataset.items)))
        self.failed: set[int] = set()

    def add(self, indices: Any) -> None:
        for index in sorted({int(i) for i in indices if int(i) >= 0} - self.failed):
            self.failed.add(index)
            relpath = self.dataset.items[index].path
            reason = self.reason(relpath)
            if len(self.failed) > self.limit:
                raise KwsError(
                    f"{len(self.failed)} of {len(self.dataset.items)} clips of "
                    f"{self.dataset.corpus.root} are unreadable, more than "
                    f"{self.limit}; the latest: {reason}"
                )
            self.warn(f"warning: skipping an unreadable clip ({len(self.failed)} so far): {reason}")

    def reason(self, relpath: str) -> str:
        try:
            self.dataset.load_clip(relpath)
        except KwsError as exc:
            return str(exc)
        return f"{relpath}: could not be read"


def fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Zero-pad at the end (as the corpus pads short clips) or cut to ``length``."""
    if len(audio) >= length:
        return audio[:length]
    return np.pad(audio, (0, length - len(audio)))


def speech_span(
    audio: np.ndarray, sample_rate: int, top_db: float = 30.0, above_floor_db: float = 6.0
) -> tuple[int, int]:
    """First and last sample of the part of a clip within ``top_db`` of its loudest 10 ms and,
    where the clip has a floor (its 10th-percentile 10 ms lies over twice ``above_floor_db``
    under the peak), ``above_floor_db`` above that floor: so a quiet voice over a noise floor
    less than ``top_db`` down does not count the whole clip as speech."""
    hop = sample_rate // 100
    frames = len(audio) // hop
    if frames == 0:
        return 0, len(audio)
    energy = np.square(audio[: frames * hop].reshape(frames, hop)).mean(1)
    threshold = energy.max() * 10 ** (-top_db / 10)
    floor = np.percentile(energy, 10)
    if energy.max() > floor * 10 ** (2 * above_floor_db / 10):
        threshold = max(threshold, floor * 10 ** (above_floor_db / 10))
    loud = np.nonzero(energy >= threshold)[0]
    return int(loud[0] * hop), int(min(len(audio), (loud[-1] + 1) * hop))


def word_fragment(audio: np.ndarray, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """The clip shifted so that only 15-50% of its word remains, at the start or the end of the
    window: what a sliding window sees just before and after a keyword."""
    lo, hi = speech_span(audio, sample_rate)
    keep = int((hi - lo) * rng.uniform(0.15, 0.5))
    if rng.uniform() < 0.5:
        return time_shift(audio, len(audio) - keep - lo)  # the word's start, at the end
    return time_shift(audio, keep - hi)  # the word's end, at the start


def time_shift(audio: np.ndarray, shift: int) -> np.ndarray:
    """Shift right (positive) or left, filling with zeros; length unchanged."""
    if shift == 0:
        return audio
    out = np.zeros_like(audio)
    if shift > 0:
        out[shift:] = audio[:-shift]
    else:
        out[:shift] = audio[-shift:]
    return out


def spec_augment(features: Any, cfg: AugmentConfig, fill: Any, generator: Any) -> Any:
    """SpecAugment-style masks on a batch [B, T, F] (torch), masked values set to ``fill`` [F]
    (the feature mean, i.e. zero after normalisation). Returns a new tensor."""
    import torch

    batch, frames, bins = features.shape
    device = features.device
    keep = torch.ones(batch, frames, bins, dtype=torch.bool, device=device)
    for count, width, axis, size in (
        (cfg.time_masks, cfg.time_mask_frames, 1, frames),
        (cfg.freq_masks, cfg.freq_mask_bins, 2, bins),
    ):
        if not count or not width:
            continue
        widths = torch.randint(0, width + 1, (batch, count), generator=generator)
        starts = (torch.rand(batch, count, generator=generator) * (size - widths + 1)).long()
        positions = torch.arange(size)
        for k in range(count):
            lo, hi = starts[:, k, None], (starts[:, k] + widths[:, k])[:, None]
            masked = ((positions >= lo) & (positions < hi)).to(device)  # [B, size]
            keep &= ~(masked[:, :, None] if axis == 1 else masked[:, None, :])
    return torch.where(keep, features, fill.to(features.dtype))


class EpochSampler:
    """Yields ``(epoch, index)`` keys: a permutation seeded by (seed, epoch), sharded by rank.

    ``even=True`` (training) repeats a few items so every rank gets the same number of batches, as
    DDP needs; ``even=False`` (evaluation) gives each item to exactly one rank.
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        even: bool = True,
    ) -> None:
        self.size, self.seed, self.shuffle, self.even = size, seed, shuffle, even
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        order = np.arange(self.size)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        if self.even:
            order = np.resize(order, math.ceil(self.size / self.world_size) * self.world_size)
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        return len(self._order())

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self._order():
            yield (self.epoch, int(i))
