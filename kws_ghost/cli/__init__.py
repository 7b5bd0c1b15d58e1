"""The ``kws-ghost`` command line: a thin Click layer that parses options and calls the package.

Each command lives in its own module under ``kws_ghost.cli`` and imports torch (and other heavy
libraries) inside the command, so ``kws-ghost --help`` stays fast. Errors: a ``KwsError`` becomes
one line on stderr, ``error: ...``, and exit status 1; a bad option or argument becomes one such
line too (exit status 2, as Click gives it); anything unexpected is reported the same way (set
``KWS_GHOST_DEBUG=1`` for the traceback). Every message on stderr starts with ``error: ``,
``warning: `` or ``note: ``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any, Optional

import click

from kws_ghost import __version__
from kws_ghost.errors import KwsError

# command name -> "module:function"; a command shows up once its module exists.
COMMANDS = {
    "download": "kws_ghost.cli.download:download",
    "synth": "kws_ghost.cli.synth:synth",
    "data-stats": "kws_ghost.cli.data_stats:data_stats",
    "features": "kws_ghost.cli.features:features",
    "train": "kws_ghost.cli.train:train",
    "eval": "kws_ghost.cli.evaluate:evaluate",
    "detect": "kws_ghost.cli.detect:detect",
    "eval-stream": "kws_ghost.cli.eval_stream:eval_stream",
    "make-stream": "kws_ghost.cli.eval_stream:make_stream",
    "profile": "kws_ghost.cli.profile:profile",
    "export": "kws_ghost.cli.export:export",
    "analyze": "kws_ghost.cli.analyze:analyze",
    "serve": "kws_ghost.cli.serve:serve",
}


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


# Click >= 8.2 signals plain `kws-ghost` (help text, exit 2) with this usage error: leave it be.
_NO_ARGS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _one_line(text: Any) -> str:
    lines = [part.strip() for part in str(text).splitlines() if part.strip()]
    if any(line.startswith("Original Traceback") for line in lines):
        # an error re-raised from a worker process (DataLoader): its own last line is the error
        last = lines[-1]
        return last.split(": ", 1)[1] if last.startswith("kws_ghost.errors.KwsError: ") else last
    return " ".join(lines)


# package -> the extra that installs it (setup.cfg)
EXTRAS = {
    "torch": "train",
    "sklearn": "eval",
    "onnx": "export",
    "onnxscript": "export",
    "onnxruntime": "export",
    "matplotlib": "plot",
    "espeakng_loader": "synth",
    "librosa": "dev",
    "wyoming": "serve",
}
# import name -> the name pip installs it by, where they differ
DISTRIBUTIONS = {"sklearn": "scikit-learn", "espeakng_loader": "espeakng-loader"}


def _usage_error(ctx: click.Context, exc: click.UsageError) -> None:
    """Click's "Usage: ... Error: ..." block as one line, ``error: ...``; exits."""
    where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
    click.echo(f"error: {_one_line(exc.format_message())} (see '{where} --help')", err=True)
    ctx.exit(exc.exit_code)


class KwsGroup(click.Group):
    """Loads commands lazily and turns errors into one line on stderr."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _NO_ARGS_HELP:
            raise  # plain `kws-ghost`: the help text, as Click shows it
        except click.UsageError as exc:
            _usage_error(ctx, exc)
            raise  # not reached: ctx.exit raises

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n, t in COMMANDS.items() if _module_exists(t.split(":")[0]))

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        target = COMMANDS.get(cmd_name)
        if target is None or not _module_exists(target.split(":")[0]):
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _NO_ARGS_HELP:
            raise
        except click.UsageError as exc:
            _usage_error(ctx, exc)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KwsError as exc:
            click.echo(f"error: {_one_line(exc)}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)

        except BrokenPipeError:
            # The reader went away (e.g. `| head`): stop quietly.
            sys.stderr.close()
            ctx.exit(0)
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            if os.environ.get("KWS_GHOST_DEBUG"):
                raise
            package = (getattr(exc, "name", None) or "").split(".")[0]
            if isinstance(exc, ModuleNotFoundError) and package in EXTRAS:
                click.echo(
                    f"error: this needs the {DISTRIBUTIONS.get(package, package)} package, "
                    f"which is not installed: pip install 'kws-ghost[{EXTRAS[package]}]'",
                    err=True,
                )
                ctx.exit(1)
            click.echo(
                f"error: {type(exc).__name__}: {_one_line(exc)} "
                "(set KWS_GHOST_DEBUG=1 for a traceback)",
                err=True,
            )
            ctx.exit(1)


@click.group(cls=KwsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kws-ghost")
def main() -> None:
    """Keyword spotting with GhostRNN: data, training, evaluation, detection and export.

    \b
    Typical session:
      kws-ghost download                      # Google Speech Commands v0.02 into data/
      kws-ghost train --data data/speech_commands_v0.02
      kws-ghost eval runs/latest/best.pt --data data/speech_commands_v0.02
      kws-ghost detect recording.wav          # uses runs/latest/best.pt
    """


def echo_json(obj: Any) -> None:
    """Print one JSON object on one line (machine-readable output for ``--json``)."""
    import json

    click.echo(json.dumps(obj))
