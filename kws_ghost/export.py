"""Export to ONNX for devices: the model's streaming step, traced from PyTorch.

One graph, the per-frame step a device runs forever: ``frames`` [batch, F] (raw front-end
features) and ``state`` [L, batch, S] (zeros to start a stream) in, ``logits`` [batch, C] and
``new_state`` [L, batch, S] out, batch dynamic. ``torch.onnx.export`` (TorchScript exporter,
opset 17) writes it from ``step_module``, whose recurrence is ``kws_ghost.layers.cell_step``, the
code the model trains and streams with. Before the trace, in PyTorch: linear ghost operations are
folded (``fold_model``), the normalisation is absorbed into layer 0's input weights (int8 graphs
keep it as two nodes: raw MFCC c0 spans hundreds and would share one int8 scale with the small
coefficients), ghost layers become ``PackedLayer`` (one matmul over [x ; y]) and plain or folded
float layers torch's fused kernel (ONNX GRU/LSTM nodes). Then the metadata goes in (every value a
JSON string), ``--int8`` is onnxruntime's dynamic quantisation, and onnxruntime runs the graph
against PyTorch before the file is written. The training scan is never exported (traced, it
unrolls into a graph without recurrence); clip scores are the step in the runtime's loop.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from kws_ghost import __version__
from kws_ghost.config import FrontendConfig, ModelConfig, to_dict
from kws_ghost.errors import KwsError
from kws_ghost.profile import PLAIN_ARCH, describe
from kws_ghost.runtime import INSTALL_HINT, ONNX_FORMAT, ONNX_FORMAT_VERSION, is_kws_onnx

if TYPE_CHECKING:
    from kws_ghost.models import KeywordModel

OPSET = 17
CHECK_TOLERANCE = 1e-4  # the self-check: |onnxruntime - PyTorch| <= this x max(1, |logits|)
INT8_POSTERIOR_TOLERANCE = 0.25  # int8: no posterior moves more than this on the check frames


def can_fold(config: ModelConfig) -> bool:
    """True when every layer's ghost part is linear (or absent), so a plain cell is equivalent."""
    return (
        not config.arch.startswith("ghost-")
        or config.cheap_activation == "none"
        or config.intrinsic == config.hidden
    )


def folded_config(config: ModelConfig) -> ModelConfig:
    """The plain GRU/LSTM of width m equivalent to ``config`` (``config`` itself when plain)."""
    if not config.arch.startswith("ghost-"):
        return config
    if not can_fold(config):
        raise KwsError(
            f"cannot fold {config.arch}: its cheap operation ends in a {config.cheap_activation} "
            "activation, so the ghost states are not a linear function of the intrinsic ones; "
            "only models built with --cheap-activation none fold (without --fold, export keeps "
            "the ghost layers)"
        )
    return dataclasses.replace(
        config, arch=PLAIN_ARCH[config.arch], hidden=config.intrinsic, ratio=1.0
    )


def fold_model(model: KeywordModel) -> KeywordModel:
    """The equivalent plain model of width m (a copy when ``model`` is already plain): the layers'
    recurrences, the next layers' inputs and the head absorb the linear ghost parts
    (``GhostRNN.fold_into`` and ``kws_ghost.layers.absorb_ghost``)."""
    import torch

    from kws_ghost.layers import absorb_ghost
    from kws_ghost.models import build_model

    if not model.config.arch.startswith("ghost-"):
        return copy.deepcopy(model)
    target = build_model(folded_config(model.config))
    with torch.no_grad():
        target.feature_mean.copy_(model.feature_mean)
        target.feature_std.copy_(model.feature_std)
        if model.input_bn is not None:
            target.input_bn.load_state_dict(model.input_bn.state_dict())
        head = absorb_ghost(model.head.weight, model.head.bias, model.rnn.fold_into(target.rnn))
        target.head.weight.copy_(head[0])
        target.head.bias.copy_(head[1])
    return target.train(model.training)


