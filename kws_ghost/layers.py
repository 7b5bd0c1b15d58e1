"""GhostRNN layers and their plain GRU / LSTM special cases.

With s = 1 there is no ghost part and the layer is exactly ``torch.nn.GRU`` / ``torch.nn.LSTM``
(same parameter layout), which is how the ``gru`` and ``lstm`` baselines are built: one code path.
The recurrence is ``kws_ghost.cell``; the kernels that run it over a sequence, and the rule that
picks one, are ``kws_ghost.kernels``; ``PackedLayer`` is a layer's step for export (both
products as one over [x ; y]). The folding identities (``absorb_ghost``,
``absorb_normalization``) live here too; export uses them. State tensors are
``[layers, batch, state_size]`` with state_size = m for GRU and 2m (h, then c) for LSTM, so a
runtime carries one tensor whatever the cell.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kws_ghost.cell import Ghost, activate, cat, cell_step, ghost_parts, linear, split_projection
from kws_ghost.config import ACTIVATIONS, CHEAP_INITS
from kws_ghost.kernels import GhostGRUScan, GhostLSTMScan, choose_kernel, fused_rnn, scan_recurrence

GATES = {"gru": 3, "lstm": 4}
GATE_PARAMETERS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


# ------------------------------------------------------------------------------ folding


def absorb_ghost(
    weight: Tensor, bias: Tensor, affine: Optional[tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    """W [h ; A h + c] + b as (W_h + W_g A) h + (b + W_g c): a consumer of y = [h ; g] absorbs a
    linear ghost part. Unchanged when ``affine`` is None."""
    if affine is None:
        return weight, bias
    ghost_w, ghost_b = affine
    m = ghost_w.shape[1]
    w_h, w_g = weight[:, :m], weight[:, m:]
    return torch.addmm(w_h, w_g, ghost_w), torch.addmv(bias, w_g, ghost_b)


def absorb_normalization(
    weight: Tensor, bias: Tensor, mean: Tensor, std: Tensor
) -> tuple[Tensor, Tensor]:
    """W (x - mean) / std + b as (W / std) x + (b - W (mean / std)): raw features in."""
    return weight / std, bias - weight @ (mean / std)


# ------------------------------------------------------------------------------ cheap operations


class CheapOperation(nn.Module):
    """phi: intrinsic state h (m) -> ghost state g (H - m), g = act(A h + c).

    ``affine()`` returns the dense (A, c) it applies: every path (step, scan, fold, export) uses it.
    ``init``: ``uniform`` (+-1/sqrt(m), torch.nn.Linear's bound) or ``orthogonal`` (A starts
    norm-keeping, so the ghost states start as large as the intrinsic ones).
    """

    def __init__(
        self, intrinsic: int, ghost: int, activation: str = "none", init: str = "uniform"
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}")
        if init not in CHEAP_INITS:
            raise ValueError(f"unknown cheap-operation initialisation {init!r}")
        self.intrinsic = intrinsic
        self.ghost = ghost
        self.activation = activation

    @property
    def is_linear(self) -> bool:
        return self.activation == "none"

    def affine(self) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs(self) -> int:
        """Multiply-accumulates per frame."""
        raise NotImplementedError

    def forward(self, h: Tensor) -> Tensor:
        weight, bias = self.affine()
        return activate(F.linear(h, weight, bias), self.activation)


class LinearCheapOperation(CheapOperation):
    """g = act(A h + c) with a dense A: the paper's cheap operation."""

    def __init__(
        self, intrinsic: int, ghost: int, activation: str = "none", init: str = "uniform"
    ) -> None:
        super().__init__(intrinsic, ghost, activation, init)
        bound = 1 / math.sqrt(intrinsic)
        self.weight = nn.Parameter(torch.empty(ghost, intrinsic).uniform_(-bound, bound))
        if init == "orthogonal":
            nn.init.orthogonal_(self.weight)
        self.bias = nn.Parameter(torch.zeros(ghost))

    def affine(self) -> tuple[Tensor, Tensor]:
        return self.weight, self.bias

    def macs(self) -> int:
        return self.ghost * self.intrinsic


