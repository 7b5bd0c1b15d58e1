"""Scorers: a stream of feature frames in, per-frame posteriors out, through a runtime.

Every scorer has the same contract: ``push(frames [n, F]) -> posteriors [k, C]`` for the next k
frames it could score (k = n for all but ``segments``, which holds frames back until it has a
block) and ``flush() -> posteriors`` of the frames still held, at the end of a stream.

* ``stream`` (``FrameScorer``): the recurrent model stepped once per frame with its state
  carried; the model a device runs, and what live audio always gets;
* ``segments`` (``SegmentScorer``): the same posteriors for a file computed as a batch of
  segments, each after a warm-up that a trained state forgets its zero start in (many times
  faster; tested to give the events of ``stream``);
* ``window`` (``WindowScorer``): every ``hop`` the trailing 1 s window rescored from the zero
  state, for models trained on isolated clips, whose state is not meant to be carried.

``choose_scorer`` is the one place that decides which a stream gets.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

from kws_ghost.errors import KwsError
from kws_ghost.runtime import SILENCE, KeywordRuntime, softmax

SCORERS = ("auto", "stream", "segments", "window")
# The segment scorer: segments of 4 s, each after 2 s of warm-up that a trained state forgets its
# zero start in (the events equal strict streaming's: tested).
SEGMENT_SECONDS = 4.0
WARMUP_SECONDS = 2.0


class FrameScorer:
    """Exact streaming: frames in, posteriors out, the state carried from push to push.

    One step per frame, whatever the push holds: a multi-frame call would run the input
    projections as one matrix product, whose rounding depends on how many frames share it, and
    a stream must score the same however its audio was chunked."""

    def __init__(self, runtime: KeywordRuntime) -> None:
        self.runtime = runtime
        self.state = runtime.initial_state(1)

    def push(self, frames: np.ndarray) -> np.ndarray:
        """frames [n, F] -> posteriors [n, C]."""
        logits = np.empty((len(frames), len(self.runtime.labels)), np.float32)
        for t in range(len(frames)):
            step, self.state = self.runtime.run(frames[None, t : t + 1], self.state)
            logits[t] = step[0, 0]
        return softmax(logits)

    def flush(self) -> np.ndarray:
        return np.zeros((0, len(self.runtime.labels)), np.float32)


class SegmentScorer:
    """The stream's posteriors for a long recording, computed as a batch: frames are gathered
    until ``batch`` segments of ``segment`` frames are complete, and each segment runs from the
    zero state over the ``warmup`` frames before it, whose outputs are dropped. The first segment
    of the stream starts at frame 0 from the zero state, exactly as the stream does.

    A file goes through in ``batch``-wide steps (at batch 1 a frame is all overhead); memory is
    one block of ``batch * segment`` frames (about 4 minutes) whatever the length. ``push``
    returns the posteriors of the frames it could score (none, until a block is full); ``flush``
    those of the rest.
    """

    def __init__(
        self, runtime: KeywordRuntime, segment: int = 400, warmup: int = 200, batch: int = 64
    ) -> None:
        if segment < 1 or warmup < 0 or batch < 1:
            raise ValueError("segment and batch must be positive and warmup non-negative")
        self.runtime = runtime
        self.segment = segment
        self.warmup = warmup
        self.block = segment * batch
        self.context: Optional[np.ndarray] = None  # the `warmup` frames before `pending`
        self.pending: list[np.ndarray] = []
        self.pending_frames = 0

    def push(self, frames: np.ndarray) -> np.ndarray:
        """frames [n, F] -> posteriors [k, C] of the next k frames (0 <= k)."""
        if len(frames):
            self.pending.append(frames)
            self.pending_frames += len(frames)
        if self.pending_frames < self.block:
            return np.zeros((0, len(self.runtime.labels)), np.float32)
        joined = np.concatenate(self.pending)
        whole = len(joined) // self.block * self.block  # every full block (a long push has many)
        self.pending = [joined[whole:]]
        self.pending_frames = len(self.pending[0])
        return np.concatenate(
            [self._score(joined[i : i + self.block]) for i in range(0, whole, self.block)]
        )

    def flush(self) -> np.ndarray:
        """The posteriors of every frame still waiting."""
        rest = np.concatenate(self.pending) if self.pending else np.zeros((0, 0), np.float32)
        self.pending, self.pending_frames = [], 0
        if len(rest) == 0:
            return np.zeros((0, len(self.runtime.labels)), np.float32)
        return self._score(rest)

    def _score(self, frames: np.ndarray) -> np.ndarray:
        n = len(frames)
        context = self.context if self.context is not None else frames[:0]
        joined = np.concatenate([context, frames]) if len(context) else frames
        first = len(context)
        starts = range(first, first + n, self.segment)
        spans = [(max(0, s - self.warmup), s, min(s + self.segment, first + n)) for s in starts]
        width = max(stop - lo for lo, _, stop in spans)
        batch = np.empty((len(spans), width, joined.shape[1]), np.float32)
        for row, (lo, _, stop) in enumerate(spans):
            batch[row, : stop - lo] = joined[lo:stop]
            batch[row, stop - lo :] = joined[stop - 1]  # padding after the end: outputs unused
        logits, _ = self.runtime.run(batch, self.runtime.initial_state(len(spans)))
        self.context = joined[max(0, len(joined) - self.warmup) :].copy()
        return softmax(
            np.concatenate(
                [logits[row, s - lo : stop - lo] for row, (lo, s, stop) in enumerate(spans)]
            )
        )


class WindowScorer:
    """Frames in, posteriors out, by rescoring the trailing window (``clip_samples`` of audio)
    from the zero state every ``hop_ms``; each frame holds the posteriors of the last window
    scored. Memory is one window of frames.

    ``batch`` windows of one push are scored together: many times faster over a stored
    recording, but a batch's rounding depends on how the audio was chunked, so live audio keeps
    one window a call (the default)."""

    def __init__(self, runtime: KeywordRuntime, hop_ms: float = 100.0, batch: int = 1) -> None:
        fe = runtime.frontend_config
        self.runtime = runtime
        self.batch = max(1, batch)
        self.window = fe.num_frames(fe.clip_samples)
        self.hop = max(1, int(round(hop_ms / fe.hop_ms)))
        self.ring = np.zeros((self.window, fe.num_features), np.float32)
        self.frames_seen = 0
        self.current = np.zeros(len(runtime.labels), np.float32)  # nothing scored yet
        if SILENCE in runtime.labels:
            self.current[runtime.labels.index(SILENCE)] = 1.0

    def push(self, frames: np.ndarray) -> np.ndarray:
        n = self.window
        windows, rows = [], []
        for i, frame in enumerate(frames):
            self.ring[self.frames_seen % n] = frame
            self.frames_seen += 1
            first = self.frames_seen - n
            if first >= 0 and first % self.hop == 0:
                windows.append(self.ring[(np.arange(n) + self.frames_seen) % n])
                rows.append(i)
        out = np.empty((len(frames), len(self.runtime.labels)), np.float32)
        if windows:
            scores = [
                self.runtime.clip_logits(np.stack(windows[i : i + self.batch]))
                for i in range(0, len(windows), self.batch)
            ]
            probabilities = softmax(np.concatenate(scores))
        position = 0
        for k, row in enumerate(rows + [len(frames)]):
            out[position:row] = self.current
            if k < len(rows):
                self.current = probabilities[k]
            position = row
        return out

    def flush(self) -> np.ndarray:
        return np.zeros((0, len(self.runtime.labels)), np.float32)


def choose_scorer(runtime: KeywordRuntime, requested: str = "auto", live: bool = True) -> str:
    """The scorer a stream runs: ``requested`` unless ``auto``; ``auto`` is the strict
    ``stream`` for live audio, ``segments`` for a file (the same posteriors, batched), and
    ``window`` for a model trained on isolated clips. Live audio never takes ``segments``: it
    cannot wait for a block of them, so a request for it streams instead."""
    if requested == "auto":
        if not runtime.streaming:
            return "window"
        return "segments" if not live else "stream"
    return "stream" if live and requested == "segments" else requested


Scorer = Union["FrameScorer", "SegmentScorer", "WindowScorer"]


def make_scorer(
    runtime: KeywordRuntime, kind: str, hop_ms: float = 100.0, window_batch: int = 1
) -> Scorer:
    """A scorer for ``kind`` (see the module notes); ``auto``: ``choose_scorer`` of a live
    stream (``stream``, or ``window`` for clip-trained models). ``window_batch``: windows scored
    together (``WindowScorer``), for stored recordings."""
    kind = choose_scorer(runtime, kind, live=True) if kind == "auto" else kind
    if kind not in SCORERS:
        raise KwsError(f"unknown scorer {kind!r}: use {', '.join(SCORERS)}")
    if kind == "window":
        if runtime.streaming:
            raise KwsError(
                f"{runtime.path} is a streaming model: its clip scores are decisions, not "
                "posteriors to rescore windows with; use --scorer stream or segments"
            )
        return WindowScorer(runtime, hop_ms, window_batch)
    if not runtime.streaming:
        raise KwsError(
            f"{runtime.path} was trained on isolated clips ({runtime.model_config.pooling} "
            "pooling), so its state is not meant to be carried: use --scorer window"
        )
    if kind == "segments":
        fps = runtime.frontend_config.frames_per_second
        return SegmentScorer(
            runtime, int(round(SEGMENT_SECONDS * fps)), int(round(WARMUP_SECONDS * fps))
        )
    return FrameScorer(runtime)