def step_module(model: KeywordModel, normalize_in_graph: bool = False) -> Any:
    """What the ONNX file computes, as a PyTorch module: (frames [B, F], state [L, B, S]) ->
    (logits [B, C], new state), ``model.step`` with ``PackedLayer`` layers, the normalisation
    absorbed unless ``normalize_in_graph``. The state goes in and out by a Reshape and one
    Split / Concat (a Gather and an Unsqueeze per layer cost more at batch 1)."""
    import torch

    from kws_ghost.cell import cat, linear
    from kws_ghost.layers import PackedLayer, absorb_normalization

    layers, size, first = model.config.layers, model.rnn.state_size, model.rnn.layers[0]
    # plain (or folded) float models: torch's fused kernel, one ONNX GRU/LSTM node per layer,
    # run time-major on [1, B, .] tensors as those nodes read and write them
    fused = not normalize_in_graph and first.ghost is None

    class Rows(torch.autograd.Function):
        """[L n, ...] -> L x [n, ...] as one ONNX Split (``chunk`` exports shape arithmetic)."""

        @staticmethod
        def forward(ctx: Any, rows: Any) -> Any:  # type: ignore[override]
            return rows.chunk(layers)

        @staticmethod
        def symbolic(g: Any, rows: Any) -> Any:
            return g.op("Split", rows, axis_i=0, outputs=layers)

    class StepModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            mean, std = (t.detach().clone() for t in model.input_affine())
            w_ih, b_ih = first.weight_ih.detach(), first.bias_ih.detach()
            if not normalize_in_graph:
                w_ih, b_ih = absorb_normalization(w_ih, b_ih, mean, std)
            rest = [PackedLayer(layer, fused=fused) for layer in model.rnn.layers[1:]]
            self.layers = torch.nn.ModuleList([PackedLayer(first, w_ih, b_ih, fused), *rest])
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)
            self.register_buffer("head_weight", model.head.weight.detach().clone())
            self.register_buffer("head_bias", model.head.bias.detach().clone())

        def forward(self, frames: Any, state: Any) -> tuple[Any, Any]:
            x = (frames - self.mean) / self.std if normalize_in_graph else frames
            x, rows = ([x[None]], state) if fused else ([x], state.reshape(-1, size))
            new_states = []
            for layer, layer_state in zip(self.layers, Rows.apply(rows)):
                x, layer_state = layer.step(x, layer_state)
                new_states.append(layer_state)
            new_state = torch.cat(new_states)
            if fused:  # [1, B, m] outputs, and the state already [L, B, S]
                return linear(x[0].squeeze(0), self.head_weight, self.head_bias), new_state
            logits = linear(cat(x), self.head_weight, self.head_bias)
            return logits, new_state.reshape(layers, -1, size)

    return StepModule().eval()


def _trace(module: Any, config: ModelConfig, state_size: int) -> bytes:
    import torch

    batch = 3  # not 1, so that nothing is specialised to the traced batch
    args = (torch.zeros(batch, config.input_dim), torch.zeros(config.layers, batch, state_size))
    batch_axes = {"frames": 0, "state": 1, "logits": 0, "new_state": 1}
    options = {
        "input_names": ["frames", "state"],
        "output_names": ["logits", "new_state"],
        "dynamic_axes": {name: {axis: "batch"} for name, axis in batch_axes.items()},
        "opset_version": OPSET,
        "dynamo": False,  # the TorchScript exporter: 0.1-0.3 s here, the dynamo one seconds
    }
    buffer = io.BytesIO()
    from kws_ghost.cell import onnx_spelling

    with warnings.catch_warnings(), torch.no_grad(), onnx_spelling():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notices
        torch.onnx.export(module, args, buffer, **options)
    return buffer.getvalue()


def _require_onnx() -> Any:
    try:
        import onnx
        import onnxruntime  # noqa: F401  (the self-check runs the graph)
    except ImportError as exc:
        raise KwsError(f"ONNX export needs onnx and onnxruntime: {INSTALL_HINT}") from exc
    return onnx


