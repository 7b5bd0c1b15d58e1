"""Streaming detection on real speech: quality (DET), state health over an hour, and speed.

    python benchmarks/bench_stream.py --stream-models A.pt [B.pt ...] --window-models C.pt [...]
        [--data data/real-dev] [--work data/bench-stream] [--out benchmarks/results/stream.json]

Recordings are built once from the development subset's *test* speakers only (``--work`` holds
them; nothing there is committed):

* ``keywords.wav``: every test keyword clip once, among other words (the hit rate);
* ``negatives.wav``: 40 minutes of other words and noise, no keyword (false alarms per hour);
* ``hour.wav``: 60 minutes of keywords and other words (state health: the first and the last 10
  minutes are scored alike).

``--stream-models``: checkpoints of the default (streaming) recipe, run as ``detect`` runs them
(the segment scorer; the hour by the strict frame-by-frame stream, one initial state).
``--window-models``: checkpoints of the earlier clip recipe, with the earlier window detector
(every 100 ms the trailing 1 s rescored from a zero state). Reported per model and as means over
the seeds: hit rate at 10 false alarms per hour, false alarms per hour at hit rate 0.7, and the
false-alarm rates of both at equal hit rates. Speed: detection alone over 30 minutes (segment
scorer, with the checkpoint and with its ONNX export, and the window scorer in the same run),
the whole ``detect`` command on 1, 30 and 60 minutes, and its peak memory. ``--speed-only``
reruns the speed part into an existing result file.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kws_ghost.audio import iter_audio_blocks
from kws_ghost.config import DetectorConfig
from kws_ghost.data import scan_corpus
from kws_ghost.det import (
    DET_THRESHOLDS,
    Scored,
    det_curve,
    match_events,
    operating_point,
    rate_at_hit_rate,
    score_audio,
)
from kws_ghost.fileio import write_json
from kws_ghost.recordings import build_recording, load_truth, truth_path
from kws_ghost.runtime import load_model
from kws_ghost.stream import KeywordDetector

HIT_RATES = (0.5, 0.6, 0.7, 0.8)


def recordings(data: Path, work: Path, keywords: list[str]) -> dict[str, Path]:
    """Build (once) the test-speaker recordings the benchmark scores."""
    work.mkdir(parents=True, exist_ok=True)
    plans = {
        "keywords": {"every_keyword": True, "distractor_ratio": 0.5, "seed": 11},
        "negatives": {"duration": 40 * 60, "distractor_ratio": 1.0, "seed": 12},
        "hour": {"duration": 60 * 60, "distractor_ratio": 0.5, "seed": 13},
        "half-hour": {"duration": 30 * 60, "distractor_ratio": 0.5, "seed": 14},
        "minute": {"duration": 60, "distractor_ratio": 0.5, "seed": 15},
    }
    paths = {}
    for name, plan in plans.items():
        wav = work / f"{name}.wav"
        if not truth_path(wav).exists():
            build_recording(data, wav, keywords, split="testing", **plan)
        paths[name] = wav
    return paths


def quality(model: Path, paths: dict[str, Path], scorer: str, force: bool = False) -> dict:
    """DET of one model on the keyword and negatives recordings. ``force``: stream a model
    trained on clips anyway (``detect`` refuses to), to measure why the window scorer stays."""
    runtime = load_model(model)
    if force:
        runtime.__class__ = type("Streamed", (type(runtime),), {"streaming": True})
    keywords = Scored(
        *score_audio(runtime, paths["keywords"], scorer), load_truth(truth_path(paths["keywords"]))
    )
    negatives = Scored(
        *score_audio(runtime, paths["negatives"], scorer),
        load_truth(truth_path(paths["negatives"])),
    )
    det = det_curve(keywords, negatives, runtime.labels, runtime.frontend_config)
    point = operating_point(det, 10.0)
    return {
        "model": str(model),
        "scorer": scorer,
        "keywords": len(keywords.truth["events"]),
        "negative_minutes": round(negatives.hours * 60, 1),
        "hit_rate_at_10_fa_per_hour": point["hit_rate"] if point else 0.0,
        "threshold_at_10_fa_per_hour": point["threshold"] if point else None,
        "fa_per_hour_at_hit_rate": {str(h): rate_at_hit_rate(det, h) for h in HIT_RATES},
        "det": det,
    }


def health(model: Path, hour: Path) -> dict:
    """Hits and false alarms in the first and last 10 minutes of an hour streamed from one
    initial state, frame by frame (the strict stream: a drifting state would show here)."""
    runtime = load_model(model)
    truth = load_truth(truth_path(hour))
    detector = KeywordDetector(runtime, DetectorConfig(), "stream")
    started = time.perf_counter()
    events = []
    for block in iter_audio_blocks(hour, runtime.frontend_config.sample_rate):
        events += detector.push(block)
    events += detector.flush()
    seconds = time.perf_counter() - started
    report = {"threshold": detector.config.threshold, "seconds": round(seconds, 1)}
    for name, (lo, hi) in {"first_10_min": (0, 600), "last_10_min": (3000, 3600)}.items():
        words = [w for w in truth["events"] if lo <= w["start"] < hi]
        inside = [e for e in events if lo <= e.start < hi]
        hits, false_alarms, _ = match_events(inside, words)
        report[name] = {
            "keywords": len(words),
            "hits": hits,
            "hit_rate": hits / len(words) if words else None,
            "false_alarms": false_alarms,
        }
    first, last = report["first_10_min"], report["last_10_min"]
    # within noise: two binomial proportions' difference within 2 standard errors
    p = (first["hits"] + last["hits"]) / max(1, first["keywords"] + last["keywords"])
    se = (p * (1 - p) * (1 / max(1, first["keywords"]) + 1 / max(1, last["keywords"]))) ** 0.5
    report["hit_rate_difference"] = (last["hit_rate"] or 0) - (first["hit_rate"] or 0)
    report["hit_rate_two_standard_errors"] = 2 * se
    # false alarms: Poisson counts; within noise when |a - b| <= 2 sqrt(a + b)
    count = first["false_alarms"] + last["false_alarms"]
    report["false_alarms_within_noise"] = abs(
        first["false_alarms"] - last["false_alarms"]
    ) <= 2 * max(1.0, count**0.5)
    report["hit_rate_within_noise"] = abs(report["hit_rate_difference"]) <= 2 * se
    return report


def detection_seconds(model: Path, wav: Path, scorer: str) -> float:
    """Seconds of the detector alone (blocks read from disk, front-end, model, decoder)."""
    runtime = load_model(model)
    detector = KeywordDetector(runtime, DetectorConfig(), scorer)
    started = time.perf_counter()
    for block in iter_audio_blocks(wav, runtime.frontend_config.sample_rate):
        detector.push(block)
    detector.flush()
    return time.perf_counter() - started


def run_command(wav: Path, model: Path, *options: str) -> dict:
    """One ``kws-ghost detect`` process: wall seconds and peak resident memory (VmHWM, polled)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        command = [sys.executable, "-m", "kws_ghost", "detect", str(wav), "--model", str(model)]
        process = subprocess.Popen([*command, "--format", "json", *options], stdout=out, stderr=err)
        peak_kb = 0
        status = Path(f"/proc/{process.pid}/status")
        while process.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kb = max(peak_kb, int(line.split()[1]))
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.01)
        wall = time.perf_counter() - started
        err.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"detect failed: {err.read().decode()[-500:]}")
    return {"wall_seconds": round(wall, 3), "peak_rss_mb": round(peak_kb / 1024, 1)}


