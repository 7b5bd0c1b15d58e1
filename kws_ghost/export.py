"""Export to ONNX for devices: folded ghost operations, a streaming step model, a whole-clip model.

Folding. When a ghost layer's cheap operation is linear with no activation, g = A h + c, so every
weight that reads the layer's output y = [h ; g] can absorb it: the layer's own recurrence
(U_h + U_g A, b + U_g c), the next layer's input weights and the head (pooling is linear). The
result is a plain GRU/LSTM of width m that computes exactly the same function with fewer
parameters and MACs. ``fold_model`` does this in PyTorch; export folds by default when it can.

Export writes two ONNX files (opset 17, standard operators only) with the same weights and
metadata:

* the *step* model ``FILE``: ``frames`` [B, F] and ``state`` [L, B, S] -> per-frame ``logits``
  [B, C] and ``new_state`` [L, B, S]; exported with K > 1 frames per call, frames [B, K, F] and
  logits [B, K, C];
* the *clip* model ``FILE`` with ``.onnx`` replaced by ``.clip.onnx``: ``features`` [B, T, F]
  with T the window's frame count -> ``logits`` [B, C], starting from the zero state.

The graphs are written directly with ``onnx.helper`` from the layer equations (those of
``GhostRNNLayer.step``), not traced: that keeps the per-frame node count, and so the latency at
batch 1, small, exports in milliseconds and depends on neither of torch's exporters (the
TorchScript one is deprecated; the dynamo one takes seconds even for a toy graph). Plain and
folded layers become ONNX GRU/LSTM nodes; ghost layers with an activation become about a dozen
elementwise nodes per step, unrolled over K in the step model and inside one ``Scan`` over T in
the clip model. Feature normalisation is folded into layer 0's input weights (int8 graphs keep it
as two nodes), so a runtime feeds raw front-end features. Every metadata value is a JSON string
(see ``METADATA_KEYS``).

``onnx`` and ``onnxruntime`` are an optional extra (``pip install kws-ghost[export]``) and are
imported only when needed; torch is imported only to fold and export, so ``OnnxKeywordModel`` runs
where only numpy and onnxruntime are installed.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from kws_ghost import __version__
from kws_ghost.config import FrontendConfig, ModelConfig, from_dict, to_dict
from kws_ghost.errors import KwsError

if TYPE_CHECKING:
    from kws_ghost.models import KeywordModel

FORMAT = "kws-ghost-onnx"
FORMAT_VERSION = 1
OPSET = 17
IR_VERSION = 8  # the IR version that goes with opset 17: loads in onnxruntime >= 1.11
PLAIN_ARCH = {"ghost-gru": "gru", "gru": "gru", "ghost-lstm": "lstm", "lstm": "lstm"}
INSTALL_HINT = "pip install kws-ghost[export]"

METADATA_KEYS = (
    "format",  # "kws-ghost-onnx"
    "format_version",  # 1
    "role",  # "step" or "clip": which of the pair this file is
    "step_model",  # file name of the step model (same folder)
    "clip_model",  # file name of the clip model (same folder)
    "labels",  # class names, in logit order
    "frontend_config",  # FrontendConfig fields: how to compute the features
    "normalization",  # {"mean": [F], "std": [F], "in_graph": true}
    "pooling",  # "mean" or "last": how clip logits come from per-frame logits
    "window_frames",  # T of the clip model
    "step_frames",  # K of the step model
    "state",  # {"layers", "size", "cell", "layout", "shape", "initial"}
    "model_config",  # ModelConfig of the exported (possibly folded) network
    "source_model_config",  # ModelConfig of the checkpoint
    "folded",  # true when ghost operations were folded into the weights
    "int8",  # true when weights are int8 (dynamic quantisation)
    "package_version",
)


# --------------------------------------------------------------------------------------------
# Folding


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
    """The equivalent plain model of width m (a copy when ``model`` is already plain).

    Each ghost layer's output is y = [h ; A h + c]; every consumer of y (the layer's recurrence, the
    next layer's input projection, the head after linear pooling) computes W y + b =
    (W_h + W_g A) h + (b + W_g c), so those weights absorb (A, c) and the ghost part disappears.
    """
    import torch

    from kws_ghost.models import build_model

    config = model.config
    if not config.arch.startswith("ghost-"):
        return copy.deepcopy(model)
    target = build_model(folded_config(config))
    with torch.no_grad():
        target.feature_mean.copy_(model.feature_mean)
        target.feature_std.copy_(model.feature_std)
        previous: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (A, c) feeding this layer
        for source, dest in zip(model.rnn.layers, target.rnn.layers):
            w_ih, b_ih = _absorb(source.weight_ih, source.bias_ih, previous)
            w_hh, b_hh = source.folded_weights()
            dest.weight_ih.copy_(w_ih)
            dest.bias_ih.copy_(b_ih)
            dest.weight_hh.copy_(w_hh)
            dest.bias_hh.copy_(b_hh)
            previous = source.ghost_affine()
        w_head, b_head = _absorb(model.head.weight, model.head.bias, previous)
        target.head.weight.copy_(w_head)
        target.head.bias.copy_(b_head)
    return target.train(model.training)


def _absorb(weight: Any, bias: Any, affine: Optional[tuple[Any, Any]]) -> tuple[Any, Any]:
    """W [[h ; A h + c]] + b as (W_h + W_g A) h + (b + W_g c); unchanged when nothing feeds it."""
    if affine is None:
        return weight, bias
    ghost_w, ghost_b = affine
    m = ghost_w.shape[1]
    w_h, w_g = weight[:, :m], weight[:, m:]
    return w_h + w_g @ ghost_w, bias + w_g @ ghost_b


# --------------------------------------------------------------------------------------------
# Optional dependencies


def _require_onnx() -> tuple[Any, Any]:
    """(onnx, onnxruntime) for export, or a KwsError that says how to install them."""
    try:
        import onnx
    except ImportError as exc:
        raise KwsError(f"ONNX export needs the onnx package: {INSTALL_HINT}") from exc
    return onnx, _require_onnxruntime()


def _require_onnxruntime() -> Any:
    """onnxruntime (all that running an exported model needs), or a clear KwsError."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise KwsError(f"running ONNX models needs onnxruntime: {INSTALL_HINT}") from exc
    return onnxruntime


