"""GhostRNN layers (Zhou et al., Interspeech 2023) and their plain GRU / LSTM special cases.

A ghost layer of width H and ratio s keeps m = ceil(H / s) *intrinsic* state dimensions h with the
full recurrence, and derives the other H - m *ghost* dimensions with a cheap operation g = phi(h).
The layer's output, and the input to its own recurrence, is y = [h ; g]. Only h (and, for the LSTM,
the cell c) is state; g is recomputed, so streaming state is m (2m) floats per layer, not H.

With s = 1 there is no ghost part and the layer is exactly ``torch.nn.GRU`` / ``torch.nn.LSTM``
(same parameter layout), which is how the ``gru`` and ``lstm`` baselines are built: one code path.

Three execution paths compute the same function:

* fused: when phi is linear with no activation (or absent), U y = (U_h + U_g A) h + U_g c, so the
  layer is a GRU/LSTM of width m with folded recurrent weights and torch's fused kernel runs it;
* scan: otherwise a custom autograd function runs the recurrence with a hand-written backward,
  keeping per-step work to a few tensor ops (an autograd graph per step is ~8x slower);
* step: one frame at a time, for streaming, with state passed in and out.

State tensors are ``[layers, batch, state_size]`` with state_size = m for GRU and 2m (h, then c)
for LSTM, so a runtime carries one tensor whatever the cell.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kws_ghost.config import ACTIVATIONS

GATES = {"gru": 3, "lstm": 4}


def _activation_grad(name: str, out: Tensor) -> Optional[Tensor]:
    """d act / d pre-activation, written in terms of the activation's output (None: identity)."""
    if name == "none":
        return None
    if name == "tanh":
        return 1 - out * out
    if name == "sigmoid":
        return out * (1 - out)
    if name == "relu":
        return (out > 0).to(out.dtype)
    raise ValueError(f"unknown activation {name!r}")


class CheapOperation(nn.Module):
    """phi: intrinsic state h (m) -> ghost state g (H - m), g = act(A h + c).

    ``affine()`` returns the dense (A, c) it applies, which the fused path folds into the recurrent
    weights and the scan path differentiates by hand.
    """

    def __init__(self, intrinsic: int, ghost: int, activation: str = "none") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}")
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
        return _activate(F.linear(h, weight, bias), self.activation)


class LinearCheapOperation(CheapOperation):
    """g = act(A h + c) with a dense A: the paper's cheap operation."""

    def __init__(self, intrinsic: int, ghost: int, activation: str = "none") -> None:
        super().__init__(intrinsic, ghost, activation)
        bound = 1 / math.sqrt(intrinsic)
        self.weight = nn.Parameter(torch.empty(ghost, intrinsic).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(ghost))

    def affine(self) -> tuple[Tensor, Tensor]:
        return self.weight, self.bias

    def macs(self) -> int:
        return self.ghost * self.intrinsic


class ElementwiseCheapOperation(CheapOperation):
    """g_j = act(a_j * h_(j mod m) + c_j): a per-dimension scale and shift of repeated intrinsic
    dimensions, the analogue of GhostNet's depthwise cheap operation. H - m MACs per frame."""

    def __init__(self, intrinsic: int, ghost: int, activation: str = "none") -> None:
        super().__init__(intrinsic, ghost, activation)
        self.register_buffer("source", torch.arange(ghost) % intrinsic, persistent=False)
        self.scale = nn.Parameter(torch.empty(ghost).uniform_(-1.0, 1.0))
        self.bias = nn.Parameter(torch.zeros(ghost))

    def affine(self) -> tuple[Tensor, Tensor]:
        dense = self.scale.new_zeros(self.ghost, self.intrinsic)
        dense = dense.scatter(1, self.source[:, None], self.scale[:, None])
        return dense, self.bias

    def macs(self) -> int:
        return self.ghost

    def forward(self, h: Tensor) -> Tensor:
        return _activate(h[..., self.source] * self.scale + self.bias, self.activation)


CHEAP_OPERATIONS = {"linear": LinearCheapOperation, "elementwise": ElementwiseCheapOperation}


def _activate(v: Tensor, name: str) -> Tensor:
    if name == "tanh":
        return torch.tanh(v)
    if name == "relu":
        return torch.relu(v)
    if name == "sigmoid":
        return torch.sigmoid(v)
    return v