def speed(stream_model: Path, window_model: Path, paths: dict[str, Path]) -> dict:
    """Detection alone over 30 minutes (the checkpoint and its ONNX export, the window detector
    in the same run), and the whole ``detect`` command on 1, 30 and 60 minutes with its peak
    memory, for both model files."""
    seconds = {name: load_truth(truth_path(paths[name]))["duration"] for name in paths}
    half_hour = seconds["half-hour"]
    with tempfile.TemporaryDirectory(prefix="kws-bench-") as tmp:
        onnx_model = Path(tmp) / "model.onnx"
        subprocess.run(
            [sys.executable, "-m", "kws_ghost", "export", str(stream_model), "-o", str(onnx_model)],
            check=True,
            capture_output=True,
        )
        models = {"checkpoint": stream_model, "onnx": onnx_model}
        alone = {
            kind: min(detection_seconds(m, paths["half-hour"], "segments") for _ in range(2))
            for kind, m in models.items()
        }
        window = detection_seconds(window_model, paths["half-hour"], "window")
        commands: dict = {}
        for kind, model in models.items():
            runs = {}
            for name in ("minute", "half-hour", "hour"):
                run = min(
                    (run_command(paths[name], model) for _ in range(2)),
                    key=lambda r: r["wall_seconds"],
                )
                runs[name] = {**run, "rtf": round(run["wall_seconds"] / seconds[name], 5)}
            runs["memory_ratio_30_to_1_min"] = round(
                runs["half-hour"]["peak_rss_mb"] / runs["minute"]["peak_rss_mb"], 3
            )
            runs["memory_ratio_60_to_30_min"] = round(
                runs["hour"]["peak_rss_mb"] / runs["half-hour"]["peak_rss_mb"], 3
            )
            commands[kind] = runs
    return {
        "half_hour_seconds": half_hour,
        "detection_alone_seconds": {k: round(v, 3) for k, v in alone.items()},
        "detection_alone_rtf": {k: round(v / half_hour, 6) for k, v in alone.items()},
        "window_detector_seconds": round(window, 3),
        "window_detector_rtf": round(window / half_hour, 6),
        "speedup_over_window_detector": {k: round(window / v, 2) for k, v in alone.items()},
        "command": commands,
    }