# --------------------------------------------------------------------------------------------
# Graph construction


@dataclasses.dataclass
class _LayerSpec:
    """One recurrent layer's weights (float32, torch.nn.GRU/LSTM layout) and the layouts the
    graphs use.

    MatMul graphs: gate columns (4m) GRU [r z | W_in x + b_in | U_hn y + b_hn], LSTM [i f g o].
    One MatMul of [x ; y] then gives every pre-activation; the GRU needs its n-gate's input and
    recurrent parts apart (r multiplies only the recurrent one), hence zero blocks, which
    ``blocks`` marks None so a file need not store them.
    """

    cell: str
    intrinsic: int
    hidden: int
    input_size: int
    w_ih: np.ndarray  # [G m, D]
    w_hh: np.ndarray  # [G m, H]
    b_ih: np.ndarray
    b_hh: np.ndarray
    ghost_kind: Optional[str] = None  # None, "linear" or "elementwise"
    ghost_arrays: tuple[np.ndarray, ...] = ()
    ghost_activation: str = "none"

    @property
    def state_size(self) -> int:
        return self.intrinsic * (2 if self.cell == "lstm" else 1)

    def blocks(self, part: str) -> list[Optional[np.ndarray]]:
        """Column blocks of W_x [D, 4m] (``part`` "x") or W_y [H, 4m] ("y"); None: zeros."""
        m, weight = self.intrinsic, self.w_ih if part == "x" else self.w_hh
        if self.cell == "lstm":
            return [weight.T.copy()]
        rz, n = weight[: 2 * m].T.copy(), weight[2 * m :].T.copy()
        return [rz, n, None] if part == "x" else [rz, None, n]

    def padded(self, part: str) -> np.ndarray:
        rows = self.input_size if part == "x" else self.hidden
        zeros = np.zeros((rows, self.intrinsic), np.float32)
        return np.concatenate([zeros if b is None else b for b in self.blocks(part)], 1)

    @property
    def bias(self) -> np.ndarray:
        """Bias of the MatMul layout."""
        if self.cell == "lstm":
            return self.b_ih + self.b_hh
        m = self.intrinsic
        rz = self.b_ih[: 2 * m] + self.b_hh[: 2 * m]
        return np.concatenate([rz, self.b_ih[2 * m :], self.b_hh[2 * m :]])

    def absorb_normalization(self, mean: np.ndarray, std: np.ndarray) -> None:
        """W (x - mean) / std + b = (W / std) x + (b - W mean / std): raw features in, and two
        nodes fewer per frame."""
        self.b_ih = (self.b_ih - self.w_ih @ (mean / std)).astype(np.float32)
        self.w_ih = (self.w_ih / std[None, :]).astype(np.float32)


def _numpy(tensor: Any) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.float32)


def _layer_spec(layer: Any) -> _LayerSpec:
    spec = _LayerSpec(
        layer.cell,
        layer.intrinsic_size,
        layer.hidden_size,
        layer.input_size,
        _numpy(layer.weight_ih),
        _numpy(layer.weight_hh),
        _numpy(layer.bias_ih),
        _numpy(layer.bias_hh),
    )
    ghost = layer.ghost
    if ghost is not None:
        spec.ghost_activation = ghost.activation
        if hasattr(ghost, "source"):
            spec.ghost_kind = "elementwise"
            spec.ghost_arrays = (
                ghost.source.detach().cpu().numpy().astype(np.int64),
                _numpy(ghost.scale),
                _numpy(ghost.bias),
            )
        else:
            weight, bias_g = ghost.affine()
            spec.ghost_kind = "linear"
            spec.ghost_arrays = (_numpy(weight).T.copy(), _numpy(bias_g))
    return spec


