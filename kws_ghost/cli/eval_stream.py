"""``kws-ghost make-stream`` and ``kws-ghost eval-stream``: detection quality on recordings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from kws_ghost.cli.options import (
    detector_config,
    detector_options,
    json_option,
    model_option,
    threads_option,
)


@click.command("make-stream")
@click.option("--data", required=True, type=click.Path(), help="Speech Commands-layout folder.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False),
    help="WAV to write; the truth goes beside it as .json.",
)
@click.option("--keywords", help="Comma-separated keywords (default: those of --model).")
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False),
    help="Take the keywords from this model (default: runs/latest/best.pt).",
)
@click.option(
    "--duration", type=click.FloatRange(5), default=60.0, show_default=True, help="Seconds."
)
@click.option("--split", default="test", show_default=True, help="Clips from this split.")
@click.option(
    "--distractors",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Fraction of words that are not keywords (1: a negatives-only recording).",
)
@click.option(
    "--every-keyword",
    is_flag=True,
    help="Each keyword clip of the split once, however long that takes (ignores --duration).",
)
@click.option("--noise-volume", type=click.FloatRange(0), default=0.05, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@threads_option
@json_option
def make_stream(
    data: str,
    out: str,
    keywords: Optional[str],
    model_path: Optional[str],
    duration: float,
    split: str,
    distractors: float,
    every_keyword: bool,
    noise_volume: float,
    seed: int,
    threads: Optional[int],
    as_json: bool,
) -> None:
    """Build a test recording: keywords at known times, other words and noise between them."""
    from kws_ghost.threads import configure_threads

    configure_threads(threads, "stream")
    from kws_ghost.recordings import build_recording, check_recording_output, truth_path

    check_recording_output(out)
    if keywords:
        words = [k.strip() for k in keywords.split(",") if k.strip()]
    else:
        from kws_ghost.checkpoint import find_default_model
        from kws_ghost.runtime import load_model

        words = load_model(find_default_model(model_path)).labels
    record = build_recording(
        data,
        out,
        words,
        duration=duration,
        split=split,
        distractor_ratio=distractors,
        noise_volume=noise_volume,
        seed=seed,
        every_keyword=every_keyword,
    )
    if as_json:
        from kws_ghost.cli import echo_json

        echo_json({**record, "truth": str(truth_path(out))})
    else:
        click.echo(
            f"{out}: {record['duration']:.0f} s, {len(record['events'])} keywords, "
            f"{len(record['distractors'])} other words; truth in {truth_path(out)}"
        )


@click.command("eval-stream")
@click.argument("recording", type=click.Path(dir_okay=False))
@click.option(
    "--truth", type=click.Path(dir_okay=False), help="Truth JSON (default: the recording's .json)."
)
@click.option(
    "--negatives",
    type=click.Path(dir_okay=False),
    help="A negatives-only recording (make-stream --distractors 1) that counts the false "
    "alarms per hour; default: the false alarms of RECORDING itself.",
)
@model_option
@detector_options
@click.option(
    "--scorer",
    type=click.Choice(["auto", "stream", "segments", "window"]),
    default="auto",
    show_default=True,
    help="As for detect (auto: segments for streaming models, window for clip-trained ones).",
)
@click.option(
    "--target-fa-per-hour",
    type=click.FloatRange(0, min_open=True),
    default=10.0,
    show_default=True,
    help="Report the hit rate at this false-alarm rate.",
)
@click.option("--plot", type=click.Path(dir_okay=False), help="Save the DET curve as a PNG.")
@threads_option
@json_option
def eval_stream(
    recording: str,
    truth: Optional[str],
    negatives: Optional[str],
    model_path: Optional[str],
    scorer: str,
    target_fa_per_hour: float,
    plot: Optional[str],
    threads: Optional[int],
    as_json: bool,
    **options: Any,
) -> None:
    """Hit rate, false alarms per hour and DET curve of a model on a test RECORDING."""
    from kws_ghost.checkpoint import find_default_model
    from kws_ghost.det import evaluate_recording, plot_det
    from kws_ghost.fileio import check_png_output
    from kws_ghost.recordings import load_truth, truth_path
    from kws_ghost.runtime import load_model
    from kws_ghost.scorers import choose_scorer
    from kws_ghost.threads import configure_threads

    config = detector_config(options)  # usage errors before any work
    if plot:
        check_png_output(plot)
    record = load_truth(truth or truth_path(recording))
    negative = (negatives, load_truth(truth_path(negatives))) if negatives else None
    runtime = load_model(find_default_model(model_path), configure_threads(threads, "stream"))
    scorer = choose_scorer(runtime, scorer, live=False)
    result = evaluate_recording(
        runtime,
        recording,
        record,
        config,
        negative,
        scorer,
        target_fa_per_hour,
    )
    if plot:
        plot_det(result, plot)
        result["plot"] = plot
    if as_json:
        from kws_ghost.cli import echo_json

        echo_json(result)
        return
    source = Path(negatives).name if negatives else Path(recording).name
    click.echo(
        f"{recording}: threshold {result['threshold']:.3g}: hit rate {result['hit_rate']:.3f} "
        f"({result['hits']}/{result['keywords_in_recording']}), {result['false_alarms']} false "
        f"alarms in {source} = {result['false_alarms_per_hour']:.1f} per hour"
    )
    at_target = result["threshold_at_target"]
    click.echo(
        f"hit rate at {target_fa_per_hour:g} false alarms per hour: "
        f"{result['hit_rate_at_target']:.3f}"
        + (f" (threshold {at_target:.4g})" if at_target is not None else " (never that quiet)")
    )
    if result["false_alarm_words"]:  # which words to expect false triggers on
        described = ", ".join(
            f"{w['source'] or w['word'] or 'noise'} as {w['fired']} x{w['count']}"
            for w in result["false_alarm_words"][:5]
        )
        click.echo(f"false alarms by the word under them: {described}")
    click.echo(f"{'threshold':>9} {'hit rate':>9} {'FA/hour':>9}")
    for point in result["det"][::3]:
        click.echo(
            f"{point['threshold']:>9.4g} {point['hit_rate']:>9.3f} "
            f"{point['false_alarms_per_hour']:>9.1f}"
        )
    if plot:
        click.echo(f"DET curve: {plot}")
