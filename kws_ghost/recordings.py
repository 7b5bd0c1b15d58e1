"""Test recordings: clips of a Speech Commands-layout folder laid end to end over background
noise, with the truth of where each word is (``kws-ghost make-stream``, the training-time
validation recordings).

``compose_recording`` lays keywords and, between them, other words as distractors; with
``distractor_ratio=1`` it makes a negatives-only recording, long enough to count false alarms.
``build_recording`` writes one as a WAV with its truth JSON beside it. ``looped`` is the noise
bed, shared with the training sequences (``kws_ghost.sequences``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

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


def looped(noise: np.ndarray, samples: int, offset: int) -> np.ndarray:
    """``samples`` of ``noise`` repeated end to end, from ``offset``: a background bed."""
    reps = int(np.ceil((samples + offset) / len(noise)))
    return np.tile(noise, reps)[offset : offset + samples]


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
        audio += noise_volume * looped(noise, total, int(rng.integers(len(noise))))
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