class _GraphBuilder:
    """Collects nodes and initializers with unique names."""

    def __init__(self, helper: Any, numpy_helper: Any) -> None:
        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0
        self._consts: dict[str, str] = {}
        self._local_consts: Optional[dict[str, str]] = None  # set while building a subgraph

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, key: str, value: Any, dtype: Any = np.float32) -> str:
        """An initializer, created once per ``key``."""
        if key not in self._consts:
            array = np.asarray(value, dtype=dtype)
            self.initializers.append(self.numpy_helper.from_array(array, key))
            self._consts[key] = key
        return self._consts[key]

    def ints(self, values: Union[int, list[int]]) -> str:
        """An int64 constant (split sizes, axes, indices). Inside a subgraph it is a local
        Constant node: shape inference cannot see outer initializers there, and without the
        split sizes it assumes an even Split, which made the int8 quantiser write wrong shapes."""
        if isinstance(values, int):
            key = f"i64_scalar_{values}"
        else:
            key = "i64_list_" + "_".join(str(v) for v in values)
        if self._local_consts is None:
            return self.const(key, values, np.int64)
        if key not in self._local_consts:
            tensor = self.numpy_helper.from_array(np.asarray(values, np.int64))
            self._local_consts[key] = self.op("Constant", [], value=tensor)
        return self._local_consts[key]

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs: Any) -> Any:
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, inputs, names, **attrs))
        return names[0] if outputs == 1 else names

    def concat(self, parts: list[str], axis: int) -> str:
        return parts[0] if len(parts) == 1 else self.op("Concat", parts, axis=axis)

    def zeros(self, like: str, width: int) -> str:
        """Zeros [B, width], B taken from ``like``'s first dimension."""
        batch = self.op("Shape", [like], start=0, end=1)
        shape = self.op("Concat", [batch, self.ints([width])], axis=0)
        zero = self.helper.make_tensor("zero", 1, [1], [0.0])  # 1: FLOAT
        return self.op("ConstantOfShape", [shape], value=zero)

    @contextlib.contextmanager
    def subgraph(self) -> Iterator[list[Any]]:
        """Nodes added inside go to a subgraph's node list (initializers stay outside, where the
        subgraph sees them by name)."""
        outer, self.nodes = self.nodes, []
        self._local_consts = {}
        try:
            yield self.nodes
        finally:
            self.nodes = outer
            self._local_consts = None


