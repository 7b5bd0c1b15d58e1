"""Streaming keyword detection: samples in, events out, in bounded memory.

Three explicit stages, each usable alone:

* ``StreamingFrontend`` (features.py) turns samples into frames, each computed once;
* ``WindowScorer`` keeps a ring buffer of the last window's frames (default 1 s) and, every hop,
  scores that window with the classifier: exactly the offline classifier's posteriors for the
  same audio window, because frames and model are the same;
* ``EventDecoder`` smooths the posteriors (moving average over the last ``smoothing`` hops),
  applies the threshold, a minimum number of consecutive hops above it (patience), and a
  refractory period, and turns runs of high scores into events, at most one per word.
  ``_silence_`` and ``_unknown_`` never fire.

A run of high scores ends when its keyword's score falls back below the threshold (or the run
reaches a window's length). Its event spans the speech around the run: the loud stretch of the
first and last windows' frames (mean log-mel level) that overlaps the intersection of those
windows. The intersection alone is often too coarse: a model may keep firing while the word leaves
the window. The event is given out once no later run can reach that speech (about 1.2 s after the
word with the defaults), so that a word's tail scored as another keyword cannot add a second one.

Windows are scored in batches (all the hops a pushed block completes) so a file runs fast; a live
stream that pushes 10-100 ms at a time gets its scores as soon as each hop completes.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Optional, Protocol

import numpy as np

from kws_ghost.config import DetectorConfig, FrontendConfig
from kws_ghost.data import SILENCE, UNKNOWN
from kws_ghost.errors import KwsError


@dataclasses.dataclass
class Event:
    keyword: str
    start: float
    end: float
    score: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "keyword": self.keyword,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "score": round(self.score, 4),
        }


@dataclasses.dataclass
class WindowScore:
    """Posteriors of the window [start, end) seconds, and its frames' levels (mean log-mel, dB)."""

    start: float
    end: float
    probabilities: np.ndarray
    levels: Optional[np.ndarray] = None
    frame_seconds: float = 0.01  # hop between the frames of ``levels``
    frame_offset: float = 0.016  # time of a frame's centre after its start


def frame_levels(frames: np.ndarray, config: FrontendConfig) -> np.ndarray:
    """Mean log-mel level (dB) of each frame ``[..., frames, features]``: MFCC c0 is that level
    times sqrt(n_mels) under the orthonormal DCT."""
    if config.kind == "mfcc":
        return frames[..., 0] / math.sqrt(config.n_mels)
    return frames.mean(axis=-1)


def speech_extent(
    first: WindowScore, last: WindowScore, around: tuple[float, float], max_gap: float = 0.15
) -> Optional[tuple[float, float]]:
    """The loud stretch of the frames of windows ``first`` to ``last`` that best overlaps
    ``around`` (or lies nearest to it); None without levels.

    Loud: above the midpoint between the 10th-percentile level (the floor) and the peak, with
    quieter gaps up to ``max_gap`` seconds (stop closures inside a word) bridged.
    """
    if first.levels is None or last.levels is None:
        return None
    step, offset = first.frame_seconds, first.frame_offset
    times = first.start + offset + step * np.arange(len(first.levels))
    later = last.start + offset + step * np.arange(len(last.levels))
    keep = later > times[-1] + step / 2
    times = np.concatenate([times, later[keep]])
    levels = np.concatenate([first.levels, last.levels[keep]])
    floor, peak = np.percentile(levels, 10), levels.max()
    loud = np.flatnonzero(levels >= floor + 0.5 * (peak - floor))
    if peak - floor < 6.0 or len(loud) == 0:  # no clear speech above the background
        return None
    breaks = np.flatnonzero(np.diff(times[loud]) > max_gap + step / 2)
    starts = np.concatenate([[0], breaks + 1])
    ends = np.concatenate([breaks, [len(loud) - 1]])
    spans = [(times[loud[a]] - step / 2, times[loud[b]] + step / 2) for a, b in zip(starts, ends)]

    def fit(span: tuple[float, float]) -> tuple[float, float]:
        overlap = min(span[1], around[1]) - max(span[0], around[0])
        return (overlap, -abs((span[0] + span[1]) / 2 - (around[0] + around[1]) / 2))

    return max(spans, key=fit)


class Scorer(Protocol):
    """What the detector needs of a model: labels, front-end, and batched window posteriors."""

    labels: list[str]
    frontend_config: FrontendConfig

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        """[N, frames, features] raw features -> [N, classes] posteriors."""
        ...


class TorchScorer:
    """A kws-ghost checkpoint as a scorer (CPU by default)."""

    def __init__(self, checkpoint_path: str | os.PathLike[str], device: str = "cpu") -> None:
        from kws_ghost.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(checkpoint_path)
        self.path = checkpoint.path
        self.model = checkpoint.build_model(device)
        self.device = device
        self.labels = checkpoint.labels
        self.frontend_config = checkpoint.frontend_config

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits, _ = self.model(torch.as_tensor(windows, device=self.device))
            return torch.softmax(logits.float(), dim=-1).cpu().numpy()


