"""Streaming keyword detection: samples in, events out, in bounded memory.

Three stages, each usable alone:

* ``StreamingFrontend`` (``kws_ghost.frontend``) turns samples into feature frames, each once;
* a *scorer* (``kws_ghost.scorers``: ``stream``, ``segments`` or ``window``, chosen by
  ``choose_scorer``) turns frames into per-frame posteriors;
* ``EventDecoder`` smooths the posteriors (moving average over ``smoothing`` seconds), applies
  the threshold, ``patience`` (seconds above it before a run counts) and a ``refractory`` period
  after each event, and turns each run of high scores into one event. ``_silence_`` and
  ``_unknown_`` never fire.

A streaming model fires as it hears the end of the word, so an event is given out when its run
of high scores ends (typically 0.1-0.3 s after the word). Its span is the word's speech: the loud
stretch (mean log-mel level above the midpoint between the floor and the peak of the last
couple of seconds) that overlaps most the half second before the model fired.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from kws_ghost.config import DetectorConfig, FrontendConfig
from kws_ghost.errors import KwsError
from kws_ghost.frontend import StreamingFrontend, frame_levels
from kws_ghost.runtime import SILENCE, UNKNOWN, KeywordRuntime
from kws_ghost.scorers import make_scorer

LOOKBACK_SECONDS = 2.5  # levels kept to find a word's speech before the model fires
MAX_RUN_SECONDS = 1.0  # a run of high scores this long gives its event without waiting more
MIN_EVENT_SECONDS = 0.05


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


class EventDecoder:
    """Per-frame posteriors -> keyword events (smoothing, threshold, patience, refractory).

    ``push`` takes any number of frames at once and is vectorised over them, so replaying a
    whole recording's posteriors at many thresholds (a DET curve) is cheap.
    """

    def __init__(self, labels: list[str], config: DetectorConfig, frontend: FrontendConfig) -> None:
        config.validate()
        if config.threshold is None:
            raise KwsError("the decoder needs a threshold (see resolve_threshold)")
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
                i
                for i, label in enumerate(self.labels)
                if label not in (SILENCE, UNKNOWN) and (allowed is None or label in allowed)
            ]
        )
        if not len(self.active):
            raise KwsError("the model has no keyword classes to detect")
        self.frame_seconds = frontend.hop_length / frontend.sample_rate
        self.frame_end = frontend.n_fft / frontend.sample_rate  # frame i ends at i*hop + this
        self.width = max(1, int(round(config.smoothing / self.frame_seconds)))
        self.patience = max(1, int(round(config.patience / self.frame_seconds)))
        self.refractory = int(round(config.refractory / self.frame_seconds))
        self.lookback = int(round(LOOKBACK_SECONDS / self.frame_seconds))
        self.max_run = int(round(MAX_RUN_SECONDS / self.frame_seconds))
        self.tail = np.zeros((0, len(self.labels)), np.float32)
        self.levels = np.zeros(0, np.float32)  # levels of the last lookback + max_run frames
        self.levels_end = 0  # frame number after the last level held
        self.frames_seen = 0
        self.run: Optional[dict[str, Any]] = None  # the open run of high scores
        self.quiet_until = 0  # first frame where a run may start again
        self.top_score = 0.0  # highest smoothed keyword score so far

    def time_of(self, frame: int) -> float:
        """When frame ``frame`` is complete (its last sample), in seconds."""
        return frame * self.frame_seconds + self.frame_end

    def push(self, posteriors: np.ndarray, levels: Optional[np.ndarray] = None) -> list[Event]:
        """Posteriors [n, classes] of the next n frames (and their levels, dB) -> events."""
        if len(posteriors) == 0:
            return []
        return self.push_smoothed(self.smooth(posteriors), levels)

    def smooth(self, posteriors: np.ndarray) -> np.ndarray:
        """The active keywords' smoothed scores [n, keywords] of the next n frames: the moving
        average over the last ``smoothing`` seconds (fewer frames at the stream's start)."""
        joined = np.concatenate([self.tail, posteriors]) if len(self.tail) else posteriors
        sums = np.concatenate([np.zeros((1, joined.shape[1])), np.cumsum(joined, axis=0)])
        ends = np.arange(len(self.tail), len(joined)) + 1
        starts = np.maximum(0, ends - self.width)
        smoothed = (sums[ends] - sums[starts]) / (ends - starts)[:, None]
        if self.width > 1:  # the last width - 1 frames, however few this push brought
            self.tail = joined[max(0, len(joined) - (self.width - 1)) :]
        return smoothed[:, self.active]

    def push_smoothed(self, scores: np.ndarray, levels: Optional[np.ndarray] = None) -> list[Event]:
        """``push`` for scores ``smooth`` gave (a DET replays one smoothing at many thresholds)."""
        n = len(scores)
        if n == 0:
            return []
        best = scores.max(axis=1)
        self.top_score = max(self.top_score, float(best.max()))
        levels = np.full(n, np.nan, np.float32) if levels is None else levels
        keep = self.lookback + self.max_run  # the lookback of a run that started a while ago
        self.levels = np.concatenate([self.levels, levels])[-(keep + n) :]
        self.levels_end = self.frames_seen + n
        events = self._runs(best >= self.config.threshold, scores)
        self.frames_seen += n
        self.levels = self.levels[-keep:]
        return events

    def _runs(self, high: np.ndarray, scores: np.ndarray) -> list[Event]:
        """Open, extend and close runs over this push's frames (``high``: above threshold). A run
        longer than ``MAX_RUN_SECONDS`` is closed there, which bounds latency and memory."""
        events: list[Event] = []
        edges = np.flatnonzero(np.diff(np.concatenate([[0], high.astype(np.int8), [0]])))
        segments = list(zip(edges[::2], edges[1::2]))
        if self.run is not None and (not segments or segments[0][0] != 0):
            events += self._close()  # the open run ended with the previous push
        base = self.frames_seen
        for a, b in segments:
            pos = a
            if self.run is None or a != 0:
                pos = max(a, self.quiet_until - base)  # refractory after the last event
                if pos >= b:
                    continue
                self.run = self._open(base + pos, len(self.active))
            while pos < b:
                assert self.run is not None
                room = self.max_run - (self.run["last"] - self.run["first"] + 1)
                if room <= 0:
                    events += self._close()
                    pos = max(pos, self.quiet_until - base)
                    if pos >= b:
                        break
                    self.run = self._open(base + pos, len(self.active))
                    continue
                take = min(b, pos + room)
                self.run["last"] = base + take - 1
                self.run["peaks"] = np.maximum(self.run["peaks"], scores[pos:take].max(axis=0))
                pos = take
            if b < len(high) and self.run is not None:
                events += self._close()
        return events

    @staticmethod
    def _open(frame: int, keywords: int) -> dict[str, Any]:
        return {"first": frame, "last": frame - 1, "peaks": np.zeros(keywords)}

    def _close(self) -> list[Event]:
        run, self.run = self.run, None
        if run is None or run["last"] - run["first"] + 1 < self.patience:
            return []
        self.quiet_until = run["last"] + 1 + self.refractory
        keyword = int(np.argmax(run["peaks"]))
        start, end = self._speech(run["first"], run["last"])
        return [Event(self.labels[self.active[keyword]], start, end, float(run["peaks"][keyword]))]

    def _speech(self, first: int, last: int) -> tuple[float, float]:
        """The span of the word the model fired on at frame ``first``: the loud stretch of the
        recent frames that best overlaps the half second before it; else that half second."""
        fired = self.time_of(first)
        fallback = (max(0.0, fired - 0.5), fired)
        # the lookback before the run, up to its last frame (self.levels may hold a whole push)
        oldest = self.levels_end - len(self.levels)
        lo, hi = max(oldest, first - self.lookback), min(self.levels_end, last + 1)
        levels = self.levels[lo - oldest : hi - oldest]
        if len(levels) < 10 or levels[0] != levels[0]:  # too few frames, or no levels (NaN)
            return fallback
        floor = np.partition(levels, len(levels) // 10)[len(levels) // 10]  # 10th percentile
        peak = levels.max()
        if peak - floor < 6.0:  # no clear speech above the background
            return fallback
        loud = lo + np.flatnonzero(levels >= floor + 0.5 * (peak - floor))
        # stretches of loud frames, gaps up to 150 ms (a stop closure inside a word) bridged
        breaks = np.flatnonzero(np.diff(loud) > int(round(0.15 / self.frame_seconds)) + 1)
        starts = loud[np.concatenate([[0], breaks + 1])] * self.frame_seconds
        ends = (loud[np.concatenate([breaks, [-1]])] + 1) * self.frame_seconds
        centre = self.frame_end / 2 - self.frame_seconds / 2  # frame i's centre - half a hop
        starts, ends = starts + centre, ends + centre
        overlap = np.minimum(ends, fallback[1]) - np.maximum(starts, fallback[0])
        best = int(np.lexsort((-np.abs(ends - fired), overlap))[-1])  # most overlap, then nearest
        if overlap[best] <= 0:
            return fallback
        start = max(0.0, float(starts[best]))
        return start, max(float(ends[best]), start + MIN_EVENT_SECONDS)

    def flush(self) -> list[Event]:
        """End of stream: close a run still open."""
        return self._close()


def resolve_threshold(
    detection: Optional[dict[str, Any]], config: DetectorConfig
) -> tuple[float, Optional[dict[str, Any]]]:
    """(threshold, the validation DET point it corresponds to, or None).

    ``config.threshold`` wins; else ``config.false_alarms_per_hour`` picks the lowest threshold
    whose validation false-alarm rate is at most that; else the model's own operating point (its
    training target); else 0.5.
    """
    det = (detection or {}).get("det") or []
    if config.threshold is not None:
        return config.threshold, point_at(det, config.threshold)
    if config.false_alarms_per_hour is not None:
        if not det:
            raise KwsError(
                "this model carries no validation DET curve (it was trained on clips or by an "
                "older kws-ghost): give --threshold instead of --false-alarms-per-hour"
            )
        allowed = [p for p in det if p["false_alarms_per_hour"] <= config.false_alarms_per_hour]
        chosen = (
            min(allowed, key=lambda p: p["threshold"])
            if allowed
            else max(det, key=lambda p: p["threshold"])
        )
        return float(chosen["threshold"]), chosen
    if detection and detection.get("threshold") is not None:
        threshold = float(detection["threshold"])
        return threshold, point_at(det, threshold)
    return 0.5, None


def point_at(det: list[dict[str, Any]], threshold: float) -> Optional[dict[str, Any]]:
    """The DET point of the highest threshold not above ``threshold`` (None: no curve)."""
    below = [p for p in det if p["threshold"] <= threshold + 1e-9]
    return max(below, key=lambda p: p["threshold"]) if below else None


INT16_SCALE = 32768.0  # int16 samples in, as libsndfile reads PCM_16
FLOAT_LIMIT = 1.5  # float samples beyond this are on another scale (int16 values as floats)


def as_samples(samples: np.ndarray) -> np.ndarray:
    """Mono samples as float32 in [-1, 1]: float arrays as they are (clipped to full scale),
    int16 scaled by 1/32768; anything else, NaN or infinities refused in one line."""
    array = np.asarray(samples)
    if array.ndim != 1 and array.size != max(array.shape, default=0):
        raise KwsError(f"samples must be mono (1-D), not shape {array.shape}")
    array = array.reshape(-1)
    if array.dtype == np.int16:
        return array.astype(np.float32) / np.float32(INT16_SCALE)
    if array.dtype not in (np.float32, np.float64) and array.size:
        raise KwsError(
            f"samples must be float32 in [-1, 1] or int16, not {array.dtype} "
            "(convert first, e.g. int32 / 2**31)"
        )
    array = array.astype(np.float32, copy=False)
    if array.size and not np.isfinite(array).all():
        raise KwsError("samples hold NaN or infinite values")
    peak = float(np.abs(array).max()) if array.size else 0.0
    if peak > FLOAT_LIMIT:
        raise KwsError(
            f"float samples must lie in [-1, 1], these reach {peak:.4g}: int16 values as "
            "floats? pass them as int16, or divide by 32768"
        )
    return np.clip(array, -1.0, 1.0) if peak > 1.0 else array


class KeywordDetector:
    """Samples in, events out. ``push`` any number of samples; ``flush`` at the end.

    >>> detector = KeywordDetector(load_model("runs/latest/best.pt"))
    >>> for block in blocks: events = detector.push(block)
    """

    def __init__(
        self,
        runtime: KeywordRuntime,
        config: Optional[DetectorConfig] = None,
        scorer: str = "auto",
    ) -> None:
        config = config or DetectorConfig()
        threshold, self.operating_point = resolve_threshold(runtime.detection, config)
        self.config = config.at(threshold)
        self.runtime = runtime
        self.frontend = StreamingFrontend(runtime.frontend_config)
        self.scorer = make_scorer(runtime, scorer, config.hop_ms)
        self.decoder = EventDecoder(runtime.labels, self.config, runtime.frontend_config)
        self.levels = np.zeros(0, np.float32)  # levels of frames the scorer has not given out

    @property
    def frames_seen(self) -> int:
        return self.decoder.frames_seen

    def push_posteriors(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Samples -> (posteriors [n, classes], levels [n]) of the next n frames the scorer gives
        out (the segment scorer holds frames back until it has a block)."""
        frames = self.frontend.push(as_samples(samples))
        self.levels = np.concatenate([self.levels, frame_levels(frames, self.frontend.config)])
        return self._scored(self.scorer.push(frames))

    def flush_posteriors(self) -> tuple[np.ndarray, np.ndarray]:
        """End of stream: the posteriors and levels of the frames the scorer still held."""
        return self._scored(self.scorer.flush())

    def _scored(self, posteriors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        levels, self.levels = self.levels[: len(posteriors)], self.levels[len(posteriors) :]
        return posteriors, levels

    def push(self, samples: np.ndarray) -> list[Event]:
        return self.decoder.push(*self.push_posteriors(samples))

    def flush(self) -> list[Event]:
        return self.decoder.push(*self.flush_posteriors()) + self.decoder.flush()


def decode(
    posteriors: np.ndarray,
    levels: Optional[np.ndarray],
    labels: list[str],
    config: DetectorConfig,
    frontend: FrontendConfig,
    thresholds: Optional[list[float]] = None,
) -> Any:
    """Events of stored posteriors (cheap: no model). With ``thresholds``, one event list per
    threshold, from one smoothing (a DET curve)."""
    if thresholds is None:
        decoder = EventDecoder(labels, config, frontend)
        return decoder.push(posteriors, levels) + decoder.flush()
    scores = EventDecoder(labels, config.at(0.5), frontend).smooth(posteriors)
    lists = []
    for threshold in thresholds:
        decoder = EventDecoder(labels, config.at(threshold), frontend)
        lists.append(decoder.push_smoothed(scores, levels) + decoder.flush())
    return lists