class _NetworkGraph:
    """Writes the network as ONNX nodes: the step and clip graphs, with GRU/LSTM nodes for plain
    layers and the layer equations for ghost ones.

    ``for_int8``: keep the normalisation as nodes and the gate matrices as plain initializers.
    Dynamic quantisation needs both: raw features (MFCC c0 spans hundreds) would share one int8
    scale with the small coefficients, and only MatMuls with an initializer weight are quantised.
    Otherwise the normalisation is folded into layer 0's input weights and the zero blocks of the
    GRU's gate matrices are built in the graph (onnxruntime folds them at load) instead of stored.
    """

    def __init__(self, builder: _GraphBuilder, model: KeywordModel, for_int8: bool) -> None:
        self.b = builder
        self.for_int8 = for_int8
        self.specs = [_layer_spec(layer) for layer in model.rnn.layers]
        self.head_w = _numpy(model.head.weight).T.copy()
        self.head_b = _numpy(model.head.bias)
        self.mean = _numpy(model.feature_mean)
        self.std = _numpy(model.feature_std)
        self.pooling = model.config.pooling
        if not for_int8:
            self.specs[0].absorb_normalization(self.mean, self.std)
        self._weights: dict[str, str] = {}

    @property
    def state_size(self) -> int:
        return self.specs[0].state_size

    def normalize(self, features: str) -> str:
        if not self.for_int8:
            return features  # folded into layer 0's input weights
        b = self.b
        centred = b.op("Sub", [features, b.const("feature_mean", self.mean)])
        return b.op("Div", [centred, b.const("feature_std", self.std)])

    def weight(self, index: int, part: str) -> str:
        """Gate matrix ``part`` ("x", "y" or "xy": the two stacked) of layer ``index``."""
        key = f"layer{index}_w_{part}"
        if key in self._weights:
            return self._weights[key]
        b, spec = self.b, self.specs[index]
        if self.for_int8:
            padded = [spec.padded(p) for p in ("x", "y") if p in part]
            name = b.const(key, np.concatenate(padded, 0))
        elif part == "xy":
            name = b.op("Concat", [self.weight(index, "x"), self.weight(index, "y")], axis=0)
        else:
            blocks = spec.blocks(part)
            rows = spec.input_size if part == "x" else spec.hidden
            zero = self.b.helper.make_tensor("zero", 1, [1], [0.0])  # 1: FLOAT
            names = [
                b.op("ConstantOfShape", [b.ints([rows, spec.intrinsic])], value=zero)
                if block is None
                else b.const(f"{key}_{j}", block)
                for j, block in enumerate(blocks)
            ]
            name = b.concat(names, 1)
        self._weights[key] = name
        return name

    def ghost(self, index: int, h: str) -> str:
        """g = act(A h + c) (linear) or act(a * h[source] + c) (element-wise)."""
        spec, b = self.specs[index], self.b
        if spec.ghost_kind == "linear":
            weight, bias = spec.ghost_arrays
            pre = b.op("MatMul", [h, b.const(f"layer{index}_ghost_weight", weight)])
            pre = b.op("Add", [pre, b.const(f"layer{index}_ghost_bias", bias)])
        else:
            source, scale, bias = spec.ghost_arrays
            source_name = b.const(f"layer{index}_ghost_source", source, np.int64)
            picked = b.op("Gather", [h, source_name], axis=1)
            picked = b.op("Mul", [picked, b.const(f"layer{index}_ghost_scale", scale)])
            pre = b.op("Add", [picked, b.const(f"layer{index}_ghost_bias", bias)])
        activation = spec.ghost_activation
        if activation == "none":
            return pre
        return b.op({"tanh": "Tanh", "relu": "Relu", "sigmoid": "Sigmoid"}[activation], [pre])

    def cell(
        self,
        index: int,
        x_parts: list[str],
        x_projected: Optional[str],
        h: str,
        c: Optional[str],
        g: Optional[str],
    ) -> tuple[str, Optional[str], Optional[str]]:
        """One step of layer ``index``: -> (h, c, g) of the new intrinsic, cell and ghost states.

        ``x_projected`` is this frame's W x + b when the input projection was hoisted out of the
        loop; otherwise ``x_parts`` (the layer input, possibly split as [h ; g]) is concatenated
        with the recurrent input [h ; g] and multiplied once.
        """
        spec, b = self.specs[index], self.b
        m = spec.intrinsic
        y_parts = [h]
        if spec.ghost_kind is not None:
            y_parts.append(g if g is not None else self.ghost(index, h))
        if x_projected is not None:
            recurrent = b.op("MatMul", [b.concat(y_parts, 1), self.weight(index, "y")])
            pre = b.op("Add", [x_projected, recurrent])
        else:
            pre = b.op("MatMul", [b.concat(x_parts + y_parts, 1), self.weight(index, "xy")])
            pre = b.op("Add", [pre, b.const(f"layer{index}_bias", spec.bias)])
        if spec.cell == "gru":
            rz_pre, x_n, h_n = b.op("Split", [pre, b.ints([2 * m, m, m])], 3, axis=1)
            r, z = b.op("Split", [b.op("Sigmoid", [rz_pre]), b.ints([m, m])], 2, axis=1)
            n = b.op("Tanh", [b.op("Add", [x_n, b.op("Mul", [r, h_n])])])
            h_new = b.op("Add", [n, b.op("Mul", [z, b.op("Sub", [h, n])])])  # lerp(n, h, z)
            c_new = None
        else:
            i, f, gg, o = b.op("Split", [pre, b.ints([m, m, m, m])], 4, axis=1)
            kept = b.op("Mul", [b.op("Sigmoid", [f]), c])
            written = b.op("Mul", [b.op("Sigmoid", [i]), b.op("Tanh", [gg])])
            c_new = b.op("Add", [kept, written])
            h_new = b.op("Mul", [b.op("Sigmoid", [o]), b.op("Tanh", [c_new])])
        g_new = self.ghost(index, h_new) if spec.ghost_kind is not None else None
        return h_new, c_new, g_new

    def run(self, features: str, frames: Optional[int], state: str) -> tuple[list[list[str]], str]:
        """Unroll from ``state`` [L, B, S] over ``features`` [B, T, F] (``frames`` = T) or one
        frame [B, F] (``frames`` None): -> (last layer's output parts per frame, new state)."""
        b = self.b
        normalized = self.normalize(features)
        h: list[str] = []
        c: list[Optional[str]] = []
        g: list[Optional[str]] = [None] * len(self.specs)
        for index, spec in enumerate(self.specs):
            layer_state = b.op("Gather", [state, b.ints(index)], axis=0)
            if spec.cell == "lstm":
                h_l, c_l = b.op("Split", [layer_state, b.ints([spec.intrinsic] * 2)], 2, axis=1)
                h.append(h_l)
                c.append(c_l)
            else:
                h.append(layer_state)
                c.append(None)
        projected = None
        if frames is not None and frames > 1:  # layer 0's input projection for all frames at once
            projected = b.op("MatMul", [normalized, self.weight(0, "x")])
            projected = b.op("Add", [projected, b.const("layer0_bias", self.specs[0].bias)])
        outputs = []
        for t in range(frames or 1):
            x_projected, x_parts = None, [normalized]
            if projected is not None:
                x_projected, x_parts = b.op("Gather", [projected, b.ints(t)], axis=1), []
            elif frames is not None:
                x_parts = [b.op("Gather", [normalized, b.ints(t)], axis=1)]
            for index in range(len(self.specs)):
                h[index], c[index], g[index] = self.cell(
                    index, x_parts, x_projected, h[index], c[index], g[index]
                )
                x_parts = [h[index]] + ([g[index]] if g[index] is not None else [])
                x_projected = None
            outputs.append(x_parts)
        parts: list[str] = []
        for index in range(len(self.specs)):
            parts.extend([h[index]] + ([c[index]] if c[index] is not None else []))
        flat = b.concat(parts, 1)  # [B, L*S]
        shaped = b.op("Reshape", [flat, b.ints([0, len(self.specs), self.state_size])])
        return outputs, b.op("Transpose", [shaped], perm=[1, 0, 2])

    def head(self, pooled: str) -> str:
        b = self.b
        logits = b.op("MatMul", [pooled, b.const("head_weight", self.head_w)])
        return b.op("Add", [logits, b.const("head_bias", self.head_b)])

    @property
    def use_rnn_ops(self) -> bool:
        """Plain (or folded) layers in a float graph run as ONNX GRU/LSTM nodes: one node per
        layer instead of a dozen per frame, and the kernels device runtimes optimise."""
        return not self.for_int8 and all(spec.ghost_kind is None for spec in self.specs)

    def step(self, frames: str, step_frames: int, state: str) -> tuple[str, str]:
        """frames [B, F] (K = 1) or [B, K, F] -> (per-frame logits, new state)."""
        b = self.b
        single = step_frames == 1
        if self.use_rnn_ops:
            if single:
                sequence = b.op("Unsqueeze", [frames, b.ints([0])])
            else:
                sequence = b.op("Transpose", [frames], perm=[1, 0, 2])
            outputs, _, new_state = self.rnn_ops(sequence, state, want_outputs=True)
            if single:
                return self.head(b.op("Squeeze", [outputs, b.ints([0])])), new_state
            return self.head(b.op("Transpose", [outputs], perm=[1, 0, 2])), new_state
        per_frame_parts, new_state = self.run(frames, None if single else step_frames, state)
        per_frame = [b.concat(parts, 1) for parts in per_frame_parts]
        if not single:
            per_frame = [b.op("Unsqueeze", [y, b.ints([1])]) for y in per_frame]
        return self.head(b.concat(per_frame, 1)), new_state

    def clip(self, features: str, window_frames: int) -> str:
        """features [B, T, F] -> clip logits [B, C], from the zero state, pooled as in training."""
        b = self.b
        if self.use_rnn_ops:
            sequence = b.op("Transpose", [features], perm=[1, 0, 2])
            want_outputs = self.pooling == "mean"
            outputs, last, _ = self.rnn_ops(sequence, None, want_outputs=want_outputs)
            if want_outputs:
                return self.head(b.op("ReduceMean", [outputs], axes=[0], keepdims=0))
            return self.head(b.op("Squeeze", [last, b.ints([0])]))
        return self.clip_scan(features, window_frames)

    def clip_scan(self, features: str, window_frames: int) -> str:
        """The clip model as one ONNX Scan over the frames, its body one step of every layer:
        one copy of the cell in the file, not T. Carried: each layer's h (c) and g, plus running
        sums of the last layer's output for mean pooling."""
        b, helper = self.b, self.b.helper
        first = self.specs[0]
        # Outer graph: layer 0's input projection for all frames, the weights, the zero state.
        normalized = self.normalize(features)
        projected = b.op("MatMul", [normalized, self.weight(0, "x")])
        projected = b.op("Add", [projected, b.const("layer0_bias", first.bias)])
        for index in range(len(self.specs)):
            self.weight(index, "y" if index == 0 else "xy")
        initial: list[str] = []
        for index, spec in enumerate(self.specs):
            h0 = b.zeros(features, spec.intrinsic)
            initial.append(h0)
            if spec.cell == "lstm":
                initial.append(h0)
            if spec.ghost_kind is not None:
                initial.append(self.ghost(index, h0))
        last = self.specs[-1]
        mean = self.pooling == "mean" and window_frames > 1
        sum_widths = [last.intrinsic] + ([last.hidden - last.intrinsic] if last.ghost_kind else [])
        if mean:
            initial.extend(b.zeros(features, width) for width in sum_widths)
        with b.subgraph() as body_nodes:
            carried_in = [b.name("carried") for _ in initial]
            frame_in = b.name("frame")
            values = iter(carried_in)
            carried_out: list[str] = []
            x_projected: Optional[str] = frame_in
            x_parts: list[str] = []
            for index, spec in enumerate(self.specs):
                h = next(values)
                c = next(values) if spec.cell == "lstm" else None
                g = next(values) if spec.ghost_kind is not None else None
                h, c, g = self.cell(index, x_parts, x_projected, h, c, g)
                x_parts, x_projected = [h] + ([g] if g is not None else []), None
                carried_out.extend([v for v in (h, c, g) if v is not None])
            if mean:
                carried_out.extend(b.op("Add", [next(values), part]) for part in x_parts)
            # A body output must be produced in the body, not be one of its inputs.
            carried_out = [
                b.op("Identity", [name]) if name in carried_in else name for name in carried_out
            ]
        body = helper.make_graph(
            body_nodes,
            "clip_frame",
            [helper.make_tensor_value_info(name, 1, None) for name in carried_in + [frame_in]],
            [helper.make_tensor_value_info(name, 1, None) for name in carried_out],
        )
        final = b.op(
            "Scan",
            initial + [projected],
            len(initial),
            body=body,
            num_scan_inputs=1,
            scan_input_axes=[1],
        )
        final = [final] if isinstance(final, str) else final
        if mean:
            scale = b.const("inverse_frames", np.float32(1.0 / window_frames))
            sums = final[-len(sum_widths) :]
            pooled_parts = [b.op("Mul", [total, scale]) for total in sums]
        else:
            tail = 2 if last.ghost_kind is not None else 1
            if last.cell == "lstm":  # ..., h, c, (g): skip c
                tail += 1
            outputs = final[len(final) - tail :]
            pooled_parts = [outputs[0]] + ([outputs[-1]] if last.ghost_kind is not None else [])
        return self.head(b.concat(pooled_parts, 1))

    def rnn_ops(
        self, sequence: str, state: Optional[str], want_outputs: bool
    ) -> tuple[Optional[str], str, str]:
        """Time-major ``sequence`` [T, B, F] through ONNX GRU/LSTM nodes from ``state``
        [L, B, S] (None: zeros) -> (last layer's outputs [T, B, m] when wanted, its final h
        [1, B, m], the new state [L, B, S])."""
        b = self.b
        layers = len(self.specs)
        if state is None:
            layer_states: list[Optional[str]] = [None] * layers
        elif layers == 1:
            layer_states = [state]
        else:
            layer_states = b.op("Split", [state, b.ints([1] * layers)], layers, axis=0)
        finals = []
        outputs, last_h = sequence, ""
        for index, spec in enumerate(self.specs):
            m = spec.intrinsic
            weight = b.const(f"layer{index}_W", _onnx_gate_order(spec, spec.w_ih)[None])
            recurrence = b.const(f"layer{index}_R", _onnx_gate_order(spec, spec.w_hh)[None])
            biases = [_onnx_gate_order(spec, spec.b_ih), _onnx_gate_order(spec, spec.b_hh)]
            bias = b.const(f"layer{index}_B", np.concatenate(biases)[None])
            inputs = [outputs, weight, recurrence, bias, ""]
            if spec.cell == "gru":
                if layer_states[index] is not None:
                    inputs.append(layer_states[index])
                y, last_h = b.op("GRU", inputs, 2, hidden_size=m, linear_before_reset=1)
                finals.append(last_h)
            else:
                if layer_states[index] is not None:
                    inputs.extend(b.op("Split", [layer_states[index], b.ints([m, m])], 2, axis=2))
                y, last_h, last_c = b.op("LSTM", inputs, 3, hidden_size=m)
                finals.append(b.op("Concat", [last_h, last_c], axis=2))
            if index < layers - 1 or want_outputs:
                outputs = b.op("Squeeze", [y, b.ints([1])])  # [T, 1, B, m] -> [T, B, m]
        new_state = b.concat(finals, 0)
        return (outputs if want_outputs else None), last_h, new_state