class OnnxScorer:
    """An exported ONNX model (``kws-ghost export``) as a scorer, through onnxruntime."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from kws_ghost.export import OnnxKeywordModel

        self.model = OnnxKeywordModel(path)
        self.path = path
        self.labels = list(self.model.labels)
        self.frontend_config = self.model.frontend_config

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        return softmax(self.model.clip_logits(np.ascontiguousarray(windows, dtype=np.float32)))


def load_scorer(path: str | os.PathLike[str], device: str = "cpu") -> Scorer:
    """A ``.onnx`` file runs through onnxruntime, anything else as a PyTorch checkpoint."""
    if not os.path.exists(path):
        raise KwsError(f"{path}: no such model")
    if str(path).endswith(".onnx"):
        return OnnxScorer(path)
    return TorchScorer(path, device)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class WindowScorer:
    """Frames in, window posteriors out: a ring buffer of the last ``window_frames`` frames, scored
    every ``hop_frames`` frames. Memory is one window of frames whatever the stream's length."""

    def __init__(self, scorer: Scorer, hop_ms: float = 50.0) -> None:
        fe = scorer.frontend_config
        self.scorer = scorer
        self.config = fe
        self.window_frames = fe.num_frames(fe.clip_samples)
        self.hop_frames = max(1, int(round(hop_ms / fe.hop_ms)))
        self.ring = np.zeros((self.window_frames, fe.num_features), dtype=np.float32)
        self.frames_seen = 0  # frames pushed so far; frame f lives at ring[f % window_frames]

    @property
    def hop_seconds(self) -> float:
        return self.hop_frames * self.config.hop_length / self.config.sample_rate

    def window_bounds(self, first_frame: int) -> tuple[float, float]:
        """The audio span, in seconds, of the window whose first frame is ``first_frame``."""
        start = first_frame * self.config.hop_length / self.config.sample_rate
        return start, start + self.config.clip_samples / self.config.sample_rate

    def push(self, frames: np.ndarray) -> list[WindowScore]:
        """Add frames [n, features]; score every window they complete, in one batch."""
        windows, firsts = [], []
        n = self.window_frames
        for frame in frames:
            self.ring[self.frames_seen % n] = frame
            self.frames_seen += 1
            first = self.frames_seen - n  # first frame of the window ending here
            if first >= 0 and first % self.hop_frames == 0:
                order = (np.arange(n) + self.frames_seen) % n  # oldest frame first
                windows.append(self.ring[order])
                firsts.append(first)
        if not windows:
            return []
        batch = np.stack(windows)
        probabilities = self.scorer.probabilities(batch)
        levels = frame_levels(batch, self.config)
        frame_seconds = self.config.hop_length / self.config.sample_rate
        offset = self.config.n_fft / 2 / self.config.sample_rate
        return [
            WindowScore(*self.window_bounds(first), p, level, frame_seconds, offset)
            for first, p, level in zip(firsts, probabilities, levels)
        ]


