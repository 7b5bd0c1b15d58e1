"""``kws-ghost export MODEL --format c``: the model as a dependency-free C99 runtime.

The folder holds the generic runtime (``kws_ghost/c_runtime``: the streaming front-end, the
recurrent step for every architecture, the event decoder of ``detect``, an example ``main.c``
and a ``Makefile``) and the model's own tables, written here: ``kws_model.h`` (sizes, the
decision settings, the memory a caller must give and the cost per frame) and ``kws_model.c``
(weights as ``const`` arrays, fp32 or int8 with one scale per output row; normalisation;
labels; the front-end's window, FFT twiddles, mel filters and DCT; the validation DET as a
threshold table). Ghost layers whose cheap operation has no activation are folded first (a
plain GRU/LSTM of width m, as ONNX export does). A folder is replaced only when this command
wrote it (it holds ``.kws-ghost-c``).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np

from kws_ghost.config import DetectorConfig, FrontendConfig
from kws_ghost.errors import KwsError

C_MARKER = ".kws-ghost-c"
SOURCES = ("kws.h", "kws_step.c", "kws_frontend.c", "kws_decoder.c", "main.c")
RUNTIME_DIR = Path(__file__).with_name("c_runtime")
ACTIVATION_CODES = {"none": 0, "tanh": 1, "relu": 2, "sigmoid": 3}
MAKEFILE = """# make: builds kws-detect with the system C compiler (C99, libm only)
CC ?= cc
CFLAGS ?= -O3
SOURCES = main.c kws_step.c kws_frontend.c kws_decoder.c kws_model.c

kws-detect: $(SOURCES) kws.h kws_model.h
\t$(CC) $(CFLAGS) -std=c99 -o $@ $(SOURCES) -lm

