"""Detection quality as users judge it: hit rate against false alarms per hour (DET).

``compose_recording`` lays clips of a Speech Commands-layout folder end to end over background
noise (keywords and, between them, other words as distractors) and records where each word is;
with ``distractor_ratio=1`` it makes a negatives-only recording, long enough to count false
alarms. ``evaluate_recording`` runs the detector over a recording once, then replays its
posteriors through the event decoder at many thresholds: the DET curve. The hit rate comes from
the keyword recording, the false-alarm rate from the negatives-only one where given (else from
the keyword recording itself). ``ValidationRecordings`` does this for training, on recordings of
validation speakers built once, so that ``best.pt`` is the epoch with the best hit rate at a
target false-alarm rate.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from kws_ghost.config import DetectorConfig, FrontendConfig
from kws_ghost.data import (
    SILENCE,
    UNKNOWN,
    Corpus,
    canonical_split,
    fit_length,
    scan_corpus,
    speech_span,
)
from kws_ghost.errors import KwsError
from kws_ghost.fileio import write_json

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


def compose_recording(
    corpus: Corpus,
    keywords: Sequence[str],
    duration: float = 60.0,
    split: str = "testing",
    distractor_ratio: float = 0.5,
    gap: tuple[float, float] = (1.0, 2.5),
    noise_volume: float = 0.05,
    seed: int = 0,
    sample_rate: int = 16000,
    every_keyword: bool = False,
    warn: Optional[Any] = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """(audio, truth): words of ``split`` trimmed to their speech, ``gap`` seconds apart, over a
    background-noise bed; a fraction ``distractor_ratio`` of the words are other (non-keyword)
    words, which must not fire. ``every_keyword``: each keyword clip of the split once (in random
    order, the recording as long as that takes) instead of random ones for ``duration``. An
    unreadable clip is left out (and named through ``warn``, when given)."""
    from kws_ghost.audio import load_audio

    split = canonical_split(split)
    keywords = [k for k in keywords if k not in (SILENCE, UNKNOWN)]
    pool = {k: corpus.clips(k, split) for k in keywords}
    pool = {k: v for k, v in pool.items() if v}
    others = [p for w in sorted(corpus.words) if w not in keywords for p in corpus.clips(w, split)]
    if not pool and distractor_ratio < 1:
        raise KwsError(f"{corpus.root}: no {split} clips for {', '.join(keywords)}")
    if not others and distractor_ratio >= 1:
        raise KwsError(f"{corpus.root}: no {split} clips of words other than the keywords")
    rng = np.random.default_rng(seed)
    todo = [(k, p) for k in sorted(pool) for p in pool[k]]
    todo = [todo[i] for i in rng.permutation(len(todo))] if every_keyword else []
    words: list[tuple[int, np.ndarray, Optional[str], str]] = []  # (start, speech, keyword, path)
    queue: list[str] = []
    limit = None if every_keyword else int(duration * sample_rate) - sample_rate // 2
    t = int(rng.uniform(*gap) * sample_rate)
    if every_keyword and distractor_ratio >= 1:
        raise KwsError("--every-keyword lays each keyword once: it needs --distractors below 1")
    while True:
        if every_keyword and not todo:
            break
        distractor = rng.uniform() < distractor_ratio or (not pool and not every_keyword)
        if others and distractor:
            keyword, relpath = None, others[rng.integers(len(others))]
        elif every_keyword:
            if not todo:
                break
            keyword, relpath = todo.pop()
        else:
            if not queue:  # keywords in shuffled rounds, so each appears about equally often
                queue = list(rng.permutation(sorted(pool)))
            keyword = str(queue.pop())
            relpath = pool[keyword][rng.integers(len(pool[keyword]))]
        try:
            clip = fit_length(load_audio(corpus.root / relpath, sample_rate), sample_rate)
        except KwsError as exc:
            if warn is not None:
                warn(f"warning: skipping an unreadable clip: {exc}")
            for clips in (others, *pool.values()):
                if relpath in clips:
                    clips.remove(relpath)
            if not others and not any(pool.values()):
                raise KwsError(f"{corpus.root}: every {split} clip is unreadable") from exc
            pool = {k: v for k, v in pool.items() if v}
            queue = [k for k in queue if k in pool]
            continue
        lo, hi = speech_span(clip, sample_rate)
        if limit is not None and t + (hi - lo) >= limit:
            break
        words.append((t, clip[lo:hi], keyword, relpath))
        t += (hi - lo) + int(rng.uniform(*gap) * sample_rate)
    total = t + sample_rate // 2 if every_keyword else int(duration * sample_rate)
    audio = np.zeros(total, dtype=np.float32)
    for start, speech, _, _ in words:
        audio[start : start + len(speech)] += speech
    if corpus.noise_files and noise_volume > 0:
        noise = load_audio(corpus.noise_files[rng.integers(len(corpus.noise_files))], sample_rate)
        offset = int(rng.integers(len(noise)))
        reps = int(np.ceil((total + offset) / len(noise)))
        audio += noise_volume * np.tile(noise, reps)[offset : offset + total]
    truth = [
        {
            "keyword": keyword,
            "word": relpath.split("/")[0],
            "start": round(start / sample_rate, 3),
            "end": round((start + len(speech)) / sample_rate, 3),
            "source": relpath,
        }
        for start, speech, keyword, relpath in words
    ]
    record = {
        "sample_rate": sample_rate,
        "duration": total / sample_rate,
        "keywords": sorted(pool),
        "events": [e for e in truth if e["keyword"]],
        "distractors": [e for e in truth if not e["keyword"]],
    }
    return np.clip(audio, -1, 1), record


def build_recording(
    data_dir: str | os.PathLike[str],
    out_wav: str | os.PathLike[str],
    keywords: Sequence[str],
    **options: Any,
) -> dict[str, Any]:
    """``compose_recording`` written as a WAV with the truth JSON beside it (``.json``)."""
    from kws_ghost.audio import write_wav

    audio, record = compose_recording(scan_corpus(data_dir), keywords, **options)
    record["wav"] = str(out_wav)
    write_json(truth_path(out_wav), record)  # first: it is what says the WAV is ours
    write_wav(out_wav, audio, record["sample_rate"])
    return record


def check_recording_output(wav: str | os.PathLike[str]) -> None:
    """make-stream replaces only a recording it wrote itself (its truth file says so)."""
    wav = Path(wav)
    truth = truth_path(wav)
    if truth == wav:
        raise KwsError(f"--out {wav}: the truth goes beside the recording as .json; name a .wav")
    for path in (wav, truth):
        if path.exists() and not _made_by_make_stream(truth, wav):
            raise KwsError(
                f"{path} exists and was not written by make-stream; it is left as it is: "
                "choose another --out"
            )


def _made_by_make_stream(truth: Path, wav: Path) -> bool:
    try:
        record = json.loads(truth.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and Path(str(record.get("wav", ""))).name == wav.name


def truth_path(wav: str | os.PathLike[str]) -> Path:
    return Path(wav).with_suffix(".json")


def load_truth(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text())
        record["events"], record["duration"]  # noqa: B018 - both are required
        return record
    except FileNotFoundError as exc:
        raise KwsError(f"{path}: no truth file (make one with `kws-ghost make-stream`)") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise KwsError(f"{path}: not a truth file made by `kws-ghost make-stream`") from exc


def match_events(
    events: Sequence[Any], truth: Sequence[dict[str, Any]], tolerance: float = 0.5
) -> tuple[int, int, list[float]]:
    """(hits, false alarms, centre offsets of hits). An event hits a true word of the same
    keyword when their spans overlap or their centres are within ``tolerance`` seconds (the
    nearest unused such word); each word is hit at most once, every other event is a false
    alarm."""
    by_keyword: dict[str, tuple[np.ndarray, list[dict[str, Any]]]] = {}
    for word in sorted(truth, key=lambda w: w["start"] + w["end"]):
        by_keyword.setdefault(word["keyword"], (np.zeros(0), []))[1].append(word)
    for keyword, (_, words) in by_keyword.items():
        by_keyword[keyword] = (np.array([(w["start"] + w["end"]) / 2 for w in words]), words)
    reach = tolerance + max((w["end"] - w["start"] for w in truth), default=0.0)
    used: set[int] = set()
    hits, false_alarms, offsets = 0, 0, []
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
        if best is None:
            false_alarms += 1
        else:
            used.add(id(best))
            hits += 1
            offsets.append(float(best_distance))
    return hits, false_alarms, offsets


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
    """``score_audio`` for stored features of a streaming model (segment scorer)."""
    from kws_ghost.frontend import frame_levels
    from kws_ghost.scorers import make_scorer

    scorer = make_scorer(runtime, "segments")
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
    from kws_ghost.stream import resolve_threshold

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
        "det": det,
    }


class ValidationRecordings:
    """Recordings of validation speakers, built once per run, scored after every epoch: every
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
    ) -> None:
        from kws_ghost.frontend import compute_features

        keywords = [label for label in labels if label not in (SILENCE, UNKNOWN)]
        rate = frontend.sample_rate
        audio, truth = compose_recording(
            corpus,
            keywords,
            split="validation",
            seed=seed,
            sample_rate=rate,
            every_keyword=True,
            warn=warn,
        )
        self.keywords = {"features": compute_features(audio, frontend), "truth": truth}
        self.negatives = None
        others = [w for w in corpus.words if w not in keywords and corpus.clips(w, "validation")]
        if others and minutes > 0:
            audio, truth = compose_recording(
                corpus,
                keywords,
                minutes * 60,
                "validation",
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

    def evaluate(self, runtime: Any, target: float) -> dict[str, Any]:
        """``summarize`` of the DET of ``runtime`` on these recordings."""
        scored = [
            Scored(*score_features(runtime, part["features"]), part["truth"])
            for part in (self.keywords, self.negatives)
            if part is not None
        ]
        det = det_curve(
            scored[0], scored[1] if len(scored) > 1 else None, self.labels, self.frontend
        )
        return summarize(det, target, self.words, self.negative_hours)


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