def _onnx_gate_order(spec: _LayerSpec, array: np.ndarray) -> np.ndarray:
    """Rows in ONNX's gate order: GRU r,z,n -> z,r,h; LSTM i,f,g,o -> i,o,f,c."""
    m = spec.intrinsic
    order = [1, 0, 2] if spec.cell == "gru" else [0, 3, 1, 2]
    return np.concatenate([array[k * m : (k + 1) * m] for k in order], 0)


def _build_step_graph(model: KeywordModel, step_frames: int, for_int8: bool) -> Any:
    """frames [B, F] (K = 1) or [B, K, F] and state [L, B, S] -> per-frame logits [B, C] or
    [B, K, C] and new_state [L, B, S]."""
    from onnx import TensorProto, helper, numpy_helper

    builder = _GraphBuilder(helper, numpy_helper)
    net = _NetworkGraph(builder, model, for_int8)
    single = step_frames == 1
    logits, new_state = net.step("frames", step_frames, "state")
    builder.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    builder.nodes.append(helper.make_node("Identity", [new_state], ["new_state"]))
    layers, size = len(net.specs), net.state_size
    features, classes = model.config.input_dim, model.config.num_classes
    frames_shape: list[Any] = ["batch", features] if single else ["batch", step_frames, features]
    logits_shape: list[Any] = ["batch", classes] if single else ["batch", step_frames, classes]
    graph = helper.make_graph(
        builder.nodes,
        "kws_ghost_step",
        [
            helper.make_tensor_value_info("frames", TensorProto.FLOAT, frames_shape),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [layers, "batch", size]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, logits_shape),
            helper.make_tensor_value_info("new_state", TensorProto.FLOAT, [layers, "batch", size]),
        ],
        builder.initializers,
    )
    return _make_model(helper, graph)