class EventDecoder:
    """Posteriors per hop -> keyword events (smoothing, threshold, patience, refractory)."""

    def __init__(
        self,
        labels: Sequence[str],
        config: DetectorConfig,
        window_seconds: float,
        hop_seconds: float = 0.0,
    ) -> None:
        config.validate()
        self.config = config
        self.labels = list(labels)
        allowed = config.keywords
        unknown = [k for k in (allowed or []) if k not in self.labels]
        if unknown:
            raise KwsError(
                f"keyword(s) {', '.join(unknown)} not in the model's labels "
                f"({', '.join(k for k in self.labels if k not in (SILENCE, UNKNOWN))})"
            )
        self.active = np.array(
            [
                label not in (SILENCE, UNKNOWN) and (allowed is None or label in allowed)
                for label in self.labels
            ]
        )
        if not self.active.any():
            raise KwsError("the model has no keyword classes to detect")
        self.window_seconds = window_seconds
        # A moving average over k hops lags the windows it averages by (k - 1) / 2 hops.
        self.lag = (config.smoothing - 1) / 2 * hop_seconds
        self.reach = (config.smoothing - 1) * hop_seconds  # the oldest window in the average
        self.recent: deque[np.ndarray] = deque(maxlen=config.smoothing)
        self.run: Optional[dict[str, Any]] = None  # the current run of high scores
        self.quiet_until = -math.inf
        self.pending: Optional[Event] = None  # an event that a later run may still replace

    def smoothed(self, probabilities: np.ndarray) -> np.ndarray:
        self.recent.append(probabilities)
        return np.mean(self.recent, axis=0)

    def push(self, score: WindowScore) -> list[Event]:
        events: list[Event] = []
        if (
            self.pending is not None
            and self.run is None
            and score.start - self.reach >= self.pending.end
        ):
            events.append(self.pending)  # no later run can hold its speech: it is final
            self.pending = None
        smoothed = self.smoothed(score.probabilities)
        masked = np.where(self.active, smoothed, -1.0)
        best = int(np.argmax(masked))
        high = masked[best] >= self.config.threshold and score.end >= self.quiet_until
        run = self.run
        if run is not None and (not high or best != run["label"]):
            events += self._close()
            run = None
        if high:
            if run is None:
                self.run = run = {"label": best, "first": score, "count": 0, "peak": 0.0}
            run["last"] = score
            run["count"] += 1
            run["peak"] = max(run["peak"], float(masked[best]))
            if score.end - run["first"].end >= self.window_seconds:
                events += self._close()  # a run as long as a window: report it now
        return events

    def _close(self) -> list[Event]:
        run, self.run = self.run, None
        if run is None or run["count"] < self.config.patience:
            return []
        first, last = run["first"], run["last"]
        # The windows of the run (shifted back by the smoothing lag) hold the word, so it lies
        # near [last.start, first.end]; the loud frames around that say where exactly.
        start, end = sorted((last.start - self.lag, first.end - self.lag))
        self.quiet_until = end + self.lag + self.config.refractory
        speech = speech_extent(first, last, (start, end))
        if speech is None:  # no speech span to compare with later runs: final now
            event = Event(self.labels[run["label"]], max(0.0, start), end, run["peak"])
            pending, self.pending = self.pending, None
            return [pending, event] if pending is not None else [event]
        event = Event(self.labels[run["label"]], max(0.0, speech[0]), speech[1], run["peak"])
        # One word, one event: a later run on the same speech (a word's tail scored as another
        # keyword) competes with it, and the one that covers more of the speech wins (then the
        # higher peak). So an event with a speech span waits until no later run can hold that
        # speech.
        pending, self.pending = self.pending, event
        if pending is None:
            return []
        overlap = min(event.end, pending.end) - max(event.start, pending.start)
        if overlap > 0.5 * min(event.end - event.start, pending.end - pending.start):
            self.pending = max(pending, event, key=lambda e: (round(e.end - e.start, 3), e.score))
            return []
        return [pending]

    def flush(self) -> list[Event]:
        """End of stream: report a run still open, and any event still waiting."""
        events = self._close()
        if self.pending is not None:
            events.append(self.pending)
            self.pending = None
        return events


class KeywordDetector:
    """Samples in, events out. ``push`` any number of samples; ``flush`` at the end.

    >>> detector = KeywordDetector(load_scorer("runs/latest/best.pt"))
    >>> for block in blocks: events = detector.push(block)
    """

    def __init__(self, scorer: Scorer, config: Optional[DetectorConfig] = None) -> None:
        from kws_ghost.features import StreamingFrontend

        self.config = config or DetectorConfig()
        self.scorer = scorer
        self.frontend = StreamingFrontend(scorer.frontend_config)
        self.windows = WindowScorer(scorer, self.config.hop_ms)
        window_seconds = scorer.frontend_config.clip_seconds
        self.decoder = EventDecoder(
            scorer.labels, self.config, window_seconds, self.windows.hop_seconds
        )
        self.scores_seen = 0

    def push_scores(self, samples: np.ndarray) -> list[WindowScore]:
        """Samples -> the window scores they complete (no event decisions)."""
        frames = self.frontend.push(samples)
        scores = self.windows.push(frames.numpy())
        self.scores_seen += len(scores)
        return scores

    def push(self, samples: np.ndarray) -> list[Event]:
        events: list[Event] = []
        for score in self.push_scores(samples):
            events += self.decoder.push(score)
        return events

    def flush(self) -> list[Event]:
        return self.decoder.flush()


def detect_blocks(
    blocks: Iterable[np.ndarray], scorer: Scorer, config: Optional[DetectorConfig] = None
) -> Iterator[Event]:
    """Events of a stream given as sample blocks, yielded as soon as they are decided."""
    detector = KeywordDetector(scorer, config)
    for block in blocks:
        yield from detector.push(block)
    yield from detector.flush()


def score_blocks(blocks: Iterable[np.ndarray], scorer: Scorer, hop_ms: float) -> list[WindowScore]:
    """Every window score of a stream (for evaluation over many thresholds)."""
    detector = KeywordDetector(scorer, DetectorConfig(hop_ms=hop_ms))
    scores: list[WindowScore] = []
    for block in blocks:
        scores += detector.push_scores(block)
    return scores


def decode_scores(
    scores: Sequence[WindowScore], labels: Sequence[str], config: DetectorConfig, window: float
) -> list[Event]:
    """Replay stored window scores through an ``EventDecoder`` (cheap: no model)."""
    hop = scores[1].start - scores[0].start if len(scores) > 1 else 0.0
    decoder = EventDecoder(labels, config, window, hop)
    events: list[Event] = []
    for score in scores:
        events += decoder.push(score)
    return events + decoder.flush()