clean:
\trm -f kws-detect
"""


def _floats(values: Any, per_line: int = 8) -> str:
    flat = np.asarray(values, dtype=np.float32).reshape(-1)
    if flat.size == 0:
        return "0.0f"
    items = [_literal(float(v)) for v in flat]
    return ",\n    ".join(
        ", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)
    )


def _literal(value: float) -> str:
    """A C float literal that reads back as the same float32 (9 significant digits)."""
    text = f"{value:.9g}"
    return text + ("f" if any(c in text for c in ".e") else ".0f")


def _ints(values: Any, per_line: int = 20) -> str:
    items = [str(int(v)) for v in np.asarray(values).reshape(-1)] or ["0"]
    return ",\n    ".join(
        ", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)
    )


class _Tables:
    """The arrays of kws_model.c, each declared once."""

    def __init__(self, int8: bool) -> None:
        self.int8 = int8
        self.parts: list[str] = []
        self.weight_bytes = 0

    def floats(self, name: str, values: Any, weights: bool = True) -> str:
        """A float array; ``weights``: counted as the model's (not the front-end's tables)."""
        flat = np.asarray(values, dtype=np.float32).reshape(-1)
        self.parts.append(f"const float {name}[{max(1, flat.size)}] = {{\n    {_floats(flat)}\n}};")
        self.weight_bytes += 4 * flat.size if weights else 0
        return name

    def matrix(self, name: str, weight: np.ndarray) -> tuple[str, str]:
        """W [rows, inputs] stored transposed [inputs][rows]; int8: (values, per-row scales)."""
        transposed = np.ascontiguousarray(weight.T)
        if not self.int8:
            return self.floats(name, transposed), "NULL"
        scale = np.abs(weight).max(axis=1) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        quantized = np.clip(np.round(transposed / scale[None, :]), -127, 127).astype(np.int8)
        body = _ints(quantized)
        self.parts.append(f"const kws_weight {name}[{quantized.size}] = {{\n    {body}\n}};")
        self.weight_bytes += quantized.size
        return name, self.floats(f"{name}_scale", scale)


def export_c(
    checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], int8: bool = False
) -> dict[str, Any]:
    """Write the C runtime of ``checkpoint`` into the folder ``out``; what was written."""
    import torch

    from kws_ghost.checkpoint import load_checkpoint
    from kws_ghost.export import can_fold, fold_model
    from kws_ghost.fileio import check_replaceable, make_work_folder, replace_folder
    from kws_ghost.stream import resolve_threshold

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise KwsError(f"-o {out} is a file; give a folder for the C sources")
    check_replaceable(out, C_MARKER, "-o")  # refuses a folder kws-ghost did not write
    loaded = load_checkpoint(checkpoint)
    model = loaded.build_model()
    source = model.config
    if not source.streams:
        raise KwsError(
            f"{checkpoint} was trained on isolated clips, so its state is not meant to be "
            "carried; the C runtime streams: train with --objective stream"
        )
    folded = source.arch.startswith("ghost-") and bool(can_fold(source))
    model = (fold_model(model) if folded else model).eval()
    config, fe = model.config, loaded.frontend_config
    rnn, labels = model.rnn, loaded.labels
    detection = loaded.extra.get("detection")
    threshold, _ = resolve_threshold(detection, DetectorConfig())
    tables = _Tables(int8)
    with torch.no_grad():
        layer_entries = [_layer_tables(tables, i, layer) for i, layer in enumerate(rnn.layers)]
        mean, std = model.input_affine()
        tables.floats("kws_mean", mean.numpy())
        tables.floats("kws_inv_std", 1.0 / std.numpy())
        head, head_scale = tables.matrix("kws_head_w", model.head.weight.numpy())
        tables.floats("kws_head_b", model.head.bias.numpy())
    first = rnn.layers[0]
    m, hidden, gates = first.intrinsic_size, first.hidden_size, 3 if config.cell == "gru" else 4
    cheap = 0 if first.ghost is None else (1 if config.cheap_op == "linear" else 2)
    macs = model.macs_per_frame() + model.head_macs()
    header = _header(fe, config, labels, detection, threshold, int8, m, hidden, gates, cheap)
    header = header.replace("@MACS@", str(macs))
    weights_c = _model_source(tables, layer_entries, labels, head, head_scale, fe, detection)
    weights_c = weights_c.replace("@WEIGHT_BYTES@", str(tables.weight_bytes))
    work = make_work_folder(out, "c", C_MARKER)
    try:
        for name in SOURCES:
            shutil.copyfile(RUNTIME_DIR / name, work / name)
        (work / "kws_model.h").write_text(
            header.replace("@WEIGHT_BYTES@", str(tables.weight_bytes))
        )
        (work / "kws_model.c").write_text(weights_c)
        (work / "Makefile").write_text(MAKEFILE)
        replace_folder(work, out, C_MARKER)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    state_floats = config.layers * (hidden + (m if config.cell == "lstm" else 0))
    return {
        "format": "c",
        "out": str(out),
        "int8": int8,
        "folded": folded,
        "model": f"{config.arch} H{config.hidden} x{config.layers}",
        "labels": labels,
        "threshold": threshold,
        "weight_bytes": tables.weight_bytes,
        "state_bytes": 4 * state_floats,
        "macs_per_frame": macs,
        "files": sorted([*SOURCES, "kws_model.h", "kws_model.c", "Makefile"]),
    }


def _layer_tables(tables: _Tables, index: int, layer: Any) -> str:
    w_ih, s_ih = tables.matrix(f"kws_w_ih_{index}", layer.weight_ih.numpy())
    w_hh, s_hh = tables.matrix(f"kws_w_hh_{index}", layer.weight_hh.numpy())
    b_ih = tables.floats(f"kws_b_ih_{index}", layer.bias_ih.numpy())
    b_hh = tables.floats(f"kws_b_hh_{index}", layer.bias_hh.numpy())
    ghost_w, s_ghost, ghost_scale, ghost_b = "NULL", "NULL", "NULL", "NULL"
    if layer.ghost is not None:
        ghost_b = tables.floats(f"kws_ghost_b_{index}", layer.ghost.bias.numpy())
        if hasattr(layer.ghost, "scale"):  # elementwise: g_j = act(a_j h_(j mod m) + c_j)
            ghost_scale = tables.floats(f"kws_ghost_scale_{index}", layer.ghost.scale.numpy())
        else:
            ghost_w, s_ghost = tables.matrix(f"kws_ghost_w_{index}", layer.ghost.weight.numpy())
    inputs = layer.weight_ih.shape[1]
    return (
        f"    {{{inputs}, {w_ih}, {s_ih}, {w_hh}, {s_hh}, {b_ih}, {b_hh}, {ghost_w}, {s_ghost}, "
        f"{ghost_scale}, {ghost_b}}}"
    )


def _header(
    fe: FrontendConfig,
    config: Any,
    labels: list[str],
    detection: Optional[dict[str, Any]],
    threshold: float,
    int8: bool,
    m: int,
    hidden: int,
    gates: int,
    cheap: int,
) -> str:
    decoder = DetectorConfig()
    frame = fe.hop_length / fe.sample_rate
    smooth = max(1, int(round(decoder.smoothing / frame)))
    patience = max(1, int(round(decoder.patience / frame)))
    refractory = int(round(decoder.refractory / frame))
    lookback, max_run = int(round(2.5 / frame)), int(round(1.0 / frame))
    ghost = hidden - m
    rows = gates * m
    lstm = config.cell == "lstm"
    state = config.layers * (hidden + (m if lstm else 0))
    scratch = max(2 * rows + fe.num_features, fe.n_fft)  # the step's, or the FFT's
    det = (detection or {}).get("det") or []
    lines = [
        "/* The model's sizes and settings, written by `kws-ghost export --format c`. */",
        "#ifndef KWS_MODEL_H",
        "#define KWS_MODEL_H",
        f"/* {config.arch} H{config.hidden} x{config.layers}, {len(labels)} classes"
        + (", int8 weights with per-row scales" if int8 else ", fp32 weights")
        + " */",
        "#define KWS_MACS_PER_FRAME @MACS@ /* multiply-adds of one step (layers and head) */",
        "#define KWS_WEIGHT_BYTES @WEIGHT_BYTES@",
        f"#define KWS_N_FEATURES {fe.num_features}",
        f"#define KWS_N_CLASSES {len(labels)}",
        f"#define KWS_LAYERS {config.layers}",
        f"#define KWS_HIDDEN {hidden} /* a layer's output y = [h ; g] */",
        f"#define KWS_M {m} /* intrinsic state h */",
        f"#define KWS_GHOST {ghost} /* ghost state g = act(A h + b) */",
        f"#define KWS_LSTM {int(lstm)}",
        f"#define KWS_GATES {gates}",
        f"#define KWS_CHEAP {cheap} /* 0 none, 1 linear, 2 elementwise */",
        f"#define KWS_ACT {ACTIVATION_CODES[config.cheap_activation] if cheap else 0}",
        f"#define KWS_INT8 {int(int8)}",
        "/* The memory a caller gives: the state (carried from frame to frame) and scratch. */",
        f"#define KWS_STATE_FLOATS {state} /* {4 * state} bytes */",
        f"#define KWS_SCRATCH_FLOATS {scratch} /* {4 * scratch} bytes */",
        "/* front-end (kws_ghost/frontend.py) */",
        f"#define KWS_SAMPLE_RATE {fe.sample_rate}",
        f"#define KWS_N_FFT {fe.n_fft}",
        f"#define KWS_HOP {fe.hop_length}",
        f"#define KWS_N_MELS {fe.n_mels}",
        f"#define KWS_N_MFCC {fe.n_mfcc}",
        f"#define KWS_MFCC {int(fe.kind == 'mfcc')}",
        f"#define KWS_LOG_FLOOR {fe.log_floor:.9g}f",
        "/* decoder (detect's defaults), in frames */",
        f"#define KWS_SMOOTH_FRAMES {smooth}",
        f"#define KWS_PATIENCE_FRAMES {patience}",
        f"#define KWS_REFRACTORY_FRAMES {refractory}",
        f"#define KWS_LOOKBACK {lookback}",
        f"#define KWS_MAX_RUN {max_run}",
        f"#define KWS_LEVEL_FRAMES {lookback + max_run + 1}",
        f"#define KWS_N_THRESHOLDS {len(det)}",
        f"#define KWS_DEFAULT_THRESHOLD {threshold!r} /* the model's own operating point */",
        "#endif",
        "",
    ]
    if fe.n_fft & (fe.n_fft - 1):
        raise KwsError(f"the C front-end needs a power-of-two n_fft, not {fe.n_fft}")
    return "\n".join(lines)


def _model_source(
    tables: _Tables,
    layers: list[str],
    labels: list[str],
    head: str,
    head_scale: str,
    fe: FrontendConfig,
    detection: Optional[dict[str, Any]],
) -> str:
    from kws_ghost.frontend import dct_matrix, frame_window, mel_filterbank

    bank = mel_filterbank(fe.sample_rate, fe.n_fft, fe.n_mels, fe.fmin, fe.fmax)
    starts, counts, weights = [], [], []
    for row in bank:
        nonzero = np.flatnonzero(row)
        lo, hi = (int(nonzero[0]), int(nonzero[-1]) + 1) if len(nonzero) else (0, 0)
        starts.append(lo)
        counts.append(hi - lo)
        weights.extend(row[lo:hi])
    tables.floats("kws_window", frame_window(fe.win_length, fe.n_fft), weights=False)
    angles = 2.0 * math.pi * np.arange(fe.n_fft // 2) / fe.n_fft
    tables.floats("kws_fft_cos", np.cos(angles), weights=False)
    tables.floats("kws_fft_sin", np.sin(angles), weights=False)
    tables.floats("kws_mel_weights", weights, weights=False)
    tables.floats("kws_dct", dct_matrix(fe.n_mels, fe.n_mfcc), weights=False)
    det = (detection or {}).get("det") or [{"threshold": 0.5, "false_alarms_per_hour": 0.0}]
    names = ", ".join('"' + label.replace('"', "") + '"' for label in labels)
    keyword = [int(label not in ("_silence_", "_unknown_")) for label in labels]
    thresholds = ", ".join(repr(float(p["threshold"])) for p in det)
    rates = ", ".join(repr(float(p["false_alarms_per_hour"])) for p in det)
    return "\n".join(
        [
            "/* The model's tables, written by `kws-ghost export --format c` (do not edit). */",
            "#include <stddef.h>",
            '#include "kws.h"',
            "",
            *tables.parts,
            "const kws_layer kws_layers[KWS_LAYERS] = {\n" + ",\n".join(layers) + "\n};",
            f"const float *const kws_head_s = {head_scale};",
            f"const char *const kws_labels[KWS_N_CLASSES] = {{{names}}};",
            f"const int kws_is_keyword[KWS_N_CLASSES] = {{{_ints(keyword)}}};",
            f"const short kws_mel_start[KWS_N_MELS] = {{{_ints(starts)}}};",
            f"const short kws_mel_count[KWS_N_MELS] = {{{_ints(counts)}}};",
            f"const double kws_det_threshold[] = {{{thresholds}}};",
            f"const double kws_det_fa_per_hour[] = {{{rates}}};",
            "",
        ]
    )