def _build_clip_graph(model: KeywordModel, window_frames: int, for_int8: bool) -> Any:
    """features [B, T, F] -> logits [B, C], from the zero state, pooled as in training."""
    from onnx import TensorProto, helper, numpy_helper

    builder = _GraphBuilder(helper, numpy_helper)
    net = _NetworkGraph(builder, model, for_int8)
    logits = net.clip("features", window_frames)
    builder.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
    features, classes = model.config.input_dim, model.config.num_classes
    graph = helper.make_graph(
        builder.nodes,
        "kws_ghost_clip",
        [
            helper.make_tensor_value_info(
                "features", TensorProto.FLOAT, ["batch", window_frames, features]
            )
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        builder.initializers,
    )
    return _make_model(helper, graph)


def _make_model(helper: Any, graph: Any) -> Any:
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kws-ghost"
    )
    proto.producer_version = __version__
    proto.ir_version = IR_VERSION
    return proto


# --------------------------------------------------------------------------------------------
# Export


def clip_path_for(step_path: Union[str, os.PathLike[str]]) -> Path:
    """The clip model's file beside the step model: ``x.onnx`` -> ``x.clip.onnx``."""
    path = Path(step_path)
    if path.name.endswith(".onnx"):
        return path.with_name(path.name[: -len(".onnx")] + ".clip.onnx")
    return path.with_name(path.name + ".clip.onnx")


def default_window_frames(frontend: FrontendConfig) -> int:
    """Frames the front-end yields for one clip (97 for 1 s at 16 kHz, n_fft 512, hop 10 ms)."""
    return frontend.num_frames(frontend.clip_samples)


def _describe(config: ModelConfig) -> str:
    from kws_ghost.profile import describe

    return describe(config)


def _metadata(
    model: KeywordModel,
    source_config: ModelConfig,
    frontend: FrontendConfig,
    labels: list[str],
    *,
    role: str,
    step_path: Path,
    clip_path: Path,
    window_frames: int,
    step_frames: int,
    folded: bool,
    int8: bool,
) -> dict[str, str]:
    config = model.config
    layers, size = config.layers, model.rnn.state_size
    values: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "role": role,
        "step_model": step_path.name,
        "clip_model": clip_path.name,
        "labels": list(labels),
        "frontend_config": to_dict(frontend),
        "normalization": {
            "mean": [float(v) for v in model.feature_mean.tolist()],
            "std": [float(v) for v in model.feature_std.tolist()],
            "in_graph": True,
            "folded_into_weights": not int8,
        },
        "pooling": config.pooling,
        "window_frames": window_frames,
        "step_frames": step_frames,
        "state": {
            "layers": layers,
            "size": size,
            "cell": config.cell,
            "layout": ["h"] if config.cell == "gru" else ["h", "c"],
            "shape": ["layers", "batch", "size"],
            "initial": 0.0,
        },
        "model_config": to_dict(config),
        "source_model_config": to_dict(source_config),
        "folded": folded,
        "int8": int8,
        "package_version": __version__,
    }
    return {key: json.dumps(value) for key, value in values.items()}