class ElementwiseCheapOperation(CheapOperation):
    """g_j = act(a_j * h_(j mod m) + c_j): a per-dimension scale and shift of repeated intrinsic
    dimensions, the analogue of GhostNet's depthwise cheap operation. H - m MACs per frame."""

    def __init__(
        self, intrinsic: int, ghost: int, activation: str = "none", init: str = "uniform"
    ) -> None:
        super().__init__(intrinsic, ghost, activation, init)
        self.register_buffer("source", torch.arange(ghost) % intrinsic, persistent=False)
        self.scale = nn.Parameter(torch.empty(ghost).uniform_(-1.0, 1.0))
        if init == "orthogonal":  # copies of +-1: each ghost dimension keeps its source's norm
            with torch.no_grad():
                self.scale.copy_(torch.where(self.scale < 0, -1.0, 1.0))
        self.bias = nn.Parameter(torch.zeros(ghost))

    def affine(self) -> tuple[Tensor, Tensor]:
        dense = self.scale.new_zeros(self.ghost, self.intrinsic)
        dense = dense.scatter(1, self.source[:, None], self.scale[:, None])
        return dense, self.bias

    def macs(self) -> int:
        return self.ghost


CHEAP_OPERATIONS = {"linear": LinearCheapOperation, "elementwise": ElementwiseCheapOperation}


# ------------------------------------------------------------------------------ layers


