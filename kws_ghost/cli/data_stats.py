"""``kws-ghost data-stats``: what a corpus holds, per class and split, for a task."""

from __future__ import annotations

from typing import Optional

import click

from kws_ghost.cli.options import json_option, threads_option
from kws_ghost.config import TASKS


@click.command("data-stats")
@click.argument("data", type=click.Path())
@click.option(
    "--task",
    type=click.Choice(TASKS),
    help="gsc12 (default), gsc35 or custom (with --keywords).",
)
@click.option("--keywords", help="Comma-separated keywords for a custom task.")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed that picks the _unknown_ clips, as in training.",
)
@threads_option
@json_option
def data_stats(
    data: str,
    task: Optional[str],
    keywords: Optional[str],
    seed: int,
    threads: Optional[int],
    as_json: bool,
) -> None:
    """Counts per class and split of corpus DATA, as `train` and `eval` would build them."""
    from kws_ghost.threads import configure_threads

    configure_threads(threads, "stream")
    from kws_ghost.data import SPLITS, build_items, count_labels, resolve_labels, scan_corpus

    notes: list[str] = []
    corpus = scan_corpus(data, warn=notes.append)
    keyword_list = [k.strip() for k in keywords.split(",") if k.strip()] if keywords else []
    labels = resolve_labels(
        corpus, task or ("custom" if keyword_list else "gsc12"), keyword_list, warn=notes.append
    )
    counts = {
        split: count_labels(build_items(corpus, labels, split, seed), labels) for split in SPLITS
    }
    summary = {
        "data": str(corpus.root),
        "labels": labels,
        "words": {word: len(clips) for word, clips in corpus.words.items()},
        "speakers": len(
            {
                p.split("/")[-1].split("_nohash_")[0]
                for clips in corpus.words.values()
                for p in clips
            }
        ),
        "noise_files": [p.name for p in corpus.noise_files],
        "silence_clips": len(corpus.silence_clips),
        "splits": counts,
        "notes": notes,
    }
    if as_json:
        from kws_ghost.cli import echo_json

        echo_json(summary)
        return
    for note in notes:
        click.echo(note, err=True)
    click.echo(
        f"{corpus.root}: {sum(summary['words'].values())} clips of "
        f"{len(corpus.words)} words from {summary['speakers']} speakers; "
        f"{len(corpus.noise_files)} noise recordings, "
        f"{len(corpus.silence_clips)} silence clips"
    )
    width = max(12, max(len(label) for label in labels))
    click.echo(f"{'class':<{width}} " + " ".join(f"{s:>10}" for s in SPLITS))
    for label in labels:
        click.echo(f"{label:<{width}} " + " ".join(f"{counts[s][label]:>10}" for s in SPLITS))
    click.echo(f"{'total':<{width}} " + " ".join(f"{sum(counts[s].values()):>10}" for s in SPLITS))