def ghost_gru_step(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    b_ih: Tensor,
    w_hh: Tensor,
    b_hh: Tensor,
    ghost_w: Tensor,
    ghost_b: Tensor,
    activation: str,
) -> tuple[Tensor, Tensor]:
    """One GhostGRU frame: x [B, D], intrinsic h [B, m] -> (y = [h' ; phi(h')], h')."""
    m = h.shape[1]
    y = _full_state(h, ghost_w, ghost_b, activation)
    gi = torch.addmm(b_ih, x, w_ih.t())
    gh = torch.addmm(b_hh, y, w_hh.t())
    rz = torch.sigmoid(gi[:, : 2 * m] + gh[:, : 2 * m])
    n = torch.tanh(torch.addcmul(gi[:, 2 * m :], rz[:, :m], gh[:, 2 * m :]))
    h = torch.lerp(n, h, rz[:, m:])
    return _full_state(h, ghost_w, ghost_b, activation), h


def ghost_lstm_step(
    x: Tensor,
    state: Tensor,
    w_ih: Tensor,
    b_ih: Tensor,
    w_hh: Tensor,
    b_hh: Tensor,
    ghost_w: Tensor,
    ghost_b: Tensor,
    activation: str,
) -> tuple[Tensor, Tensor]:
    """One GhostLSTM frame: x [B, D], state [B, 2m] = [h ; c] -> (y = [h' ; phi(h')], [h' ; c'])."""
    m = state.shape[1] // 2
    h, c = state[:, :m], state[:, m:]
    y = _full_state(h, ghost_w, ghost_b, activation)
    gates = torch.addmm(b_ih, x, w_ih.t()) + torch.addmm(b_hh, y, w_hh.t())
    i, f, g, o = gates.chunk(4, 1)
    c = torch.addcmul(torch.sigmoid(f) * c, torch.sigmoid(i), torch.tanh(g))
    h = torch.sigmoid(o) * torch.tanh(c)
    y = _full_state(h, ghost_w, ghost_b, activation)
    return y, torch.cat([h, c], 1)


_COMPILED_STEPS: dict[str, Any] = {}


def compiled_step(cell: str) -> Any:
    """The step kernel of ``cell`` compiled with TorchScript (at batch 1 a frame is a dozen tiny
    ops, and running them without the Python interpreter in between is about 2.5x faster), or
    the plain function where TorchScript is unavailable."""
    if cell not in _COMPILED_STEPS:
        function = ghost_gru_step if cell == "gru" else ghost_lstm_step
        try:
            with warnings.catch_warnings():  # its deprecation notice, once per process
                warnings.simplefilter("ignore", DeprecationWarning)
                _COMPILED_STEPS[cell] = torch.jit.script(function)
        except Exception:  # TorchScript is deprecated; a torch without it runs the Python one
            _COMPILED_STEPS[cell] = function
    return _COMPILED_STEPS[cell]


def _full_state(h: Tensor, ghost_w: Tensor, ghost_b: Tensor, activation: str) -> Tensor:
    """y = [h ; act(A h + c)] for the scans (A may have zero rows: no ghost part)."""
    return torch.cat([h, _activate(torch.addmm(ghost_b, h, ghost_w.t()), activation)], dim=1)


def _ghost_backward(
    dy: Tensor, ghost_out: Tensor, ghost_w: Tensor, activation: str, d_pre: Tensor
) -> Tensor:
    """Backward through y = [h ; act(A h + c)]: writes d(A h + c) into ``d_pre`` and returns the
    gradient reaching h (its direct part plus A^T d_pre)."""
    m = ghost_w.shape[1]
    dh = dy[:, :m]
    if ghost_out.shape[1] == 0:
        return dh
    dpre = dy[:, m:]
    local = _activation_grad(activation, ghost_out)
    if local is not None:
        dpre = dpre * local
    d_pre.copy_(dpre)
    return torch.addmm(dh, dpre, ghost_w)