def _quantize(onnx: Any, proto: Any) -> Any:
    """Dynamic int8 quantisation of every MatMul weight (activations quantised per call).

    Per-tensor scales: per-channel ones did not help (each gate column mixes input and recurrent
    weights anyway). reduce_range (7-bit weights) avoids the u8 x s8 saturation of AVX2 without
    VNNI, which otherwise cost most of the accuracy in our tests.
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    options = {"per_channel": False, "reduce_range": True, "weight_type": QuantType.QInt8}
    with tempfile.TemporaryDirectory(prefix="kws-ghost-int8-") as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, str(source))
        root, level = logging.getLogger(), logging.getLogger().level
        root.setLevel(logging.ERROR)  # the quantiser logs advice about pre-processing
        try:
            quantize_dynamic(source, target, op_types_to_quantize=["MatMul"], **options)
        finally:
            root.setLevel(level)
        return onnx.load(str(target))


def check_against_torch(
    payload: bytes, model: KeywordModel, frames: int = 8
) -> tuple[float, float]:
    """How far onnxruntime running ``payload`` is from ``model.step`` in PyTorch, over two
    streams of ``frames`` random frames at the scale of real features, state carried: (the
    largest difference of logits, relative, and of state; the largest difference of posteriors).
    A KwsError when the graph gives non-finite values."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(frames, 2, model.config.input_dim, generator=generator)
    mean, std = model.input_affine()
    raw = raw * std.abs() + mean
    state = model.initial_state(2)
    onnx_state, worst, posterior = state.numpy(), 0.0, 0.0
    with torch.inference_mode():
        for frame in raw:
            expected, state = model.step(frame, state)
            logits, onnx_state = session.run(None, {"frames": frame.numpy(), "state": onnx_state})
            if not (np.isfinite(logits).all() and np.isfinite(onnx_state).all()):
                raise KwsError("export check failed: the ONNX graph gives non-finite values")
            scale = max(1.0, float(expected.abs().max()))
            worst = max(worst, float(np.abs(logits - expected.numpy()).max()) / scale)
            worst = max(worst, float(np.abs(onnx_state - state.numpy()).max()))
            shift = torch.softmax(torch.from_numpy(logits), -1) - torch.softmax(expected, -1)
            posterior = max(posterior, float(shift.abs().max()))
    return worst, posterior