def summary(results: list[dict]) -> dict:
    def mean_sd(values: list[float]) -> dict:
        values = [v for v in values if v is not None]
        if not values:
            return {"mean": None}
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"mean": round(statistics.mean(values), 4), "sd": round(sd, 4), "n": len(values)}

    return {
        "hit_rate_at_10_fa_per_hour": mean_sd([r["hit_rate_at_10_fa_per_hour"] for r in results]),
        "fa_per_hour_at_hit_rate": {
            str(h): mean_sd([r["fa_per_hour_at_hit_rate"][str(h)] for r in results])
            for h in HIT_RATES
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stream-models", nargs="+", type=Path, required=True)
    parser.add_argument("--window-models", nargs="*", type=Path, default=[])
    parser.add_argument("--data", type=Path, default=Path("data/real-dev"))
    parser.add_argument("--work", type=Path, default=Path("data/bench-stream"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/stream.json"))
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument(
        "--speed-only", action="store_true", help="rerun the speed part only, into --out's file"
    )
    args = parser.parse_args()
    keywords = load_model(args.stream_models[0]).keyword_labels
    scan_corpus(args.data)
    paths = recordings(args.data, args.work, keywords)
    if args.speed_only:
        result = json.loads(args.out.read_text())
        result["speed"] = speed(args.stream_models[0], args.window_models[0], paths)
        write_json(args.out, result)
        print(json.dumps(result["speed"], indent=1))
        return
    stream = [quality(m, paths, "segments") for m in args.stream_models]
    window = [quality(m, paths, "window") for m in args.window_models]
    clip_streamed = [quality(m, paths, "segments", force=True) for m in args.window_models]
    result = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "recordings": {name: load_truth(truth_path(p))["duration"] for name, p in paths.items()},
        "thresholds": list(DET_THRESHOLDS),
        "stream": {"models": stream, "summary": summary(stream)},
        "window": {"models": window, "summary": summary(window)} if window else None,
        "clip_models_streamed": {"models": clip_streamed, "summary": summary(clip_streamed)}
        if window
        else None,
        "health": [health(m, paths["hour"]) for m in args.stream_models],
    }
    if window:
        ratios = {}
        for h in HIT_RATES:
            new = result["stream"]["summary"]["fa_per_hour_at_hit_rate"][str(h)]["mean"]
            old = result["window"]["summary"]["fa_per_hour_at_hit_rate"][str(h)]["mean"]
            ratios[str(h)] = round(new / old, 3) if new is not None and old else None
        result["fa_ratio_stream_to_window_at_equal_hit_rate"] = ratios
    if not args.skip_speed and args.window_models:
        result["speed"] = speed(args.stream_models[0], args.window_models[0], paths)
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("stream", "window")}, indent=1))
    print(
        json.dumps(
            {
                "stream": result["stream"]["summary"],
                "window": result["window"]["summary"] if window else None,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
