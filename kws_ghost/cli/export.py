"""``kws-ghost export``: a checkpoint as the ONNX streaming step model devices run."""

from __future__ import annotations

from typing import Any, Optional

import click

from kws_ghost.cli.options import json_option, threads_option


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=True))
@click.option(
    "--format",
    "export_format",
    type=click.Choice(["onnx", "c"]),
    default="onnx",
    show_default=True,
    help="onnx: the step model as one ONNX file. c: a folder of C99 sources (front-end, step, "
    "decoder, an example kws-detect and its Makefile) with no dependency beyond libm.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(),
    help="ONNX file (default: CHECKPOINT with .onnx); with --format c, a folder (default: "
    "CHECKPOINT without its suffix, plus -c).",
)
@click.option("--int8", is_flag=True, help="Quantise weights to int8 (dynamic quantisation).")
@click.option(
    "--fold/--no-fold",
    default=None,
    help="Fold linear ghost operations into the weights: a smaller, equivalent plain GRU/LSTM. "
    "Default: fold when the cheap operation has no activation.",
)
@threads_option
@json_option
def export(
    checkpoint: str,
    export_format: str,
    out: Optional[str],
    int8: bool,
    fold: Optional[bool],
    threads: Optional[int],
    as_json: bool,
) -> None:
    """Export CHECKPOINT as an ONNX streaming step model.

    \b
    One file: inputs `frames` [batch, features] (raw front-end features) and `state`
    [layers, batch, size] (zeros at the start of a stream), outputs per-frame `logits`
    [batch, classes] and `new_state`. Labels, front-end settings, the state layout and the
    validation DET (for thresholds by false alarms per hour) are in its metadata. The export
    is checked against PyTorch with onnxruntime before it is written. Clip scores are the step
    run frame by frame from the zero state (kws_ghost.runtime). Needs
    `pip install kws-ghost[export]`.
    """
    from kws_ghost.threads import configure_threads

    configure_threads(threads, "stream")
    from pathlib import Path

    from kws_ghost import export as exporter
    from kws_ghost.fileio import refuse_overwriting_inputs

    if export_format == "c":
        from kws_ghost.export_c import export_c

        if fold is False:
            raise click.UsageError("--no-fold goes with --format onnx (C folds where it can)")
        folder = Path(out) if out is not None else Path(checkpoint).with_suffix("")
        folder = folder if out is not None else folder.with_name(folder.name + "-c")
        refuse_overwriting_inputs([folder], [checkpoint])
        result = export_c(checkpoint, folder, int8=int8)
    else:
        # checked before any work: `export m.pt -o m.pt` must not replace the checkpoint
        target = Path(out) if out is not None else Path(checkpoint).with_suffix(".onnx")
        refuse_overwriting_inputs([target], [checkpoint])
        result = exporter.export_checkpoint(checkpoint, target, fold=fold, int8=int8)
    if as_json:
        from kws_ghost.cli import echo_json

        echo_json(result)
        return
    click.echo(format_c_summary(result) if export_format == "c" else format_summary(result))


def format_c_summary(result: dict[str, Any]) -> str:
    kind = "int8 weights" if result["int8"] else "fp32 weights"
    return "\n".join(
        [
            f"C sources: {result['out']} ({result['model']}, {kind}: "
            f"{result['weight_bytes'] / 1024:.1f} KB{', folded' if result['folded'] else ''})",
            f"per frame: {result['macs_per_frame']:,} multiply-adds; state "
            f"{result['state_bytes']} bytes",
            f"build: make -C {result['out']}  (then: arecord -f S16_LE -r 16000 -c 1 | "
            f"{result['out']}/kws-detect)",
        ]
    )


def format_summary(result: dict[str, Any]) -> str:
    sizes = result["sizes"]
    kind = "int8" if result["int8"] else "fp32"
    lines = [f"step model: {result['step_model']} ({sizes[f'{kind}_bytes'] / 1024:.1f} KB {kind})"]
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
            f"int8: {sizes['fp32_bytes'] / 1024:.1f} -> {sizes['int8_bytes'] / 1024:.1f} KB"
        )
    checks = result["checks"]
    if result["int8"]:
        lines.append(
            f"checked the int8 file against PyTorch with onnxruntime: logits differ by up to "
            f"{checks['int8_difference']:.2g} (relative), posteriors by up to "
            f"{checks['int8_posterior_difference']:.2g} (the fp32 graph: "
            f"{checks['fp32_difference']:.1g})"
        )
    else:
        lines.append(
            "checked against PyTorch with onnxruntime: max difference "
            f"{checks['fp32_difference']:.1g}"
        )
    layers, _, size = result["state_shape"]
    lines.append(f"state: [{layers}, batch, {size}] float32, zeros at the start of a stream")
    lines.append(f"labels: {', '.join(result['labels'])}")
    return "\n".join(lines)
