"""``kws-ghost synth``: a Speech Commands-style keyword corpus spoken by synthetic voices."""

from __future__ import annotations

from typing import Optional

import click

from kws_ghost.cli.options import json_option, threads_option


@click.command()
@click.option(
    "--words",
    required=True,
    help="Comma-separated keywords, e.g. yes,no,up,down ('_' joins a phrase: hey_ghost).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="Folder to create (WORD/SPEAKER_nohash_N.wav, split lists, _background_noise_).",
)
@click.option(
    "--voices",
    type=click.IntRange(1),
    default=40,
    show_default=True,
    help="Synthetic speakers (accent, variant, pitch, rate, vocal-tract scale).",
)
@click.option(
    "--clips-per-voice",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Repetitions of each word per speaker (slightly varied rate and pitch).",
)
@click.option(
    "--other-words",
    type=click.IntRange(0),
    default=24,
    show_default=True,
    help="Other common words each voice also says once, in their own folders: the _unknown_ "
    "speech a keyword model learns to stay quiet on (0: none).",
)
@click.option(
    "--seed", type=click.IntRange(0), default=0, show_default=True, help="Same seed, same bytes."
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.1,
    show_default=True,
    help="Fraction of speakers in validation_list.txt.",
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.1,
    show_default=True,
    help="Fraction of speakers in testing_list.txt.",
)
@click.option(
    "--workers",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Processes; 0 = one per core for 1000 clips or more, else in-line. Same bytes either way.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace --out if an earlier synth wrote it (it holds .kws-ghost-synth); any other "
    "folder that is not empty is refused.",
)
@threads_option
@json_option
def synth(
    words: str,
    out: str,
    voices: int,
    clips_per_voice: int,
    other_words: int,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    workers: int,
    force: bool,
    threads: Optional[int],
    as_json: bool,
) -> None:
    """Synthesise WORDS with espeak-ng voices into a corpus in the Speech Commands layout.

    Each clip is 1 s of 16 kHz mono int16 audio with the word at a random offset and gain over a
    low noise floor; validation and test lists hold whole speakers. Every voice also says
    --other-words common words (none of WORDS), so the model learns what is not a keyword;
    `kws-ghost train --data OUT` then trains WORDS as its keywords. Needs no network.
    """
    from kws_ghost.threads import configure_threads

    configure_threads(threads, "stream")
    from kws_ghost.progress import progress_enabled
    from kws_ghost.synth import parse_words, synthesize_corpus

    summary = synthesize_corpus(
        parse_words(words),
        out,
        voices=voices,
        clips_per_voice=clips_per_voice,
        other_words=other_words,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        force=force,
        workers=workers,
        progress=progress_enabled(None, as_json),
    )
    if as_json:
        from kws_ghost.cli import echo_json

        echo_json(summary.to_dict())
        return
    splits = ", ".join(
        f"{name} {summary.splits[name]} clips / {summary.split_speakers[name]} speakers"
        for name in ("training", "validation", "testing")
    )
    others = (
        f", and {min(other_words, len(summary.other_words))} of {len(summary.other_words)} "
        "other words each"
        if summary.other_words
        else ""
    )
    click.echo(
        f"wrote {summary.clips} clips ({len(summary.words)} words x {summary.speakers} speakers x "
        f"{summary.clips_per_voice}{others}) to {summary.out} in {summary.seconds:.1f} s; {splits}"
    )
