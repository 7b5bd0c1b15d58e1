"""Detection quality as users judge it: hit rate against false alarms per hour (DET).

``evaluate_recording`` runs the detector over a recording (``kws_ghost.recordings``) once, then
replays its posteriors through the event decoder at many thresholds: the DET curve. The hit rate
comes from the keyword recording, the false-alarm rate from the negatives-only one where given
(else from the keyword recording itself). ``pair_events`` says which events hit which words;
``summarize`` is what a checkpoint carries; ``false_alarm_words`` says which words fired
falsely; ``plot_det`` draws the curve.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from kws_ghost.config import DetectorConfig, FrontendConfig

# Thresholds of a DET curve: coarse steps, then fine ones where models trained with label
# smoothing keep their peaks (0.8-0.99), then ever closer to 1.
DET_THRESHOLDS = tuple(
    float(t)
    for t in np.unique(
        np.round(
            np.concatenate(
                [np.linspace(0.05, 0.8, 16), np.linspace(0.8, 0.99, 39), 1 - np.logspace(-2, -4, 9)]
            ),
            5,
        )
    )
)
DECODER_SETTINGS = ("smoothing", "patience", "refractory")
BLOCK_FRAMES = 12000  # frames scored per call when replaying stored features (2 minutes)


def pair_events(
    events: Sequence[Any], truth: Sequence[dict[str, Any]], tolerance: float = 0.5
) -> list[tuple[Any, Optional[dict[str, Any]], float]]:
    """(event, the true word it hits or None, centre distance) for each event, in order. An event
    hits a true word of the same keyword when their spans overlap or their centres are within
    ``tolerance`` seconds (the nearest unused such word); each word is hit at most once."""
    by_keyword: dict[str, tuple[np.ndarray, list[dict[str, Any]]]] = {}
    for word in sorted(truth, key=lambda w: w["start"] + w["end"]):
        by_keyword.setdefault(word["keyword"], (np.zeros(0), []))[1].append(word)
    for keyword, (_, words) in by_keyword.items():
        by_keyword[keyword] = (np.array([(w["start"] + w["end"]) / 2 for w in words]), words)
    reach = tolerance + max((w["end"] - w["start"] for w in truth), default=0.0)
    used: set[int] = set()
    pairs: list[tuple[Any, Optional[dict[str, Any]], float]] = []
    for event in events:
        centres, words = by_keyword.get(event.keyword, (np.zeros(0), []))
        centre = (event.start + event.end) / 2
        lo = int(np.searchsorted(centres, centre - reach - (event.end - event.start)))
        hi = int(np.searchsorted(centres, centre + reach + (event.end - event.start)))
        best, best_distance = None, None
        for i in range(lo, hi):
            word = words[i]
            if id(word) in used:
                continue
            distance = abs(centre - centres[i])
            overlaps = event.start < word["end"] and word["start"] < event.end
            if (overlaps or distance <= tolerance) and (
                best_distance is None or distance < best_distance
            ):
                best, best_distance = word, distance
        if best is not None:
            used.add(id(best))
        pairs.append((event, best, float(best_distance) if best is not None else 0.0))
    return pairs


def match_events(
    events: Sequence[Any], truth: Sequence[dict[str, Any]], tolerance: float = 0.5
) -> tuple[int, int, list[float]]:
    """(hits, false alarms, centre offsets of hits), as ``pair_events`` pairs them: every event
    that hits no word is a false alarm."""
    offsets = [distance for _, word, distance in pair_events(events, truth, tolerance) if word]
    return len(offsets), len(events) - len(offsets), offsets


@dataclasses.dataclass
class Scored:
    """A recording's per-frame posteriors and levels, with its truth."""

    posteriors: np.ndarray
    levels: np.ndarray
    truth: dict[str, Any]

    @property
    def hours(self) -> float:
        return self.truth["duration"] / 3600.0


