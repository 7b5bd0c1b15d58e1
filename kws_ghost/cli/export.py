"""``kws-ghost export``: a checkpoint as ONNX streaming and whole-clip models for devices."""

from __future__ import annotations

from typing import Any, Optional

import click

from kws_ghost.cli.options import json_option


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=True))
@click.option(
    "--format",
    "export_format",
    type=click.Choice(["onnx"]),
    default="onnx",
    show_default=True,
    help="Model format.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(),
    help="Step model file (default: CHECKPOINT with .onnx); the clip model goes beside it as "
    "NAME.clip.onnx.",
)
@click.option("--int8", is_flag=True, help="Quantise weights to int8 (dynamic quantisation).")
@click.option(
    "--fold/--no-fold",
    default=None,
    help="Fold linear ghost operations into the weights: a smaller, equivalent plain GRU/LSTM. "
    "Default: fold when the cheap operation has no activation.",
)
@click.option(
    "--window-frames",
    type=click.IntRange(1),
    help="Frames per clip for the whole-clip model (default: the front-end's clip length).",
)
@click.option(
    "--step-frames",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Frames per call of the step model (1: frames [B, F]; K > 1: frames [B, K, F]).",
)
@json_option
def export(
    checkpoint: str,
    export_format: str,
    out: Optional[str],
    int8: bool,
    fold: Optional[bool],
    window_frames: Optional[int],
    step_frames: int,
    as_json: bool,
) -> None:
    """Export CHECKPOINT as ONNX: a streaming step model and a whole-clip model.

    \b
    The step model takes `frames` [batch, features] (raw front-end features) and `state`
    [layers, batch, size] (zeros at the start of a stream) and returns per-frame `logits`
    and `new_state`. The clip model takes `features` [batch, window frames, features] and
    returns clip `logits`. Labels, front-end settings, normalisation, pooling and the state
    layout are stored in both files' metadata. Needs `pip install kws-ghost[export]`.
    """
    from pathlib import Path

    from kws_ghost import export as exporter
    from kws_ghost.fileio import refuse_overwriting_inputs

    # the files the exporter will write (step model, and the clip model beside it), checked
    # against the input before any work: `export m.pt -o m.pt` must not replace the checkpoint
    target = Path(out) if out is not None else Path(checkpoint).with_suffix(".onnx")
    outputs = [target]
    clip_path_for = getattr(exporter, "clip_path_for", None)
    if clip_path_for is not None:
        outputs.append(clip_path_for(target))
    refuse_overwriting_inputs(outputs, [checkpoint])
    result = exporter.export_checkpoint(
        checkpoint,
        out,
        fold=fold,
        int8=int8,
        window_frames=window_frames,
        step_frames=step_frames,
    )
    if as_json:
        from kws_ghost.cli import echo_json

        echo_json(result)
        return
    click.echo(format_summary(result))


def format_summary(result: dict[str, Any]) -> str:
    sizes = result["sizes"]
    kind = "int8" if result["int8"] else "fp32"
    step_frames = result["step_frames"]
    per_call = "1 frame" if step_frames == 1 else f"{step_frames} frames"
    lines = [
        f"step model: {result['step_model']} ({per_call} per call, "
        f"{sizes[f'step_{kind}_bytes'] / 1024:.1f} KB {kind})",
        f"clip model: {result['clip_model']} ({result['window_frames']} frames, "
        f"{sizes[f'clip_{kind}_bytes'] / 1024:.1f} KB {kind})",
    ]
    if result["folded"]:
        saved = 1 - result["params"] / result["source_params"]
        saved_macs = 1 - result["macs_per_frame"] / result["source_macs_per_frame"]
        lines.append(
            f"folded {result['source_model']} -> {result['model']}: "
            f"{result['source_params']:,} -> {result['params']:,} parameters (-{saved:.1%}), "
            f"{result['source_macs_per_frame']:,} -> {result['macs_per_frame']:,} MACs/frame "
            f"(-{saved_macs:.1%})"
        )
    else:
        lines.append(f"model: {result['model']}, {result['params']:,} parameters")
    if result["int8"]:
        lines.append(
            f"int8: step {sizes['step_fp32_bytes'] / 1024:.1f} -> "
            f"{sizes['step_int8_bytes'] / 1024:.1f} KB, clip {sizes['clip_fp32_bytes'] / 1024:.1f}"
            f" -> {sizes['clip_int8_bytes'] / 1024:.1f} KB"
        )
    layers, _, size = result["state_shape"]
    lines.append(f"state: [{layers}, batch, {size}] float32, zeros at the start of a stream")
    lines.append(f"labels: {', '.join(result['labels'])}")
    return "\n".join(lines)