def _set_metadata(proto: Any, metadata: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (
        f"kws-ghost {json.loads(metadata['role'])} model; labels {metadata['labels']}; "
        "every metadata value is JSON"
    )


def _quantize(onnx: Any, proto: Any) -> Any:
    """Dynamic int8 quantisation of every MatMul weight (activations quantised per call).

    Per-tensor scales: per-channel ones did not help (each gate column mixes input and recurrent
    weights anyway). reduce_range (7-bit weights) avoids the u8 x s8 saturation of AVX2 without
    VNNI, which otherwise cost most of the accuracy in our tests.
    """
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="kws-ghost-int8-") as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, str(source))
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantiser logs advice about pre-processing
        try:
            quantize_dynamic(
                source,
                target,
                op_types_to_quantize=["MatMul"],
                per_channel=False,
                reduce_range=True,
                weight_type=QuantType.QInt8,
                extra_options={"EnableSubgraph": True},  # the clip model's Scan body
            )
        finally:
            root.setLevel(level)
        return onnx.load(str(target))


def export_model(
    model: KeywordModel,
    frontend_config: FrontendConfig,
    labels: list[str],
    out: Union[str, os.PathLike[str]],
    *,
    fold: Optional[bool] = None,
    int8: bool = False,
    window_frames: Optional[int] = None,
    step_frames: int = 1,
) -> dict[str, Any]:
    """Write the step model to ``out`` and the clip model beside it (``clip_path_for``).

    ``fold``: None folds when the model allows it, True insists (KwsError if it can't), False
    keeps the ghost operations in the graph. Returns what was written, with fp32 (and int8) sizes.
    """
    onnx, _ = _require_onnx()
    step_path = Path(out)
    clip_path = clip_path_for(step_path)
    for path in (step_path, clip_path):
        _check_writable(path)
    if step_frames < 1:
        raise KwsError(f"step frames must be at least 1, not {step_frames}")
    if window_frames is None:
        window_frames = default_window_frames(frontend_config)
    if window_frames < 1:
        raise KwsError(f"window frames must be at least 1, not {window_frames}")
    if len(labels) != model.config.num_classes:
        raise KwsError(f"{len(labels)} labels for a model with {model.config.num_classes} outputs")
    source_config = model.config
    is_ghost = source_config.arch.startswith("ghost-")
    if fold is None:
        fold = is_ghost and can_fold(source_config)
    if fold and not is_ghost:
        fold = False  # a plain model is its own folded form
    exported = fold_model(model) if fold else model

    def build(quantized: bool) -> dict[str, Any]:
        protos = {
            "step": _build_step_graph(exported, step_frames, for_int8=quantized),
            "clip": _build_clip_graph(exported, window_frames, for_int8=quantized),
        }
        for role, proto in protos.items():
            if quantized:
                protos[role] = proto = _quantize(onnx, proto)
            metadata = _metadata(
                exported,
                source_config,
                frontend_config,
                labels,
                role=role,
                step_path=step_path,
                clip_path=clip_path,
                window_frames=window_frames,
                step_frames=step_frames,
                folded=bool(fold),
                int8=quantized,
            )
            _set_metadata(proto, metadata)
        return protos

    protos = build(quantized=False)
    sizes = {f"{role}_fp32_bytes": proto.ByteSize() for role, proto in protos.items()}
    if int8:
        protos = build(quantized=True)
        sizes.update({f"{role}_int8_bytes": proto.ByteSize() for role, proto in protos.items()})
    payloads = {role: proto.SerializeToString() for role, proto in protos.items()}
    _write_pair(step_path, payloads["step"], clip_path, payloads["clip"])
    return {
        "format": "onnx",
        "step_model": str(step_path),
        "clip_model": str(clip_path),
        "int8": int8,
        "folded": bool(fold),
        "model": _describe(exported.config),
        "source_model": _describe(source_config),
        "params": exported.num_params(),
        "source_params": model.num_params(),
        "macs_per_frame": exported.macs_per_frame(),
        "source_macs_per_frame": model.macs_per_frame(),
        "labels": list(labels),
        "window_frames": window_frames,
        "step_frames": step_frames,
        "state_shape": [exported.config.layers, "batch", exported.rnn.state_size],
        "sizes": sizes,
        "file_bytes": {"step": len(payloads["step"]), "clip": len(payloads["clip"])},
    }


