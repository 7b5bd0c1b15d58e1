"""``kws-ghost download``: fetch Google Speech Commands (or an archive in its layout) into data/."""

from __future__ import annotations

from typing import Optional

import click

from kws_ghost.cli.options import json_option, threads_option


@click.command()
@click.option(
    "--version",
    "dataset_version",
    type=click.Choice(["v2", "v1"]),
    default="v2",
    show_default=True,
    help="Speech Commands release: v2 (v0.02, 35 words) or v1 (v0.01, 30 words).",
)
@click.option(
    "--test-set", is_flag=True, help="The separate test-set archive of that release instead."
)
@click.option(
    "--dest",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder to create. [default: data/speech_commands_v0.02, data/speech_commands_v0.01, "
    "with a _test suffix for --test-set; data/<archive name> for another --url]",
)
@click.option(
    "--url",
    default=None,
    help="Another source: http(s)://, file:// or a local path (a mirror, or your own archive).",
)
@click.option(
    "--sha256",
    default=None,
    help="Expected sha256 of the archive (the official v1/v2 archives have theirs built in).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the server before giving up.",
)
@threads_option
@json_option
def download(
    dataset_version: str,
    test_set: bool,
    dest: Optional[str],
    url: Optional[str],
    sha256: Optional[str],
    timeout: float,
    threads: Optional[int],
    as_json: bool,
) -> None:
    """Download, verify and unpack a Speech Commands archive (resumable, atomic).

    \b
    A partial download (DEST.part) is resumed; the sha256 is checked before anything is unpacked;
    the folder appears whole or not at all, and running the command again once it is complete
    does nothing.
    """
    from kws_ghost.threads import configure_threads

    configure_threads(threads, "stream")
    import os

    from kws_ghost import download as dl
    from kws_ghost.progress import progress_enabled

    official = dl.known_archive(dataset_version, test_set)
    source = url or official.url
    if dest is None:
        folder = official.folder if url is None else dl.archive_stem(source)
        dest = os.path.join("data", folder)
    expected = dl.normalize_sha256(sha256) if sha256 else dl.known_sha256(source)
    result = dl.download_dataset(
        source, dest, sha256=expected, timeout=timeout, progress=progress_enabled(None, as_json)
    )
    if as_json:
        from kws_ghost.cli import echo_json

        echo_json(result.to_dict())
        return
    if result.already_present:
        click.echo(
            f"{result.dest} is already complete ({result.files:,} files from {result.url}"
            f"{', ' + result.completed_at if result.completed_at else ''}); nothing to do"
        )
        return
    how = "resumed and " if result.resumed else ""
    click.echo(
        f"{how}unpacked {result.files:,} files ({result.unpacked_bytes:,} bytes) from "
        f"{result.url} ({result.bytes:,} bytes) into {result.dest}"
    )
    if result.verified:
        click.echo(f"sha256 verified: {result.sha256}")
    else:
        click.echo(
            f"sha256 NOT verified (no checksum known for this archive): {result.sha256}; "
            f"pass --sha256 to check it"
        )