def _weight_grads(
    d_gates: Tensor, y: Tensor, y0: Tensor, d_pre: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of w_hh, b_hh, A and c, summed over all steps in four matmuls/sums (cheaper than
    accumulating them step by step). ``d_pre`` row 0 belongs to y0, row t + 1 to step t."""
    width, m = y.shape[2], y.shape[2] - d_pre.shape[2]
    y_prev = torch.cat([y0[None], y[:-1]], dim=0).reshape(-1, width)
    h_all = torch.cat([y0[None, :, :m], y[:, :, :m]], dim=0).reshape(-1, m)
    d_flat = d_gates.reshape(-1, d_gates.shape[2])
    d_pre_flat = d_pre.reshape(-1, width - m)
    return d_flat.t() @ y_prev, d_flat.sum(0), d_pre_flat.t() @ h_all, d_pre_flat.sum(0)


class _GhostGRUScan(torch.autograd.Function):
    """GhostGRU recurrence over a whole sequence with a hand-written backward.

    Inputs are time-major: gi [T, B, 3m] (input projections incl. bias_ih for all steps), h0 [B, m],
    w_hh [3m, H], b_hh [3m], A [G, m], c [G]. Output y [T, B, H] = [h_t ; act(A h_t + c)].
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # the scan runs in fp32
    def forward(  # type: ignore[override]
        ctx: Any,
        gi: Tensor,
        h0: Tensor,
        w_hh: Tensor,
        b_hh: Tensor,
        ghost_w: Tensor,
        ghost_b: Tensor,
        activation: str,
    ) -> Tensor:
        steps, batch, _ = gi.shape
        m = h0.shape[1]
        y = gi.new_empty(steps, batch, w_hh.shape[1])
        gates = gi.new_empty(steps, batch, 4 * m)  # r, z, n, (U_n y + b_hn) per step, for backward
        y0 = _full_state(h0, ghost_w, ghost_b, activation)
        y_prev, h_prev = y0, h0
        w_t = w_hh.t()
        for t in range(steps):
            gh = torch.addmm(b_hh, y_prev, w_t)
            g = gates[t]
            torch.sigmoid(torch.add(gi[t, :, : 2 * m], gh[:, : 2 * m]), out=g[:, : 2 * m])
            r, z = g[:, :m], g[:, m : 2 * m]
            g[:, 3 * m :] = gh[:, 2 * m :]
            torch.tanh(torch.addcmul(gi[t, :, 2 * m :], r, gh[:, 2 * m :]), out=g[:, 2 * m : 3 * m])
            out = y[t]
            torch.lerp(g[:, 2 * m : 3 * m], h_prev, z, out=out[:, :m])
            h_prev = out[:, :m]
            if out.shape[1] > m:
                out[:, m:] = _activate(torch.addmm(ghost_b, h_prev, ghost_w.t()), activation)
            y_prev = out
        ctx.activation = activation
        ctx.save_for_backward(y, y0, gates, w_hh, ghost_w)
        return y

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, dy: Tensor):  # type: ignore[override]
        y, y0, gates, w_hh, ghost_w = ctx.saved_tensors
        steps, batch, width = y.shape
        m = y0.shape[1] - ghost_w.shape[0]
        dy = dy.contiguous()
        d_gh = torch.empty_like(gates[..., : 3 * m])  # grads of U y + b_hh per step
        d_gi = torch.empty_like(d_gh)
        d_pre = y.new_zeros(steps + 1, batch, width - m)  # grads of A h + c (row 0: for y0)
        dy_rec = y.new_zeros(batch, width)  # grad reaching y_t through step t+1's U y_t
        dh_next = y.new_zeros(batch, m)  # grad reaching h_t through step t+1's z * h_t
        for t in range(steps - 1, -1, -1):
            dyt = dy[t] + dy_rec
            dh = _ghost_backward(dyt, y[t, :, m:], ghost_w, ctx.activation, d_pre[t + 1])
            dh = dh + dh_next
            g = gates[t]
            r, z, n, ghn = g[:, :m], g[:, m : 2 * m], g[:, 2 * m : 3 * m], g[:, 3 * m :]
            h_prev = y[t - 1, :, :m] if t > 0 else y0[:, :m]
            dn = dh * (1 - z)
            da_n = dn * (1 - n * n)
            d_gi[t, :, 2 * m :] = da_n
            d_gh[t, :, 2 * m :] = da_n * r
            d_gi[t, :, :m] = da_n * ghn * r * (1 - r)
            d_gi[t, :, m : 2 * m] = dh * (h_prev - n) * z * (1 - z)
            d_gh[t, :, : 2 * m] = d_gi[t, :, : 2 * m]
            dh_next = dh * z
            dy_rec = d_gh[t] @ w_hh
        # Gradient into the initial full state y0 = [h0 ; phi(h0)].
        dh0 = _ghost_backward(dy_rec, y0[:, m:], ghost_w, ctx.activation, d_pre[0]) + dh_next
        return d_gi, dh0, *_weight_grads(d_gh, y, y0, d_pre), None