def _check_writable(path: Path) -> None:
    """Fail before any work when ``path`` cannot be written: one clear line, nothing touched."""
    if path.is_dir():
        raise KwsError(f"{path} is a folder; give --out a file name such as model.onnx")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise KwsError(f"cannot write {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK):
        raise KwsError(f"cannot write {path}: no permission to write in {ancestor}")


def _write_pair(first: Path, first_bytes: bytes, second: Path, second_bytes: bytes) -> None:
    """Both files or neither: each goes to a temporary file first, then both are renamed."""
    from kws_ghost.fileio import atomic_path

    umask = os.umask(0)
    os.umask(umask)
    try:
        with atomic_path(first) as tmp_first, atomic_path(second) as tmp_second:
            for tmp, payload in ((tmp_first, first_bytes), (tmp_second, second_bytes)):
                tmp.write_bytes(payload)
                tmp.chmod(0o666 & ~umask)  # temporary files are private; models are not
    except OSError as exc:
        raise KwsError(f"cannot write {first}: {exc.strerror or exc}") from exc


def export_checkpoint(
    checkpoint: Union[str, os.PathLike[str]],
    out: Optional[Union[str, os.PathLike[str]]] = None,
    **options: Any,
) -> dict[str, Any]:
    """``export_model`` for a checkpoint file; ``out`` defaults to the checkpoint with ``.onnx``."""
    from kws_ghost.checkpoint import load_checkpoint

    _require_onnx()  # before loading torch and the checkpoint: fail fast when missing
    try:
        loaded = load_checkpoint(checkpoint)
    except KwsError:
        raise
    except Exception as exc:  # e.g. torch.load's KeyError on a text file
        raise KwsError(
            f"{checkpoint}: not a readable checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    model = loaded.build_model()
    target = Path(out) if out is not None else Path(checkpoint).with_suffix(".onnx")
    result = export_model(model, loaded.frontend_config, loaded.labels, target, **options)
    result["checkpoint"] = str(checkpoint)
    return result


# --------------------------------------------------------------------------------------------
# Inference with onnxruntime


class OnnxKeywordModel:
    """An exported model pair run with onnxruntime: the same clip logits and per-frame streaming
    logits as the PyTorch model, with only numpy and onnxruntime installed.

    ``path`` is either file of the pair; the other is found through the metadata. Sessions use
    ``threads`` intra-op threads (1: lowest latency for these small graphs, and no contention with
    the audio thread).
    """

    def __init__(self, path: Union[str, os.PathLike[str]], threads: int = 1) -> None:
        self._ort = _require_onnxruntime()
        self.path = Path(path)
        self.threads = threads
        if not self.path.exists():
            raise KwsError(f"{self.path}: no such ONNX model")
        if self.path.is_dir():
            raise KwsError(f"{self.path} is a folder; give the exported .onnx file")
        session = self._open(self.path)
        raw = session.get_modelmeta().custom_metadata_map
        if "format" not in raw or _loads(raw["format"], self.path, "format") != FORMAT:
            raise KwsError(f"{self.path}: not a kws-ghost ONNX model (no kws-ghost metadata)")
        meta = {key: _loads(value, self.path, key) for key, value in raw.items()}
        missing = [k for k in METADATA_KEYS if k not in meta]
        if missing:
            raise KwsError(f"{self.path}: kws-ghost metadata lacks {', '.join(missing)}")
        if meta["format_version"] > FORMAT_VERSION:
            raise KwsError(
                f"{self.path}: written by a newer kws-ghost ({meta['package_version']}); upgrade"
            )
        self.metadata: dict[str, Any] = meta
        self.labels: list[str] = [str(label) for label in meta["labels"]]
        self.frontend_config: FrontendConfig = from_dict(
            FrontendConfig, meta["frontend_config"], f"{self.path}: front-end config"
        )
        self.model_config: ModelConfig = from_dict(
            ModelConfig, meta["model_config"], f"{self.path}: model config"
        )
        self.window_frames: int = int(meta["window_frames"])
        self.step_frames: int = int(meta["step_frames"])
        self.pooling: str = meta["pooling"]
        self.state_layers: int = int(meta["state"]["layers"])
        self.state_size: int = int(meta["state"]["size"])
        self.folded: bool = bool(meta["folded"])
        self.int8: bool = bool(meta["int8"])
        self.step_path = self.path.with_name(meta["step_model"])
        self.clip_path = self.path.with_name(meta["clip_model"])
        self._sessions: dict[str, Any] = {meta["role"]: session}

    @property
    def num_features(self) -> int:
        return self.model_config.input_dim

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def _open(self, path: Path) -> Any:
        ort = self._ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise KwsError(f"{path}: not a readable ONNX model ({first[:200]})") from exc

    def _session(self, role: str) -> Any:
        if role not in self._sessions:
            path = self.step_path if role == "step" else self.clip_path
            if not path.exists():
                raise KwsError(
                    f"{path}: missing; export writes the step and clip models side by side "
                    "and needs both"
                )
            self._sessions[role] = self._open(path)
        return self._sessions[role]

    def initial_state(self, batch: int = 1) -> np.ndarray:
        """Zero state [layers, batch, size]: what every stream starts from."""
        return np.zeros((self.state_layers, batch, self.state_size), np.float32)

    def step(self, frames: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw feature frames and state [L, B, S] -> (per-frame logits, new state [L, B, S]).

        Frames are [B, F] -> logits [B, C] for a model exported with one frame per step (the
        default), [B, K, F] -> [B, K, C] for K frames per step.
        """
        frames = np.ascontiguousarray(frames, dtype=np.float32)
        expected = (
            (self.num_features,) if self.step_frames == 1 else (self.step_frames, self.num_features)
        )
        if frames.ndim != len(expected) + 1 or frames.shape[1:] != expected:
            raise KwsError(
                f"{self.step_path}: frames must be {['batch', *expected]}, got {list(frames.shape)}"
            )
        state = np.ascontiguousarray(state, dtype=np.float32)
        state_shape = (self.state_layers, frames.shape[0], self.state_size)
        if state.shape != state_shape:
            raise KwsError(f"state must be {list(state_shape)}, got {list(state.shape)}")
        logits, new_state = self._session("step").run(
            ["logits", "new_state"], {"frames": frames, "state": state}
        )
        return logits, new_state

    def clip_logits(self, features: np.ndarray, max_batch: int = 256) -> np.ndarray:
        """Clip logits [N, C] for N windows of raw features [N, T, F] (T = ``window_frames``),
        computed from the zero state as in training, in batches of ``max_batch``."""
        features = np.ascontiguousarray(features, dtype=np.float32)
        if features.ndim != 3 or features.shape[1:] != (self.window_frames, self.num_features):
            raise KwsError(
                f"{self.clip_path}: features must be [N, {self.window_frames}, "
                f"{self.num_features}], got {list(features.shape)}"
            )
        if features.shape[0] == 0:
            return np.zeros((0, self.num_classes), np.float32)
        session = self._session("clip")
        chunks = [
            session.run(["logits"], {"features": features[i : i + max_batch]})[0]
            for i in range(0, features.shape[0], max_batch)
        ]
        return np.concatenate(chunks, 0)


def _loads(value: str, path: Path, key: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise KwsError(f"{path}: metadata {key!r} is not JSON") from exc
