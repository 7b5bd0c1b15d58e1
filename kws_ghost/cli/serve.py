"""``kws-ghost serve``: a Wyoming wake-word server (Home Assistant and other Wyoming clients)."""

from __future__ import annotations

from typing import Any, Optional

import click

from kws_ghost.cli.options import (
    detector_config,
    detector_options,
    json_option,
    model_option,
    threads_option,
)


@click.command()
@click.option(
    "--uri",
    default="tcp://127.0.0.1:10400",
    show_default=True,
    help="Where to listen: tcp://HOST:PORT (PORT 0: any free port; HOST 0.0.0.0: every "
    "interface) or unix://PATH.",
)
@model_option
@detector_options
@threads_option
@json_option
def serve(
    uri: str, model_path: Optional[str], threads: Optional[int], as_json: bool, **options: Any
) -> None:
    """Serve keyword detection over the Wyoming protocol until SIGTERM or Ctrl-C.

    \b
      kws-ghost serve --uri tcp://0.0.0.0:10400 --model kws.onnx
    In Home Assistant: Settings > Devices & services > Add integration > Wyoming Protocol,
    host and port of this server; its keywords are listed as wake words.

    Each connection is its own stream (audio-start, audio-chunk..., audio-stop) in the format
    its audio-start gives; every keyword event `detect` would give on that audio is sent as a
    detection when decided, and not-detected ends a stream without one. One model serves all
    connections. Prints where it listens on stderr (--json: one JSON object on stdout).
    """
    import asyncio
    import json

    from kws_ghost.checkpoint import find_default_model
    from kws_ghost.errors import KwsError
    from kws_ghost.runtime import load_model
    from kws_ghost.serve import serve as run_server
    from kws_ghost.stream import resolve_threshold
    from kws_ghost.threads import configure_threads

    try:
        import wyoming  # noqa: F401
    except ImportError as exc:
        raise KwsError("serve needs the wyoming package: pip install 'kws-ghost[serve]'") from exc
    config = detector_config(options)
    runtime = load_model(find_default_model(model_path), configure_threads(threads, "stream"))
    threshold, _ = resolve_threshold(runtime.detection, config)
    keywords = config.keywords or runtime.keyword_labels

    def ready(address: str) -> None:
        if as_json:
            record = {"uri": address, "model": str(runtime.path), "keywords": keywords}
            click.echo(json.dumps({**record, "threshold": threshold}))
        click.echo(
            f"note: serving {', '.join(keywords)} from {runtime.path} on {address} "
            f"(threshold {threshold:.3g})",
            err=True,
        )

    asyncio.run(run_server(uri, runtime, config, ready))