def export_model(
    model: KeywordModel,
    frontend_config: FrontendConfig,
    labels: list[str],
    out: Union[str, os.PathLike[str]],
    *,
    fold: Optional[bool] = None,
    int8: bool = False,
    detection: Optional[dict[str, Any]] = None,
    train_config: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Write ``model``'s step as ONNX to ``out`` (atomically), checked against PyTorch first.

    ``fold``: None folds when the model allows it, True insists (KwsError if it can't), False
    keeps the ghost operations. ``detection`` (the validation DET) and ``train_config`` go into
    the metadata. Returns what was written, with fp32 (and int8) sizes.
    """
    from kws_ghost.fileio import atomic_path, check_output_parent

    onnx = _require_onnx()
    path = Path(out)
    if path.is_dir():  # fail before any work (atomic_path checks the rest when writing)
        raise KwsError(f"{path} is a folder; give --out a file name such as model.onnx")
    check_output_parent(path)
    if path.exists() and not is_kws_onnx(path):  # replace only what export wrote
        raise KwsError(f"{path} exists and is not a kws-ghost ONNX model: choose another --out")
    source = model.config
    if len(labels) != source.num_classes:
        raise KwsError(f"{len(labels)} labels for a model with {source.num_classes} outputs")
    fold = bool(can_fold(source) if fold is None else fold) and source.arch.startswith("ghost-")
    exported = fold_model(model) if fold else model
    config, size = exported.config, exported.rnn.state_size
    proto = onnx.load_from_string(_trace(step_module(exported, int8), config, size))
    layout = ["h"] if config.cell == "gru" else ["h", "c"]
    metadata: dict[str, Any] = {
        "format": ONNX_FORMAT,
        "format_version": ONNX_FORMAT_VERSION,
        "labels": list(labels),
        "frontend_config": to_dict(frontend_config),
        "model_config": to_dict(config),  # the exported (possibly folded) network
        "source_model_config": to_dict(source),
        "state": {"layers": config.layers, "size": size, "cell": config.cell, "layout": layout}
        | {"shape": ["layers", "batch", "size"], "initial": 0.0},
        "params": exported.num_params(),
        "folded": fold,
        "int8": int8,
        "package_version": __version__,
        "detection": detection,  # the validation DET: thresholds by false alarms per hour
        "train_config": train_config or {},
    }
    payload = _with_metadata(proto, metadata, labels)
    sizes = {"fp32_bytes": len(payload)}
    difference, _ = check_against_torch(payload, model)
    if difference > CHECK_TOLERANCE:
        raise KwsError(
            f"export check failed: onnxruntime and PyTorch differ by {difference:.2g} (relative)"
            f" for {path.name}; nothing was written (a kws-ghost bug: please report it)"
        )
    checked = {"fp32_difference": difference}
    if int8:
        payload = _with_metadata(_quantize(onnx, proto), metadata, labels)
        sizes["int8_bytes"] = len(payload)
        # int8 differs by design: the file written is checked itself, by its posteriors
        checked["int8_difference"], checked["int8_posterior_difference"] = check_against_torch(
            payload, model
        )
        if checked["int8_posterior_difference"] > INT8_POSTERIOR_TOLERANCE:
            raise KwsError(
                f"export check failed: the int8 graph's posteriors differ from PyTorch's by "
                f"{checked['int8_posterior_difference']:.2g} (over {INT8_POSTERIOR_TOLERANCE}); "
                "nothing was written: export without --int8"
            )
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return {
        "format": "onnx",
        "step_model": str(path),
        "int8": int8,
        "folded": fold,
        "model": describe(config),
        "source_model": describe(source),
        "params": exported.num_params(),
        "source_params": model.num_params(),
        "macs_per_frame": exported.macs_per_frame(),
        "source_macs_per_frame": model.macs_per_frame(),
        "labels": list(labels),
        "state_shape": [config.layers, "batch", size],
        "sizes": sizes,
        "file_bytes": len(payload),
        "check_difference": checked.get("int8_difference", difference),  # of the file written
        "checks": checked,
    }


def _with_metadata(proto: Any, metadata: dict[str, Any], labels: list[str]) -> bytes:
    """``proto`` serialised with our metadata only (the quantiser adds a key of its own)."""
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value, default=_plain)
    proto.producer_name, proto.producer_version = "kws-ghost", __version__
    proto.doc_string = f"kws-ghost streaming step model, labels {labels}; metadata values: JSON"
    return proto.SerializeToString()


def _plain(value: Any) -> Any:
    """JSON for numpy values and tensors a checkpoint's extra data may hold."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def export_checkpoint(
    checkpoint: Union[str, os.PathLike[str]],
    out: Optional[Union[str, os.PathLike[str]]] = None,
    **options: Any,
) -> dict[str, Any]:
    """``export_model`` for a checkpoint file (``out`` defaults to it with ``.onnx``), with the
    checkpoint's validation DET and training config in the metadata."""
    from kws_ghost.checkpoint import load_checkpoint

    _require_onnx()  # before loading torch and the checkpoint: fail fast when missing
    loaded = load_checkpoint(checkpoint)  # one-line KwsErrors for anything but a checkpoint
    target = Path(out) if out is not None else Path(checkpoint).with_suffix(".onnx")
    extra = loaded.extra
    result = export_model(
        loaded.build_model(),
        loaded.frontend_config,
        loaded.labels,
        target,
        detection=extra.get("detection"),
        train_config=extra.get("train_config"),
        **options,
    )
    result["checkpoint"] = str(checkpoint)
    return result
