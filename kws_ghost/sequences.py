"""Long training sequences for the streaming objective, with per-frame targets.

A sequence of ``SequenceConfig.seconds`` holds ``words`` items of a split (keywords, other words,
silence), in an order drawn per (seed, epoch), and ``distractors`` other words drawn from all of
the split's non-keyword clips, at random gaps over a background-noise bed. Each
word is its whole 1 s clip or, with ``trim_prob``, only its speech, at a random level. Targets
are per feature frame, and a frame's time is its last sample (what a causal model has heard):

* a keyword's *region*, from the word's onset to ``keyword_tail_seconds`` after its end: the
  max-pooling loss asks the keyword's posterior to be high on at least one frame of it, so the
  model fires once it has heard enough of the word, and nowhere else is told to (with
  ``keyword_targets="tail"`` the frames from the word's end to the region's end are also frame
  targets of the keyword);
* frames from another word's onset to shortly after its end: ``_unknown_``;
* every other frame: ``_silence_`` (or ``_unknown_`` where a corpus has no silence class).

Everything random derives from (seed, epoch, sequence index), as for clips, so an epoch is the same
whatever the number of worker processes, and a resumed run replays exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import numpy as np

from kws_ghost.config import FrontendConfig, SequenceConfig
from kws_ghost.data import SILENCE, UNKNOWN, ClipDataset, Item, speech_span
from kws_ghost.errors import KwsError
from kws_ghost.recordings import looped

IGNORE = -100  # frame target that no loss term reads
UNKNOWN_TAIL_SECONDS = 0.1  # other words stay _unknown_ this long after they end
TRIM_MARGIN_SECONDS = 0.05  # speech kept around the span when a word is cut out of its clip
FADE_SECONDS = 0.01


def frames_ending_in(config: FrontendConfig, first: int, last: int, frames: int) -> range:
    """Frames (as ``Frontend`` numbers them) whose last sample lies in [first, last]."""
    start = max(0, math.ceil((first - config.n_fft + 1) / config.hop_length))
    stop = min(frames, (last - config.n_fft + 1) // config.hop_length + 1)
    return range(start, max(start, stop))


class SequenceDataset:
    """Training sequences made of a split's items: ``dataset[(epoch, i)]`` is
    ``(audio [samples] float32, frame targets [frames] int64, regions [words + distractors, 3]
    int64, failed [words] int64)``: each region a keyword's (first frame, last frame, label),
    rows of -1 where a piece is no keyword; ``failed`` the indices of items whose clip could not
    be read (laid as silence), else -1.
    """

    def __init__(
        self,
        clips: ClipDataset,
        labels: Sequence[str],
        config: SequenceConfig,
        frontend: FrontendConfig,
        seed: int = 0,
        others: Sequence[str] = (),
    ) -> None:
        self.clips = clips  # loads the items' audio and the background noise; not augmented
        self.others = list(others)  # the split's non-keyword clips, for distractors
        self.labels = list(labels)
        self.config = config
        self.frontend = frontend
        self.seed = seed
        index = {label: i for i, label in enumerate(self.labels)}
        self.unknown = index.get(UNKNOWN, index.get(SILENCE, IGNORE))
        self.background = index.get(SILENCE, self.unknown)
        self.keyword = {i for i, label in enumerate(self.labels) if label not in (SILENCE, UNKNOWN)}
        self.samples = int(round(config.seconds * frontend.sample_rate))
        self.frames = frontend.num_frames(self.samples)
        words = config.words + config.distractors
        if words * clips.clip_samples > self.samples:
            raise KwsError(
                f"{words} words of up to {frontend.clip_seconds:g} s do not fit in a "
                f"{config.seconds:g} s sequence (--sequence-seconds)"
            )
        self._order: Optional[tuple[int, np.ndarray]] = None

    def __len__(self) -> int:
        return math.ceil(len(self.clips) / self.config.words)

    def members(self, epoch: int, index: int) -> list[int]:
        """The item indices of sequence ``index`` in ``epoch`` (every item once per epoch; the
        last sequence is topped up from the start of the order)."""
        if self._order is None or self._order[0] != epoch:
            order = np.random.default_rng([self.seed, epoch, 0x5E0]).permutation(len(self.clips))
            self._order = (epoch, order)
        order = self._order[1]
        words = self.config.words
        return [int(order[(index * words + j) % len(order)]) for j in range(words)]

    def __getitem__(
        self, key: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        epoch, index = key
        rng = np.random.default_rng([self.seed, epoch, index, 0x5E1])
        members = self.members(epoch, index)
        cfg, rate = self.config, self.frontend.sample_rate
        failed = np.full(len(members), -1, dtype=np.int64)
        pieces = []
        for row, i in enumerate(members):
            try:
                pieces.append(self._piece(self.clips.items[i], rng))
            except KwsError:
                failed[row] = i
                pieces.append((np.zeros(0, np.float32), self.background, None))
        for _ in range(cfg.distractors if self.others else 0):
            other = Item(self.unknown, self.others[rng.integers(len(self.others))])
            try:
                pieces.append(self._piece(other, rng))
            except KwsError:
                pass  # an unreadable distractor is named when it is an item of its own
        pieces = [pieces[i] for i in rng.permutation(len(pieces))]
        bed = self._bed(rng)
        audio = np.zeros(self.samples, np.float32)
        targets = np.full(self.frames, self.background, dtype=np.int64)
        regions = np.full((cfg.words + cfg.distractors, 3), -1, dtype=np.int64)
        # Spread the free time over the gaps before, between and after the pieces.
        free = self.samples - sum(len(p[0]) for p in pieces)
        gaps = rng.dirichlet(np.ones(len(pieces) + 1)) * free
        position, words = 0.0, []
        for row, ((piece, label, span), gap) in enumerate(zip(pieces, gaps)):
            start = int(position + gap)
            audio[start : start + len(piece)] += piece
            position = start + len(piece)
            if span is not None:  # silence keeps the background target
                words.append((row, label, start + span[0], start + span[1]))
        if cfg.reverb_prob and rng.uniform() < cfg.reverb_prob:  # no draw when off
            audio = reverberate(audio, rng, rate)
        audio += bed
        # other words first: a keyword's region runs on past the word's end and wins where the
        # next word follows closely
        for row, label, onset, end in sorted(words, key=lambda word: word[1] in self.keyword):
            if label not in self.keyword:
                tail = int(UNKNOWN_TAIL_SECONDS * rate)
                frames = frames_ending_in(self.frontend, onset, end + tail, self.frames)
                targets[frames.start : frames.stop] = self.unknown
                continue
            tail = int(cfg.keyword_tail_seconds * rate)
            frames = frames_ending_in(self.frontend, onset, end + tail, self.frames)
            if len(frames):
                targets[frames.start : frames.stop] = IGNORE
                regions[row] = (frames.start, frames.stop - 1, label)
            if cfg.keyword_targets == "tail":
                heard = frames_ending_in(self.frontend, end, end + tail, self.frames)
                targets[heard.start : heard.stop] = label
        return np.clip(audio, -1.0, 1.0).astype(np.float32), targets, regions, failed

    def _piece(
        self, item: Item, rng: np.random.Generator
    ) -> tuple[np.ndarray, int, Optional[tuple[int, int]]]:
        """(audio, label, speech span within it, or None for silence) of one item."""
        clips, rate = self.clips, self.frontend.sample_rate
        if item.path is None:  # a generated silence item: a noise crop, as in clip training
            audio = clips.noise_crop(rng) * rng.uniform(0.0, 1.0) if clips.noise else None
            if audio is None:
                audio = np.zeros(clips.clip_samples, np.float32)
            length = int(rng.uniform(0.5, 1.0) * len(audio))
            return audio[:length].astype(np.float32), item.label, None
        audio = clips.load_clip(item.path)
        if item.label == self.background:  # a real silence clip
            return audio, item.label, None
        if self.config.speed_perturb:  # no draw when off: runs without it stay as they were
            audio = speed_changed(audio, rng.uniform(-1, 1) * self.config.speed_perturb + 1, rate)
        lo, hi = speech_span(audio, rate)
        if len(audio) > clips.clip_samples:  # slowed down: at most a clip, around the speech
            start = min(
                max(0, (lo + hi - clips.clip_samples) // 2), len(audio) - clips.clip_samples
            )
            audio = audio[start : start + clips.clip_samples]
            lo, hi = max(0, lo - start), min(clips.clip_samples, hi - start)
        if rng.uniform() < self.config.trim_prob:
            margin = int(TRIM_MARGIN_SECONDS * rate)
            cut_lo, cut_hi = max(0, lo - margin), min(len(audio), hi + margin)
            audio = faded(audio[cut_lo:cut_hi], int(FADE_SECONDS * rate))
            lo, hi = lo - cut_lo, hi - cut_lo
        gain = 10 ** (rng.uniform(-self.config.gain_db, self.config.gain_db) / 20)
        return (audio * gain).astype(np.float32), item.label, (lo, hi)

    def _bed(self, rng: np.random.Generator) -> np.ndarray:
        """Background noise under the whole sequence (zeros with probability 1 - noise_prob)."""
        noise = self.clips.noise
        bed = np.zeros(self.samples, np.float32)
        if not noise or rng.uniform() >= self.config.noise_prob:
            return bed
        source = noise[rng.integers(len(noise))]
        offset = int(rng.integers(len(source)))
        return bed + looped(source, self.samples, offset) * rng.uniform(
            0.0, self.config.noise_volume
        )


def reverberate(audio: np.ndarray, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """``audio`` in a simulated room: convolved with the direct path plus exponentially decaying
    noise (RT60 0.15-0.8 s, a direct-to-reverberant ratio of 0-10 dB), its level kept. The
    speech's span barely moves: the direct path is at delay 0."""
    rt60 = rng.uniform(0.15, 0.8)
    length = int(rt60 * sample_rate)
    t = np.arange(length) / sample_rate
    tail = rng.standard_normal(length) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    tail[0] = 0.0
    ratio = 10 ** (rng.uniform(0.0, 10.0) / 10)  # direct / reverberant energy
    tail *= np.sqrt(1.0 / (ratio * np.sum(tail**2)))
    response = np.concatenate([[1.0], tail[1:]])
    size = 1 << int(np.ceil(np.log2(len(audio) + length)))
    wet = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(response, size), size)[: len(audio)]
    peak_in, peak_out = np.abs(audio).max(), np.abs(wet).max()
    return (wet * (peak_in / peak_out if peak_out > 0 else 1.0)).astype(np.float32)


def speed_changed(audio: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """``audio`` played ``factor`` times as fast (tempo and pitch), by resampling it to
    ``sample_rate / factor`` and reading it at ``sample_rate``."""
    import soxr

    return soxr.resample(audio, sample_rate, sample_rate / factor).astype(np.float32)


def faded(audio: np.ndarray, samples: int) -> np.ndarray:
    """``audio`` with linear fades of ``samples`` at both ends (no click where it is cut)."""
    n = min(samples, len(audio) // 2)
    if n == 0:
        return audio
    out = audio.copy()
    ramp = np.linspace(0.0, 1.0, n, endpoint=False, dtype=np.float32)
    out[:n] *= ramp
    out[len(out) - n :] *= ramp[::-1]
    return out