def score_audio(
    runtime: Any,
    source: str | os.PathLike[str] | np.ndarray,
    scorer: str = "auto",
    hop_ms: float = 100.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(posteriors [frames, classes], levels [frames]) of a WAV file or an audio array, through
    the detector's own stages (front-end, scorer), block by block."""
    from kws_ghost.audio import iter_audio_blocks
    from kws_ghost.stream import KeywordDetector

    detector = KeywordDetector(runtime, DetectorConfig(threshold=0.5, hop_ms=hop_ms), scorer)
    rate = runtime.frontend_config.sample_rate
    if isinstance(source, np.ndarray):
        blocks: Any = (source[i : i + 10 * rate] for i in range(0, len(source), 10 * rate))
    else:
        blocks = iter_audio_blocks(source, rate)
    pairs = [detector.push_posteriors(block) for block in blocks]
    pairs.append(detector.flush_posteriors())
    return np.concatenate([p for p, _ in pairs]), np.concatenate([v for _, v in pairs])


def score_features(runtime: Any, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``score_audio`` for stored features: the scorer a file gets (segments for a streaming
    model, windows for a clip-trained one), so both kinds have a DET on the same recordings."""
    from kws_ghost.frontend import frame_levels
    from kws_ghost.scorers import choose_scorer, make_scorer

    # windows in batches: a stored recording need not round as every chunking of it would
    scorer = make_scorer(runtime, choose_scorer(runtime, "auto", live=False), window_batch=64)
    parts = [
        scorer.push(features[i : i + BLOCK_FRAMES]) for i in range(0, len(features), BLOCK_FRAMES)
    ]
    parts.append(scorer.flush())
    return np.concatenate(parts), frame_levels(features, runtime.frontend_config)


def det_curve(
    keywords: Scored,
    negatives: Optional[Scored],
    labels: list[str],
    frontend: FrontendConfig,
    config: Optional[DetectorConfig] = None,
    thresholds: Sequence[float] = DET_THRESHOLDS,
) -> list[dict[str, Any]]:
    """Hit rate (keyword recording) and false alarms per hour (the negatives-only recording, else
    the keyword recording) at each threshold, replaying the posteriors through the decoder."""
    from kws_ghost.stream import decode

    config = config or DetectorConfig()
    words = counted_words(keywords.truth, config)
    thresholds = list(thresholds)
    found = decode(keywords.posteriors, keywords.levels, labels, config, frontend, thresholds)
    quiet = None
    if negatives is not None:
        quiet = decode(negatives.posteriors, negatives.levels, labels, config, frontend, thresholds)
    points = []
    for k, threshold in enumerate(thresholds):
        hits, in_keywords, offsets = match_events(found[k], words)
        if quiet is not None:
            false_alarms, hours = len(quiet[k]), negatives.hours
        else:
            false_alarms, hours = in_keywords, keywords.hours
        points.append(
            {
                "threshold": threshold,
                "hits": hits,
                "hit_rate": hits / len(words) if words else 0.0,
                "false_reject_rate": 1 - hits / len(words) if words else 0.0,
                "false_alarms": false_alarms,
                "false_alarms_per_hour": false_alarms / hours if hours else 0.0,
                "keyword_recording_false_alarms": in_keywords,
                "mean_offset": float(np.mean(offsets)) if offsets else None,
            }
        )
    return points


def counted_words(truth: dict[str, Any], config: DetectorConfig) -> list[dict[str, Any]]:
    """The truth's keywords that count: those the detector listens for (``--keywords``)."""
    return [
        e for e in truth["events"] if config.keywords is None or e["keyword"] in config.keywords
    ]


def false_alarm_words(
    events: Sequence[Any],
    truth: dict[str, Any],
    config: Optional[DetectorConfig] = None,
    tolerance: float = 0.5,
) -> list[dict[str, Any]]:
    """What fired falsely: the events that hit no counted keyword, grouped by the recording's word
    under them (the nearest within ``tolerance`` seconds of the event's centre; None: noise) and
    the keyword they fired as, most frequent first. A recording built from a few clips repeats
    them, so one confusable clip can make most of its false alarms."""
    counted = counted_words(truth, config or DetectorConfig())
    false = [event for event, word, _ in pair_events(events, counted, tolerance) if word is None]
    words = [*truth["events"], *truth.get("distractors", [])]
    groups: Counter[tuple[Optional[str], Optional[str], str]] = Counter()
    for event in false:
        centre = (event.start + event.end) / 2
        gaps = [max(w["start"] - centre, centre - w["end"], 0.0) for w in words]
        nearest = int(np.argmin(gaps)) if gaps else -1
        if nearest >= 0 and gaps[nearest] <= tolerance:
            word = words[nearest]
            groups[(word.get("word", word.get("keyword")), word.get("source"), event.keyword)] += 1
        else:
            groups[(None, None, event.keyword)] += 1
    return [
        {"word": word, "source": source, "fired": fired, "count": count}
        for (word, source, fired), count in groups.most_common()
    ]


def operating_point(det: list[dict[str, Any]], target: float) -> Optional[dict[str, Any]]:
    """The DET point with the highest hit rate at no more than ``target`` false alarms per hour
    (ties: fewer false alarms, then the higher threshold); None when no threshold is that quiet."""
    allowed = [p for p in det if p["false_alarms_per_hour"] <= target]
    if not allowed:
        return None
    return max(allowed, key=lambda p: (p["hit_rate"], -p["false_alarms_per_hour"], p["threshold"]))


def rate_at_hit_rate(det: list[dict[str, Any]], hit_rate: float) -> Optional[float]:
    """The lowest false-alarm rate among thresholds that reach ``hit_rate`` (None: none does)."""
    reached = [p["false_alarms_per_hour"] for p in det if p["hit_rate"] >= hit_rate]
    return min(reached) if reached else None


def summarize(
    det: list[dict[str, Any]],
    target: float,
    words: int,
    hours: float,
    config: Optional[DetectorConfig] = None,
) -> dict:
    """What a model carries about its detection quality (``detection`` in a checkpoint)."""
    point = operating_point(det, target)
    return {
        "target_fa_per_hour": target,
        "threshold": point["threshold"] if point else max(p["threshold"] for p in det),
        "hit_rate": point["hit_rate"] if point else 0.0,
        "false_alarms_per_hour": point["false_alarms_per_hour"] if point else None,
        "keywords": words,
        "negative_hours": round(hours, 4),
        # the decision settings the curve holds for (thresholds mean something else with others)
        "decoder": {name: getattr(config or DetectorConfig(), name) for name in DECODER_SETTINGS},
        "det": [{k: p[k] for k in ("threshold", "hit_rate", "false_alarms_per_hour")} for p in det],
    }


def evaluate_recording(
    runtime: Any,
    wav: str | os.PathLike[str],
    truth: dict[str, Any],
    config: Optional[DetectorConfig] = None,
    negatives: Optional[tuple[str | os.PathLike[str], dict[str, Any]]] = None,
    scorer: str = "auto",
    target_fa_per_hour: float = 10.0,
    thresholds: Sequence[float] = DET_THRESHOLDS,
) -> dict[str, Any]:
    """Hit rate and false alarms per hour of ``runtime`` on a recording, at the detector's
    threshold and over ``thresholds`` (DET), with the operating point at the target rate."""
    from kws_ghost.stream import decode, resolve_threshold

    config = config or DetectorConfig()
    threshold, _ = resolve_threshold(runtime.detection, config)
    hop_ms = config.hop_ms
    keywords = Scored(*score_audio(runtime, wav, scorer, hop_ms), truth)
    negative = None
    if negatives is not None:
        negative = Scored(*score_audio(runtime, negatives[0], scorer, hop_ms), negatives[1])
    fe = runtime.frontend_config
    det = det_curve(keywords, negative, runtime.labels, fe, config, thresholds)
    (at,) = det_curve(keywords, negative, runtime.labels, fe, config, [threshold])
    quiet = negative if negative is not None else keywords  # where false alarms are counted
    (fired,) = decode(quiet.posteriors, quiet.levels, runtime.labels, config, fe, [threshold])
    point = operating_point(det, target_fa_per_hour)
    hours = negative.hours if negative is not None else keywords.hours
    return {
        **at,
        "wav": str(wav),
        "negatives": str(negatives[0]) if negatives is not None else None,
        "duration": truth["duration"],
        "negative_hours": hours,
        "keywords_in_recording": len(counted_words(truth, config)),
        "distractors": len(truth.get("distractors", [])),
        "target_fa_per_hour": target_fa_per_hour,
        "hit_rate_at_target": point["hit_rate"] if point else 0.0,
        "threshold_at_target": point["threshold"] if point else None,
        "false_alarms_per_hour_at_hit_rate_0.7": rate_at_hit_rate(det, 0.7),
        "false_alarm_words": false_alarm_words(fired, quiet.truth, config),
        "det": det,
    }


def plot_det(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """DET curve PNG: false-reject rate against false alarms per hour, one point per threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kws_ghost.fileio import PNG_METADATA, atomic_path

    det = result["det"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(
        [p["false_alarms_per_hour"] for p in det],
        [p["false_reject_rate"] for p in det],
        marker=".",
    )
    ax.plot(
        [result["false_alarms_per_hour"]],
        [result["false_reject_rate"]],
        "o",
        color="C3",
        label=f"threshold {result['threshold']:.3g}",
    )
    ax.set_xlabel("false alarms per hour")
    ax.set_ylabel("false-reject rate")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(
        f"DET: {result['keywords_in_recording']} keywords, "
        f"{result['negative_hours'] * 60:.1f} min of negatives"
    )
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png", metadata=PNG_METADATA)
    plt.close(fig)
