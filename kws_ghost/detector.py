"""The Python API: ``from kws_ghost import Detector``.

    detector = Detector("kws.onnx", false_alarms_per_hour=1.0)
    for chunk in microphone_chunks():          # any size; float32 in [-1, 1] or int16
        for event in detector.process(chunk):
            print(event.keyword, event.start, event.end, event.score)

One object holds one stream: the model's state, the front-end's leftover samples and the event
decoder, so chunks of any size give the events and posteriors of the whole audio at once, the
same as ``kws-ghost detect`` (posteriors to float rounding, about 1e-6: frames batched by another
chunking round differently). An ``.onnx`` model runs without torch.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

from kws_ghost.config import DetectorConfig
from kws_ghost.runtime import KeywordRuntime, load_model
from kws_ghost.scorers import choose_scorer
from kws_ghost.stream import Event, KeywordDetector

ModelLike = Union[str, "os.PathLike[str]", KeywordRuntime]


class Detector:
    """Keyword events from a live stream of 16 kHz mono samples.

    ``model``: a ``.onnx`` export (numpy and onnxruntime only) or a ``.pt`` checkpoint, or a
    runtime from ``load_model``. The threshold: ``threshold`` if given, else the one the model's
    validation DET gives at ``false_alarms_per_hour``, else the model's own operating point.
    ``keywords``: only these fire (default: all of the model's). ``smoothing``, ``patience`` and
    ``refractory`` (seconds) as ``kws-ghost detect``'s options.
    """

    def __init__(
        self,
        model: ModelLike,
        false_alarms_per_hour: Optional[float] = None,
        threshold: Optional[float] = None,
        keywords: Optional[list[str]] = None,
        smoothing: Optional[float] = None,
        patience: Optional[float] = None,
        refractory: Optional[float] = None,
        threads: int = 1,
    ) -> None:
        self.runtime = model if isinstance(model, KeywordRuntime) else load_model(model, threads)
        given = {"smoothing": smoothing, "patience": patience, "refractory": refractory}
        self._config = DetectorConfig(
            threshold=threshold,
            false_alarms_per_hour=false_alarms_per_hour,
            keywords=list(keywords) if keywords is not None else None,
            **{k: v for k, v in given.items() if v is not None},
        )
        self._config.validate()
        self.last_events: list[Event] = []
        self.last_scores: dict[str, np.ndarray] = {}
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next chunk starts a new one (state, samples, open events)."""
        self._stream = KeywordDetector(
            self.runtime, self._config, choose_scorer(self.runtime, "auto", live=True)
        )

    @property
    def sample_rate(self) -> int:
        return self.runtime.frontend_config.sample_rate

    @property
    def keywords(self) -> list[str]:
        """The keywords that can fire, in the order of ``scores``' keys."""
        decoder = self._stream.decoder
        return [decoder.labels[i] for i in decoder.active]

    @property
    def threshold(self) -> float:
        """The threshold in use (resolved from the false-alarm rate if one was given)."""
        threshold = self._stream.config.threshold
        assert threshold is not None
        return threshold

    @property
    def seconds(self) -> float:
        """Audio heard so far, in whole frames."""
        return self._stream.frames_seen * self.runtime.frontend_config.hop_ms / 1000

    def process(self, samples: np.ndarray) -> list[Event]:
        """Feed the next chunk; the events it completed (an event is decided when its keyword's
        score falls back, 0.1-0.3 s after the word, so it may come a chunk or two later)."""
        self._advance(samples)
        return self.last_events

    def scores(self, samples: np.ndarray) -> dict[str, np.ndarray]:
        """Feed the next chunk; each keyword's posterior for every 10 ms frame it completed
        (``{keyword: float32 array}``, arrays of the same length, possibly 0), as openWakeWord's
        ``predict`` gives. Events it completed are in ``last_events``."""
        self._advance(samples)
        return self.last_scores

    def flush(self) -> list[Event]:
        """End of the stream: an event still open; then the detector starts a new stream."""
        self.last_events = self._stream.flush()
        self.reset()
        return self.last_events

    def _advance(self, samples: np.ndarray) -> None:
        posteriors, levels = self._stream.push_posteriors(samples)
        self.last_events = self._stream.decoder.push(posteriors, levels)
        active = self._stream.decoder.active
        self.last_scores = {
            keyword: np.ascontiguousarray(posteriors[:, column])
            for keyword, column in zip(self.keywords, active)
        }