class GhostRNNLayer(nn.Module):
    """One GhostGRU or GhostLSTM layer (batch-first). Parameters follow torch.nn.GRU/LSTM's layout
    (``weight_ih`` [G*m, D], ``weight_hh`` [G*m, H], ``bias_ih``, ``bias_hh``; G gates) plus the
    cheap operation ``ghost`` when m < H."""

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        ratio: float = 2.0,
        cheap_op: str = "linear",
        activation: str = "none",
        cheap_init: str = "uniform",
    ) -> None:
        super().__init__()
        if cell not in GATES:
            raise ValueError(f"unknown cell {cell!r}")
        self.cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.intrinsic_size = math.ceil(hidden_size / ratio)
        gates = GATES[cell] * self.intrinsic_size
        bound = 1 / math.sqrt(hidden_size)  # torch.nn.GRU/LSTM's initialisation
        self.weight_ih = nn.Parameter(torch.empty(gates, input_size).uniform_(-bound, bound))
        self.weight_hh = nn.Parameter(torch.empty(gates, hidden_size).uniform_(-bound, bound))
        self.bias_ih = nn.Parameter(torch.empty(gates).uniform_(-bound, bound))
        self.bias_hh = nn.Parameter(torch.empty(gates).uniform_(-bound, bound))
        ghost = hidden_size - self.intrinsic_size
        self.ghost: Optional[CheapOperation] = (
            CHEAP_OPERATIONS[cheap_op](self.intrinsic_size, ghost, activation, cheap_init)
            if ghost
            else None
        )
        # The kernel, as its caller chose it (GhostRNN.set_kernel); "auto": the rule of
        # kws_ghost.kernels.choose_kernel (fused where exact, else by train or eval mode).
        self.kernel = "auto"

    @property
    def state_size(self) -> int:
        return self.intrinsic_size * (2 if self.cell == "lstm" else 1)

    @property
    def activation(self) -> str:
        return self.ghost.activation if self.ghost is not None else "none"

    @property
    def foldable(self) -> bool:
        """True when the ghost operation is linear, so the layer is a width-m GRU/LSTM."""
        return self.ghost is None or self.ghost.is_linear

    def ghost_affine(self) -> tuple[Tensor, Tensor]:
        """Dense (A, c) of the cheap operation; empty when the layer has no ghost part."""
        if self.ghost is None:
            m = self.intrinsic_size
            return self.weight_hh.new_zeros(0, m), self.weight_hh.new_zeros(0)
        return self.ghost.affine()

    def ghost_function(self) -> Ghost:
        """phi as ``ghost_parts`` (h -> [g], or [] without a ghost part)."""
        if self.ghost is None:
            return ghost_parts(None, self.bias_hh, "none")
        return ghost_parts(*self.ghost.affine(), self.activation)

    def folded_weights(self) -> tuple[Tensor, Tensor]:
        """Recurrent weights of the equivalent width-m cell: U_h + U_g A and b_hh + U_g c."""
        if self.ghost is None:
            return self.weight_hh, self.bias_hh
        return absorb_ghost(self.weight_hh, self.bias_hh, self.ghost.affine())

    def full_state(self, h: Tensor) -> Tensor:
        """y = [h ; phi(h)] for intrinsic state(s) h [..., m]."""
        return cat([h, *self.ghost_function()(h)])

    def initial_state(self, batch: int) -> Tensor:
        return self.weight_ih.new_zeros(batch, self.state_size)

    def kernel_in_use(self) -> str:
        """The kernel ``forward`` runs (``kws_ghost.kernels``)."""
        return choose_kernel(self.kernel, self.foldable, self.training)

    def forward(self, x: Tensor, state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """x [B, T, D], state [B, state_size] -> (y [B, T, H], final state [B, state_size])."""
        if state is None:
            state = self.initial_state(x.shape[0])
        if x.shape[1] == 0:
            return x.new_zeros(x.shape[0], 0, self.hidden_size), state
        kernel = self.kernel_in_use()
        if kernel == "fused":
            return self._forward_fused(x, state)
        if kernel == "step":
            outputs = []
            for t in range(x.shape[1]):
                y, state = self.step(x[:, t], state)
                outputs.append(y)
            return torch.stack(outputs, 1), state
        m = self.intrinsic_size
        gi = F.linear(x, self.weight_ih, self.bias_ih).transpose(0, 1).contiguous()
        args = (self.weight_hh, self.bias_hh, *self.ghost_affine(), self.activation)
        if kernel == "scan-inference":  # no graph kept (as torch's cuDNN RNN in eval mode)
            with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
                y, _, new_state, _ = scan_recurrence(self.cell, gi, state, *args, keep=False)
            return y.transpose(0, 1), new_state
        if self.cell == "gru":
            y = GhostGRUScan.apply(gi, state, *args)
            new_state = y[-1, :, :m]
        else:
            y, c_last = GhostLSTMScan.apply(gi, state, *args)
            new_state = torch.cat([y[-1, :, :m], c_last], dim=1)
        return y.transpose(0, 1), new_state

    def _forward_fused(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        w_hh, b_hh = self.folded_weights()
        weights = [self.weight_ih, w_hh, self.bias_ih, b_hh]
        h, new_state = fused_rnn(self.cell, x, state[None], weights, self.training)
        return self.full_state(h), new_state[0]

    def project(self, x_parts: list[Tensor], y_parts: list[Tensor]) -> tuple[Tensor, ...]:
        """The gates' pre-activations from the input and the full recurrent state (two matmuls)."""
        gi = linear(cat(x_parts), self.weight_ih, self.bias_ih)
        gh = linear(cat(y_parts), self.weight_hh, self.bias_hh)
        return split_projection(self.cell, self.intrinsic_size, gi, gh)

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One frame: x [B, D], state [B, state_size] -> (y [B, H], new state). The reference."""
        ghost = self.ghost_function()
        m = self.intrinsic_size
        y_parts, state, _ = cell_step(self.cell, m, [x], state, self.project, ghost)
        return cat(y_parts), state

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs_per_frame(self) -> int:
        """Multiply-accumulates per frame: input and recurrent projections, the cheap operation and
        the gates' element-wise products (3m for both cells)."""
        rows = self.weight_ih.shape[0]
        cheap = self.ghost.macs() if self.ghost is not None else 0
        return rows * (self.input_size + self.hidden_size) + cheap + 3 * self.intrinsic_size


class PackedLayer(nn.Module):
    """A layer's step for export: ``cell_step`` with the input and recurrent products as one matmul
    over [x ; y] (fewer graph nodes per frame: at batch 1 a node's overhead, not its arithmetic,
    sets most of its time), or, with ``fused`` (plain and folded layers only), torch's fused
    kernel, which exports as one ONNX GRU/LSTM node.

    ``weight`` [4m, D + H]: GRU rows [r | z | W_n x + b_in | U_n y + b_hn] (the n gate's two parts
    apart, since r multiplies only the recurrent one, hence zero blocks), LSTM rows i f g o.
    Built from the layer's parameters, optionally with another input projection (layer 0 with the
    feature normalisation absorbed).
    """

    def __init__(
        self,
        layer: GhostRNNLayer,
        weight_ih: Optional[Tensor] = None,
        bias_ih: Optional[Tensor] = None,
        fused: bool = False,
    ) -> None:
        super().__init__()
        if fused and layer.ghost is not None:
            raise ValueError("only layers without a ghost part run fused; fold the model first")
        self.cell, self.activation, self.fused = layer.cell, layer.activation, fused
        self.has_ghost = layer.ghost is not None
        self.intrinsic_size = m = layer.intrinsic_size
        w_ih = (layer.weight_ih if weight_ih is None else weight_ih).detach().clone()
        b_ih = (layer.bias_ih if bias_ih is None else bias_ih).detach().clone()
        w_hh, b_hh = layer.weight_hh.detach().clone(), layer.bias_hh.detach().clone()
        if fused:
            self.weights = nn.ParameterList([w_ih, w_hh, b_ih, b_hh])
            return
        d, width = w_ih.shape[1], layer.hidden_size
        if self.cell == "gru":
            x_rows = torch.cat([w_ih, w_ih.new_zeros(m, d)])
            y_rows = torch.cat([w_hh[: 2 * m], w_hh.new_zeros(m, width), w_hh[2 * m :]])
            bias = torch.cat([b_ih[: 2 * m] + b_hh[: 2 * m], b_ih[2 * m :], b_hh[2 * m :]])
        else:
            x_rows, y_rows, bias = w_ih, w_hh, b_ih + b_hh
        self.register_buffer("weight", torch.cat([x_rows, y_rows], dim=1))
        self.register_buffer("bias", bias)
        ghost_w, ghost_b = layer.ghost_affine()
        self.register_buffer("ghost_weight", ghost_w.detach().clone())
        self.register_buffer("ghost_bias", ghost_b.detach().clone())

    def project(self, x_parts: list[Tensor], y_parts: list[Tensor]) -> tuple[Tensor, ...]:
        m = self.intrinsic_size
        return linear(cat(x_parts + y_parts), self.weight, self.bias).split([m, m, m, m], dim=-1)

    def step(self, x_parts: list[Tensor], state: Tensor) -> tuple[list[Tensor], Tensor]:
        """x as parts, state [B, S] -> (y as parts [h, (g)], new state). When ``fused``: x
        [1, B, D] (one frame, time-major), state [1, B, S], as the ONNX GRU/LSTM nodes want."""
        if self.fused:
            h, state = fused_rnn(self.cell, x_parts[0], state, list(self.weights), False, False)
            return [h], state
        weight = self.ghost_weight if self.has_ghost else None
        ghost = ghost_parts(weight, self.ghost_bias, self.activation)
        m = self.intrinsic_size
        y_parts, state, _ = cell_step(self.cell, m, x_parts, state, self.project, ghost)
        return y_parts, state


class GhostRNN(nn.Module):
    """A stack of GhostRNN layers with dropout between them; ``ratio=1`` gives plain GRU / LSTM.

    ``forward(x, state) -> (y, state)`` for sequences and ``step(x_t, state) -> (y_t, state)`` for
    streaming share parameters and state layout ``[layers, batch, state_size]``.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        ratio: float = 2.0,
        cheap_op: str = "linear",
        activation: str = "none",
        dropout: float = 0.0,
        cheap_init: str = "uniform",
    ) -> None:
        super().__init__()
        self.cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.layers = nn.ModuleList(
            GhostRNNLayer(
                cell,
                input_size if i == 0 else hidden_size,
                hidden_size,
                ratio,
                cheap_op,
                activation,
                cheap_init,
            )
            for i in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def state_size(self) -> int:
        return self.layers[0].state_size

    @property
    def intrinsic_size(self) -> int:
        return self.layers[0].intrinsic_size

    @property
    def foldable(self) -> bool:
        return all(layer.foldable for layer in self.layers)

    def set_kernel(self, kernel: str) -> None:
        """Run every layer with ``kernel`` (``kws_ghost.kernels.KERNELS``; ``auto``: the rule)."""
        for layer in self.layers:
            choose_kernel(kernel, layer.foldable, layer.training)  # refuses what cannot run
            layer.kernel = kernel

    def initial_state(self, batch: int) -> Tensor:
        return self.layers[0].weight_ih.new_zeros(self.num_layers, batch, self.state_size)

    def forward(self, x: Tensor, state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """x [B, T, D] -> (y [B, T, H], state [layers, B, state_size])."""
        if state is None:
            state = self.initial_state(x.shape[0])
        new_states = []
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.dropout(x)
            x, s = layer(x, state[i])
            new_states.append(s)
        return x, torch.stack(new_states)

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, D], state [layers, B, state_size] -> (y [B, H], new state). No dropout."""
        new_states = []
        for i, layer in enumerate(self.layers):
            x, s = layer.step(x, state[i])
            new_states.append(s)
        return x, torch.stack(new_states)

    def fold_into(self, target: GhostRNN) -> Optional[tuple[Tensor, Tensor]]:
        """Copy this stack, folded, into ``target``, a plain stack of width m: each layer's
        recurrence and the next layer's input weights absorb the linear ghost part. Returns the
        last layer's (A, c), which the stack's consumer must absorb (None when plain)."""
        if not self.foldable:
            raise ValueError("only stacks whose cheap operations have no activation fold")
        previous: Optional[tuple[Tensor, Tensor]] = None  # (A, c) feeding this layer
        with torch.no_grad():
            for source, dest in zip(self.layers, target.layers):
                w_ih, b_ih = absorb_ghost(source.weight_ih, source.bias_ih, previous)
                w_hh, b_hh = source.folded_weights()
                for name, value in zip(GATE_PARAMETERS, (w_ih, w_hh, b_ih, b_hh)):
                    getattr(dest, name).copy_(value)
                previous = source.ghost.affine() if source.ghost is not None else None
        return previous

    def state_bytes(self, bytes_per_value: int = 4) -> int:
        """Recurrent memory for one stream."""
        return self.num_layers * self.state_size * bytes_per_value

    def macs_per_frame(self) -> int:
        return sum(layer.macs_per_frame() for layer in self.layers)