class _GhostLSTMScan(torch.autograd.Function):
    """GhostLSTM recurrence with a hand-written backward; gate order i, f, g, o as torch.nn.LSTM.

    Inputs: gi [T, B, 4m], h0 [B, m], c0 [B, m], w_hh [4m, H], b_hh [4m], A [G, m], c [G].
    Outputs: y [T, B, H] and the final cell state [B, m].
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(  # type: ignore[override]
        ctx: Any,
        gi: Tensor,
        h0: Tensor,
        c0: Tensor,
        w_hh: Tensor,
        b_hh: Tensor,
        ghost_w: Tensor,
        ghost_b: Tensor,
        activation: str,
    ) -> tuple[Tensor, Tensor]:
        steps, batch, _ = gi.shape
        m = h0.shape[1]
        y = gi.new_empty(steps, batch, w_hh.shape[1])
        gates = gi.new_empty(steps, batch, 4 * m)  # activated i, f, g, o
        cells = gi.new_empty(steps, batch, m)
        y0 = _full_state(h0, ghost_w, ghost_b, activation)
        y_prev, c_prev = y0, c0
        w_t = w_hh.t()
        for t in range(steps):
            pre = torch.addmm(b_hh, y_prev, w_t).add_(gi[t])
            g = gates[t]
            torch.sigmoid(pre, out=g)  # i, f, o (g's slot is overwritten next)
            torch.tanh(pre[:, 2 * m : 3 * m], out=g[:, 2 * m : 3 * m])
            c = cells[t]
            torch.mul(g[:, m : 2 * m], c_prev, out=c)
            c.addcmul_(g[:, :m], g[:, 2 * m : 3 * m])
            out = y[t]
            torch.mul(g[:, 3 * m :], torch.tanh(c), out=out[:, :m])
            if out.shape[1] > m:
                out[:, m:] = _activate(torch.addmm(ghost_b, out[:, :m], ghost_w.t()), activation)
            y_prev, c_prev = out, c
        ctx.activation = activation
        ctx.save_for_backward(y, y0, c0, gates, cells, w_hh, ghost_w)
        return y, cells[-1].clone()

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, dy: Tensor, dc_last: Tensor):  # type: ignore[override]
        y, y0, c0, gates, cells, w_hh, ghost_w = ctx.saved_tensors
        steps, batch, width = y.shape
        m = c0.shape[1]
        dy = dy.contiguous()
        d_gates = torch.empty_like(gates)
        d_pre = y.new_zeros(steps + 1, batch, width - m)
        dy_rec = y.new_zeros(batch, width)
        dc_next = dc_last.clone() if dc_last is not None else y.new_zeros(batch, m)
        for t in range(steps - 1, -1, -1):
            dh = _ghost_backward(dy[t] + dy_rec, y[t, :, m:], ghost_w, ctx.activation, d_pre[t + 1])
            g = gates[t]
            i, f, gg, o = g[:, :m], g[:, m : 2 * m], g[:, 2 * m : 3 * m], g[:, 3 * m :]
            c_prev = cells[t - 1] if t > 0 else c0
            tc = torch.tanh(cells[t])
            dc = dc_next + dh * o * (1 - tc * tc)
            dg = d_gates[t]
            dg[:, :m] = dc * gg * i * (1 - i)
            dg[:, m : 2 * m] = dc * c_prev * f * (1 - f)
            dg[:, 2 * m : 3 * m] = dc * i * (1 - gg * gg)
            dg[:, 3 * m :] = dh * tc * o * (1 - o)
            dc_next = dc * f
            dy_rec = dg @ w_hh
        dh0 = _ghost_backward(dy_rec, y0[:, m:], ghost_w, ctx.activation, d_pre[0])
        return (d_gates, dh0, dc_next, *_weight_grads(d_gates, y, y0, d_pre), None)


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
            CHEAP_OPERATIONS[cheap_op](self.intrinsic_size, ghost, activation) if ghost else None
        )
        # The fused kernel is used whenever it is exact; tests switch it off to check the scan.
        self.use_fused = True

    @property
    def state_size(self) -> int:
        return self.intrinsic_size * (2 if self.cell == "lstm" else 1)

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

    def folded_weights(self) -> tuple[Tensor, Tensor]:
        """Recurrent weights of the equivalent width-m cell: U_h + U_g A and b_hh + U_g c."""
        m = self.intrinsic_size
        if self.ghost is None:
            return self.weight_hh, self.bias_hh
        ghost_w, ghost_b = self.ghost.affine()
        u_h, u_g = self.weight_hh[:, :m], self.weight_hh[:, m:]
        return torch.addmm(u_h, u_g, ghost_w), torch.addmv(self.bias_hh, u_g, ghost_b)

    def full_state(self, h: Tensor) -> Tensor:
        """y = [h ; phi(h)] for intrinsic state(s) h [..., m]."""
        if self.ghost is None:
            return h
        return torch.cat([h, self.ghost.forward(h)], dim=-1)

    def initial_state(self, batch: int) -> Tensor:
        return self.weight_ih.new_zeros(batch, self.state_size)

    def forward(self, x: Tensor, state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """x [B, T, D], state [B, state_size] -> (y [B, T, H], final state [B, state_size])."""
        if state is None:
            state = self.initial_state(x.shape[0])
        if x.shape[1] == 0:
            return x.new_zeros(x.shape[0], 0, self.hidden_size), state
        m = self.intrinsic_size
        if self.use_fused and self.foldable:
            return self._forward_fused(x, state)
        gi = F.linear(x, self.weight_ih, self.bias_ih).transpose(0, 1).contiguous()
        ghost_w, ghost_b = self.ghost_affine()
        activation = self.ghost.activation if self.ghost is not None else "none"
        if self.cell == "gru":
            y = _GhostGRUScan.apply(
                gi, state, self.weight_hh, self.bias_hh, ghost_w, ghost_b, activation
            )
            new_state = y[-1, :, :m]
        else:
            h0, c0 = state[:, :m], state[:, m:]
            y, c_last = _GhostLSTMScan.apply(
                gi, h0, c0, self.weight_hh, self.bias_hh, ghost_w, ghost_b, activation
            )
            new_state = torch.cat([y[-1, :, :m], c_last], dim=1)
        return y.transpose(0, 1), new_state

    def _forward_fused(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        m = self.intrinsic_size
        w_hh, b_hh = self.folded_weights()
        weights = [self.weight_ih, w_hh, self.bias_ih, b_hh]
        if self.cell == "gru":
            h, h_n = torch._VF.gru(
                x, state[None], weights, True, 1, 0.0, self.training, False, True
            )
            new_state = h_n[0]
        else:
            hx = (state[None, :, :m].contiguous(), state[None, :, m:].contiguous())
            h, h_n, c_n = torch._VF.lstm(x, hx, weights, True, 1, 0.0, self.training, False, True)
            new_state = torch.cat([h_n[0], c_n[0]], dim=1)
        return self.full_state(h), new_state

    def step(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One frame: x [B, D], state [B, state_size] -> (y [B, H], new state).

        Written as few tensor ops as possible: at batch 1 each op costs microseconds of overhead.
        """
        m = self.intrinsic_size
        if self.ghost is None:  # a plain GRU/LSTM: torch's fused cell
            weights = (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
            if self.cell == "gru":
                h = torch.gru_cell(x, state, *weights)
                return h, h
            h, c = torch.lstm_cell(x, (state[:, :m], state[:, m:]), *weights)
            return h, torch.cat([h, c], dim=1)
        ghost_w, ghost_b = self.ghost.affine()
        return compiled_step(self.cell)(
            x,
            state,
            self.weight_ih,
            self.bias_ih,
            self.weight_hh,
            self.bias_hh,
            ghost_w,
            ghost_b,
            self.ghost.activation,
        )

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def macs_per_frame(self) -> int:
        """Multiply-accumulates per frame: input and recurrent projections, the cheap operation and
        the gates' element-wise products (3m for both cells)."""
        rows = self.weight_ih.shape[0]
        cheap = self.ghost.macs() if self.ghost is not None else 0
        return rows * (self.input_size + self.hidden_size) + cheap + 3 * self.intrinsic_size


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

    def set_fused(self, enabled: bool) -> None:
        for layer in self.layers:
            layer.use_fused = enabled

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

    def state_bytes(self, bytes_per_value: int = 4) -> int:
        """Recurrent memory for one stream."""
        return self.num_layers * self.state_size * bytes_per_value

    def macs_per_frame(self) -> int:
        return sum(layer.macs_per_frame() for layer in self.layers)
