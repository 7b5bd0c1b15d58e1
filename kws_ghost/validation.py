"""Validation recordings for training: ``best.pt`` is the epoch with the best hit rate at a
target false-alarm rate on recordings of validation speakers, built once per run."""

from __future__ import annotations

from typing import Any, Optional

from kws_ghost.config import FrontendConfig
from kws_ghost.data import SILENCE, UNKNOWN, Corpus
from kws_ghost.det import Scored, det_curve, score_features, summarize
from kws_ghost.recordings import compose_recording


class ValidationRecordings:
    """Recordings of validation speakers (or of ``split``'s: the study scores test speakers
    alike), built once per run, scored after every epoch: every
    validation keyword clip once among other words (the hit rate) and ``minutes`` of other words
    and noise only (the false-alarm rate; without other words in the split, the keyword
    recording's own false alarms count). Their features are computed once and kept.
    ``possible`` says whether a corpus's validation split can make them."""

    @staticmethod
    def possible(corpus: Corpus, labels: list[str]) -> bool:
        return any(
            corpus.clips(label, "validation") for label in labels if label not in (SILENCE, UNKNOWN)
        )

    def __init__(
        self,
        corpus: Corpus,
        labels: list[str],
        frontend: FrontendConfig,
        minutes: float = 30.0,
        seed: int = 0,
        warn: Optional[Any] = None,
        split: str = "validation",
    ) -> None:
        from kws_ghost.frontend import compute_features

        keywords = [label for label in labels if label not in (SILENCE, UNKNOWN)]
        rate = frontend.sample_rate
        audio, truth = compose_recording(
            corpus,
            keywords,
            split=split,
            seed=seed,
            sample_rate=rate,
            every_keyword=True,
            warn=warn,
        )
        self.keywords = {"features": compute_features(audio, frontend), "truth": truth}
        self.negatives = None
        others = [w for w in corpus.words if w not in keywords and corpus.clips(w, split)]
        if others and minutes > 0:
            audio, truth = compose_recording(
                corpus,
                keywords,
                minutes * 60,
                split,
                1.0,
                seed=seed + 1,
                sample_rate=rate,
                warn=warn,
            )
            self.negatives = {"features": compute_features(audio, frontend), "truth": truth}
        self.labels = labels
        self.frontend = frontend

    @property
    def words(self) -> int:
        return len(self.keywords["truth"]["events"])

    @property
    def negative_hours(self) -> float:
        source = self.negatives or self.keywords
        return source["truth"]["duration"] / 3600

    def score(self, runtime: Any) -> list[Scored]:
        """The posteriors of ``runtime`` on the keyword recording (and the negatives one)."""
        return [
            Scored(*score_features(runtime, part["features"]), part["truth"])
            for part in (self.keywords, self.negatives)
            if part is not None
        ]

    def evaluate(
        self, runtime: Any, target: float, scored: Optional[list[Scored]] = None
    ) -> dict[str, Any]:
        """``summarize`` of the DET of ``runtime`` on these recordings (``scored``: its
        posteriors from ``score``, when the caller has them already)."""
        scored = scored or self.score(runtime)
        det = det_curve(
            scored[0], scored[1] if len(scored) > 1 else None, self.labels, self.frontend
        )
        return summarize(det, target, self.words, self.negative_hours)
