"""Detection quality: test recordings with keywords at known times, and hit rate / false alarms.

``build_recording`` lays clips of a Speech Commands-layout folder end to end over background noise
(keywords and, between them, other words as distractors) and records where each word is.
``evaluate_recording`` scores the recording once, then replays the window scores through the
event decoder at many thresholds: hit rate, false alarms per hour and the DET curve (false-reject
rate against false alarms per hour).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from kws_ghost.config import DetectorConfig
from kws_ghost.data import (
    SILENCE,
    UNKNOWN,
    canonical_split,
    fit_length,
    scan_corpus,
    speech_span,
)
from kws_ghost.errors import KwsError
from kws_ghost.fileio import write_json


def build_recording(
    data_dir: str | os.PathLike[str],
    out_wav: str | os.PathLike[str],
    keywords: Sequence[str],
    duration: float = 60.0,
    split: str = "testing",
    distractor_ratio: float = 0.5,
    gap: tuple[float, float] = (1.0, 2.5),
    noise_volume: float = 0.05,
    seed: int = 0,
    sample_rate: int = 16000,
) -> dict[str, Any]:
    """Write a WAV with keywords at known times and a truth JSON beside it (``.json``).

    Words are trimmed to their speech span and separated by ``gap`` seconds; a fraction
    ``distractor_ratio`` of the words are other (non-keyword) words, which must not fire.
    """
    from kws_ghost.audio import load_audio, write_wav

    split = canonical_split(split)
    corpus = scan_corpus(data_dir)
    keywords = [k for k in keywords if k not in (SILENCE, UNKNOWN)]
    pool = {k: corpus.clips(k, split) for k in keywords}
    pool = {k: v for k, v in pool.items() if v}
    if not pool:
        raise KwsError(f"{data_dir}: no {split} clips for {', '.join(keywords)}")
    others = [p for w in sorted(corpus.words) if w not in keywords for p in corpus.clips(w, split)]
    rng = np.random.default_rng(seed)
    total = int(duration * sample_rate)
    audio = np.zeros(total, dtype=np.float32)
    truth: list[dict[str, Any]] = []
    t = rng.uniform(*gap)
    queue: list[str] = []
    while True:
        is_distractor = bool(others) and rng.uniform() < distractor_ratio
        if is_distractor:
            relpath, word = others[rng.integers(len(others))], None
        else:
            if not queue:  # keywords in shuffled rounds, so each appears about equally often
                queue = list(rng.permutation(sorted(pool)))
            word = str(queue.pop())
            relpath = pool[word][rng.integers(len(pool[word]))]
        clip = fit_length(load_audio(corpus.root / relpath, sample_rate), sample_rate)
        lo, hi = speech_span(clip, sample_rate)
        start = int(t * sample_rate)
        if start + (hi - lo) >= total - sample_rate // 2:
            break
        audio[start : start + hi - lo] += clip[lo:hi]
        truth.append(
            {
                "keyword": word,
                "word": relpath.split("/")[0],
                "start": round(start / sample_rate, 3),
                "end": round((start + hi - lo) / sample_rate, 3),
                "source": relpath,
            }
        )
        t = (start + hi - lo) / sample_rate + rng.uniform(*gap)
    if corpus.noise_files and noise_volume > 0:
        noise = load_audio(corpus.noise_files[rng.integers(len(corpus.noise_files))], sample_rate)
        reps = int(np.ceil(total / len(noise)))
        offset = int(rng.integers(len(noise)))
        audio += noise_volume * np.tile(noise, reps + 1)[offset : offset + total]
    write_wav(out_wav, np.clip(audio, -1, 1), sample_rate)
    record = {
        "wav": str(out_wav),
        "sample_rate": sample_rate,
        "duration": total / sample_rate,
        "keywords": sorted(pool),
        "events": [e for e in truth if e["keyword"]],
        "distractors": [e for e in truth if not e["keyword"]],
    }
    write_json(truth_path(out_wav), record)
    return record


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
    keyword when their spans overlap or their centres are within ``tolerance`` seconds; each
    word is hit at most once, every other event is a false alarm."""
    used = [False] * len(truth)
    hits, false_alarms, offsets = 0, 0, []
    for event in events:
        centre = (event.start + event.end) / 2
        best, best_distance = None, None
        for i, word in enumerate(truth):
            if used[i] or word["keyword"] != event.keyword:
                continue
            distance = abs(centre - (word["start"] + word["end"]) / 2)
            overlaps = event.start < word["end"] and word["start"] < event.end
            if (overlaps or distance <= tolerance) and (
                best_distance is None or distance < best_distance
            ):
                best, best_distance = i, distance
        if best is None:
            false_alarms += 1
        else:
            used[best] = True
            hits += 1
            offsets.append(float(best_distance))
    return hits, false_alarms, offsets


def evaluate_recording(
    scorer: Any,
    wav: str | os.PathLike[str],
    truth: dict[str, Any],
    config: Optional[DetectorConfig] = None,
    thresholds: Optional[Sequence[float]] = None,
) -> dict[str, Any]:
    """Hit rate and false alarms per hour at ``config.threshold`` and over ``thresholds``."""
    from kws_ghost.audio import iter_audio_blocks
    from kws_ghost.stream import decode_scores, score_blocks

    config = config or DetectorConfig()
    rate = scorer.frontend_config.sample_rate
    window = scorer.frontend_config.clip_seconds
    scores = score_blocks(iter_audio_blocks(wav, rate), scorer, config.hop_ms)
    words = [
        e for e in truth["events"] if config.keywords is None or e["keyword"] in config.keywords
    ]
    hours = truth["duration"] / 3600.0
    if thresholds is None:
        thresholds = [round(x, 3) for x in np.linspace(0.05, 0.99, 48)]

    def at(threshold: float) -> dict[str, Any]:
        setting = dataclasses.replace(config, threshold=threshold)
        events = decode_scores(scores, scorer.labels, setting, window)
        hits, false_alarms, offsets = match_events(events, words)
        return {
            "threshold": threshold,
            "hits": hits,
            "false_alarms": false_alarms,
            "hit_rate": hits / len(words) if words else 0.0,
            "false_reject_rate": 1 - hits / len(words) if words else 0.0,
            "false_alarms_per_hour": false_alarms / hours,
            "mean_offset": float(np.mean(offsets)) if offsets else None,
        }

    result = at(config.threshold)
    result.update(
        {
            "wav": str(wav),
            "duration": truth["duration"],
            "keywords_in_recording": len(words),
            "distractors": len(truth.get("distractors", [])),
            "hop_ms": config.hop_ms,
            "det": [at(t) for t in thresholds],
        }
    )
    return result


def plot_det(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """DET curve PNG: false-reject rate against false alarms per hour, one point per threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kws_ghost.fileio import atomic_path

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
        label=f"threshold {result['threshold']}",
    )
    ax.set_xlabel("false alarms per hour")
    ax.set_ylabel("false-reject rate")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(
        f"DET: {result['keywords_in_recording']} keywords, {result['duration'] / 60:.1f} min"
    )
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
