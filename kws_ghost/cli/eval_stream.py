"""``kws-ghost make-stream`` and ``kws-ghost eval-stream``: detection quality on a recording."""

from __future__ import annotations

from typing import Any, Optional

import click

from kws_ghost.cli.options import detector_options, json_option


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
    help="Fraction of words that are not keywords.",
)
@click.option("--noise-volume", type=click.FloatRange(0), default=0.05, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@json_option
def make_stream(
    data: str,
    out: str,
    keywords: Optional[str],
    model_path: Optional[str],
    duration: float,
    split: str,
    distractors: float,
    noise_volume: float,
    seed: int,
    as_json: bool,
) -> None:
    """Build a test recording: keywords at known times, other words and noise between them."""
    from kws_ghost.stream_eval import build_recording, truth_path

    if keywords:
        words = [k.strip() for k in keywords.split(",") if k.strip()]
    else:
        from kws_ghost.checkpoint import find_default_model, load_checkpoint

        words = load_checkpoint(find_default_model(model_path)).labels
    record = build_recording(
        data, out, words, duration, split, distractors, noise_volume=noise_volume, seed=seed
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
    "--model",
    "model_path",
    type=click.Path(dir_okay=False),
    help="Checkpoint or .onnx (default: $KWS_GHOST_MODEL or runs/latest/best.pt).",
)
@detector_options
@click.option("--plot", type=click.Path(dir_okay=False), help="Save the DET curve as a PNG.")
@json_option
def eval_stream(
    recording: str,
    truth: Optional[str],
    model_path: Optional[str],
    plot: Optional[str],
    as_json: bool,
    **decision: Any,
) -> None:
    """Hit rate, false alarms per hour and DET curve of a model on a test RECORDING."""
    from kws_ghost.checkpoint import find_default_model
    from kws_ghost.config import DetectorConfig
    from kws_ghost.stream import load_scorer
    from kws_ghost.stream_eval import evaluate_recording, load_truth, plot_det, truth_path

    record = load_truth(truth or truth_path(recording))
    scorer = load_scorer(find_default_model(model_path))
    result = evaluate_recording(scorer, recording, record, DetectorConfig(**decision))
    if plot:
        plot_det(result, plot)
        result["plot"] = plot
    if as_json:
        from kws_ghost.cli import echo_json

        echo_json(result)
        return
    click.echo(
        f"{recording}: threshold {result['threshold']}: hit rate {result['hit_rate']:.3f} "
        f"({result['hits']}/{result['keywords_in_recording']}), "
        f"{result['false_alarms']} false alarms = {result['false_alarms_per_hour']:.1f} per hour"
    )
    click.echo(f"{'threshold':>9} {'hit rate':>9} {'FA/hour':>9}")
    for point in result["det"][::4]:
        click.echo(
            f"{point['threshold']:>9.2f} {point['hit_rate']:>9.3f} "
            f"{point['false_alarms_per_hour']:>9.1f}"
        )
    if plot:
        click.echo(f"DET curve: {plot}")
