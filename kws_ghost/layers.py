"""GhostRNN layers (Zhou et al., Interspeech 2023) and their plain GRU / LSTM special cases.

A ghost layer of width H and ratio s keeps m = ceil(H / s) *intrinsic* state dimensions h with the
full recurrence, and derives the other H - m *ghost* dimensions with a cheap operation g = phi(h).
The layer's output, and the input to its own recurrence, is y = [h ; g]. Only h (and, for the LSTM,
the cell c) is state; g is recomputed, so streaming state is m (2m) floats per layer, not H.

With s = 1 there is no ghost part and the layer is exactly ``torch.nn.GRU`` / ``torch.nn.LSTM``
(same parameter layout), which is how the ``gru`` and ``lstm`` baselines are built: one code path.

The recurrence is written once. ``gru_update`` / ``lstm_update`` are the gates and the state
update, ``ghost_parts`` the cheap operation, and ``cell_step`` wires them into one frame of a layer
around a *projection* (the matrix products that give the gates' pre-activations). The per-frame
step is the reference; every other path is that step, and the tests hold each to it:

* step (``GhostRNNLayer.step``): one frame, state in and out, for streaming;
* scan (training, any cheap operation): ``cell_step`` run over time inside a custom autograd
  function, with the input projection of all frames hoisted into one matmul and a hand-written
  backward, the step's derivative (gradcheck, and autograd through the step, check it);
* fused: when phi is linear with no activation (or absent), U y = (U_h + U_g A) h + U_g c, so the
  layer is a GRU/LSTM of width m with folded recurrent weights and torch's fused kernel runs it;
* packed (``PackedLayer``, for export): ``cell_step`` with both products as one over [x ; y].

The folding identities (``absorb_ghost``, ``absorb_normalization``) live here too; export uses them.
State tensors are ``[layers, batch, state_size]`` with state_size = m for GRU and 2m (h, then c)
for LSTM, so a runtime carries one tensor whatever the cell.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kws_ghost.config import ACTIVATIONS

GATES = {"gru": 3, "lstm": 4}
GATE_PARAMETERS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
Projection = Callable[[list[Tensor], list[Tensor]], tuple[Tensor, ...]]
Ghost = Callable[[Tensor], list[Tensor]]


# ------------------------------------------------------------------------------ the cell, once


def activate(v: Tensor, name: str) -> Tensor:
    if name == "tanh":
        return torch.tanh(v)
    if name == "relu":
        return torch.relu(v)
    if name == "sigmoid":
        return torch.sigmoid(v)
    return v


def activation_grad(name: str, out: Tensor) -> Optional[Tensor]:
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


def _exporting() -> bool:
    """True while torch.onnx.export traces the model (it traces: ``torch.jit.is_tracing``, which
    costs 0.4 us against 4 us for ``torch.onnx.is_in_onnx_export``, called thrice a frame)."""
    return torch.jit.is_tracing()


def linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x W^T + b (``weight`` [out, in], as ``nn.Linear``). Under ONNX export it is spelt MatMul +
    Add: dynamic int8 quantisation only quantises MatMuls, and onnxruntime fuses the pair into a
    Gemm when it loads a float graph."""
    if _exporting():
        return torch.matmul(x, weight.t()) + bias
    return F.linear(x, weight, bias)


def cat(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def _lerp(start: Tensor, end: Tensor, weight: Tensor) -> Tensor:
    if _exporting():  # the exporters write torch.lerp as a dozen nodes
        return start + weight * (end - start)
    return torch.lerp(start, end, weight)


def _addcmul(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    if _exporting():  # ... and addcmul with a third Mul, by its value 1
        return x + a * b
    return torch.addcmul(x, a, b)


def gru_update(
    r_pre: Tensor, z_pre: Tensor, x_n: Tensor, h_n: Tensor, h: Tensor
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The GRU's gates and update from their pre-activations -> (h', (r, z, n)):
    r = sigmoid(r_pre), z = sigmoid(z_pre), n = tanh(x_n + r * h_n), h' = (1 - z) * n + z * h,
    with r_pre = W_r x + U_r y + b_r (z_pre alike), x_n = W_n x + b_in, h_n = U_n y + b_hn."""
    r, z = torch.sigmoid(r_pre), torch.sigmoid(z_pre)
    n = torch.tanh(_addcmul(x_n, r, h_n))
    return _lerp(n, h, z), (r, z, n)


def lstm_update(
    i: Tensor, f: Tensor, g: Tensor, o: Tensor, c: Tensor
) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
    """The LSTM's gates (order i, f, g, o as torch.nn.LSTM) from their pre-activations and its
    update -> (h', c', (i, f, g, o) activated): c' = f * c + i * g, h' = o * tanh(c'), with i, f, o
    sigmoids and g = tanh."""
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = _addcmul(f * c, i, g)
    return o * torch.tanh(c), c, (i, f, g, o)


def ghost_parts(weight: Optional[Tensor], bias: Tensor, activation: str) -> Ghost:
    """phi as a function h -> [act(A h + c)] (``[]`` when ``weight`` is None: no ghost part)."""
    if weight is None:
        return lambda h: []
    return lambda h: [activate(linear(h, weight, bias), activation)]


def split_projection(cell: str, m: int, gi: Tensor, gh: Tensor) -> tuple[Tensor, ...]:
    """The gates' pre-activations from the input (gi = W x + b_ih) and recurrent (gh = U y + b_hh)
    products: GRU (r_pre, z_pre, x_n, h_n), LSTM (i, f, g, o). Sizes are given, not read from
    shapes, so that a traced graph holds no shape arithmetic."""
    if cell == "lstm":
        return (gi + gh).split([m, m, m, m], dim=-1)
    rz = gi[..., : 2 * m] + gh[..., : 2 * m]
    return (*rz.split([m, m], dim=-1), gi[..., 2 * m :], gh[..., 2 * m :])


def cell_step(
    cell: str,
    m: int,
    x_parts: list[Tensor],
    state: Tensor,
    project: Projection,
    ghost: Ghost,
    y_parts: Optional[list[Tensor]] = None,
) -> tuple[list[Tensor], Tensor, tuple[Tensor, ...]]:
    """One frame of a GhostGRU / GhostLSTM layer of intrinsic width ``m``: the only place the
    recurrence is written.

    ``x_parts``: the frame's input as parts (concatenated they are x); ``state`` [B, S] (GRU: h,
    LSTM: [h ; c]); ``project(x_parts, y_parts)``: the gates' pre-activations (``split_projection``
    order); ``ghost(h)``: ``[phi(h)]`` or ``[]``; ``y_parts``: [h ; phi(h)] of the state when the
    caller has it already (the scan), else recomputed. Returns the output's parts
    ``[h', phi(h')]``, the new state, and what the backward needs: GRU (r, z, n, h_n), LSTM
    (i, f, g, o, c').
    """
    if cell == "gru":
        h = state
        if y_parts is None:
            y_parts = [h, *ghost(h)]
        pre = project(x_parts, y_parts)
        h, gates = gru_update(*pre, h)
        return [h, *ghost(h)], h, (*gates, pre[3])
    h, c = state.split([m, m], dim=-1)
    if y_parts is None:
        y_parts = [h, *ghost(h)]
    h, c, gates = lstm_update(*project(x_parts, y_parts), c)
    return [h, *ghost(h)], torch.cat([h, c], dim=-1), (*gates, c)


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
        return activate(F.linear(h, weight, bias), self.activation)


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


CHEAP_OPERATIONS = {"linear": LinearCheapOperation, "elementwise": ElementwiseCheapOperation}


# ------------------------------------------------------------------------------ the scans


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
    local = activation_grad(activation, ghost_out)
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


def _scan(
    cell: str,
    gi: Tensor,
    state: Tensor,
    w_hh: Tensor,
    b_hh: Tensor,
    ghost_w: Tensor,
    ghost_b: Tensor,
    activation: str,
    keep: bool = True,
) -> tuple[Tensor, Tensor, Tensor, list[tuple[Tensor, ...]]]:
    """``cell_step``'s recurrence over time, with the input projection of every frame given
    (``gi[t]``) -> (y [T, B, H], y0 = [h0 ; phi(h0)], final state, what each step saved: GRU
    (r, z, n, h_n), LSTM (i, f, g, o, c')).

    The same ``split_projection`` and ``gru_update`` / ``lstm_update`` as the step, called
    directly: a frame is a dozen small ops, and at training batch sizes the Python around them
    (closures, lists) cost as much as the ops themselves.
    """
    m = ghost_w.shape[1]
    has_ghost = ghost_w.shape[0] > 0
    w_t, ghost_t = w_hh.t(), ghost_w.t()

    def full(h: Tensor, out: Optional[Tensor] = None) -> Tensor:
        """[h ; phi(h)], written into ``out`` when given."""
        if not has_ghost:
            return h if out is None else out.copy_(h)
        g = activate(torch.addmm(ghost_b, h, ghost_t), activation)
        return torch.cat([h, g], dim=1) if out is None else torch.cat([h, g], dim=1, out=out)

    h, c = (state, state) if cell == "gru" else state.split([m, m], dim=-1)
    y0 = full(h)
    y = gi.new_empty(gi.shape[0], *y0.shape)
    y_prev, saved = y0, []
    for t in range(gi.shape[0]):
        pre = split_projection(cell, m, gi[t], torch.addmm(b_hh, y_prev, w_t))
        if cell == "gru":
            h, gates = gru_update(*pre, h)
            step_saved = (*gates, pre[3])
        else:
            h, c, gates = lstm_update(*pre, c)
            step_saved = (*gates, c)
        if keep:  # for the backward; inference keeps nothing
            saved.append(step_saved)
        y_prev = full(h, out=y[t])
    final = h if cell == "gru" else torch.cat([h, c], dim=-1)
    return y, y0, final, saved


class _GhostGRUScan(torch.autograd.Function):
    """GhostGRU over a sequence with a hand-written backward (the derivative of ``cell_step``).

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
        y, y0, _, saved = _scan("gru", gi, h0, w_hh, b_hh, ghost_w, ghost_b, activation)
        r, z, n, h_n = (torch.stack(parts) for parts in zip(*saved))
        ctx.activation = activation
        ctx.save_for_backward(y, y0, r, z, n, h_n, w_hh, ghost_w)
        return y

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, dy: Tensor):  # type: ignore[override]
        y, y0, r, z, n, h_n, w_hh, ghost_w = ctx.saved_tensors
        steps, batch, width = y.shape
        m = y0.shape[1] - ghost_w.shape[0]
        dy = dy.contiguous()
        # What does not depend on the recurrence, for every step at once (a few large ops
        # instead of many small ones in the loop):
        h_prev = torch.cat([y0[None, :, :m], y[:-1, :, :m]], dim=0)
        to_n = (1 - z) * (1 - n * n)  # d(n's pre-activation) / d h'
        to_z = (h_prev - n) * z * (1 - z)  # d(z's pre-activation) / d h'
        to_r = h_n * r * (1 - r)  # d(r's pre-activation) / d(n's pre-activation)
        local = activation_grad(ctx.activation, y[:, :, m:]) if width > m else None
        d_gi = y.new_empty(steps, batch, 3 * m)  # grads of W x + b_ih per step
        d_gh_n = y.new_empty(steps, batch, m)  # grads of U_n y + b_hn per step
        d_pre = y.new_zeros(steps + 1, batch, width - m)  # grads of A h + c (row 0: for y0)
        dy_rec = y.new_zeros(batch, width)  # grad reaching y_t through step t+1's U y_t
        dh_next = y.new_zeros(batch, m)  # grad reaching h_t through step t+1's z * h_t
        w_rz, w_n = w_hh[: 2 * m], w_hh[2 * m :]
        for t in range(steps - 1, -1, -1):
            dyt = dy[t] + dy_rec
            dh = dyt[:, :m] + dh_next
            if width > m:
                d_ghost = dyt[:, m:] if local is None else torch.mul(dyt[:, m:], local[t])
                d_pre[t + 1] = d_ghost
                dh = torch.addmm(dh, d_ghost, ghost_w)
            d_n = torch.mul(dh, to_n[t], out=d_gi[t, :, 2 * m :])
            torch.mul(d_n, to_r[t], out=d_gi[t, :, :m])
            torch.mul(dh, to_z[t], out=d_gi[t, :, m : 2 * m])
            torch.mul(d_n, r[t], out=d_gh_n[t])
            dh_next = dh * z[t]
            dy_rec = torch.addmm(d_gh_n[t] @ w_n, d_gi[t, :, : 2 * m], w_rz)
        # Gradient into the initial full state y0 = [h0 ; phi(h0)].
        dh0 = _ghost_backward(dy_rec, y0[:, m:], ghost_w, ctx.activation, d_pre[0]) + dh_next
        d_gh = torch.cat([d_gi[:, :, : 2 * m], d_gh_n], dim=2)  # r and z: the same as d_gi's
        return d_gi, dh0, *_weight_grads(d_gh, y, y0, d_pre), None


class _GhostLSTMScan(torch.autograd.Function):
    """GhostLSTM over a sequence with a hand-written backward; gate order i, f, g, o.

    Inputs: gi [T, B, 4m], state [B, 2m] = [h0 ; c0], w_hh [4m, H], b_hh [4m], A [G, m], c [G].
    Outputs: y [T, B, H] and the final cell state [B, m].
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(  # type: ignore[override]
        ctx: Any,
        gi: Tensor,
        state: Tensor,
        w_hh: Tensor,
        b_hh: Tensor,
        ghost_w: Tensor,
        ghost_b: Tensor,
        activation: str,
    ) -> tuple[Tensor, Tensor]:
        y, y0, _, saved = _scan("lstm", gi, state, w_hh, b_hh, ghost_w, ghost_b, activation)
        i, f, g, o, cells = (torch.stack(parts) for parts in zip(*saved))
        c0 = state[:, ghost_w.shape[1] :]
        ctx.activation = activation
        ctx.save_for_backward(y, y0, c0, i, f, g, o, cells, w_hh, ghost_w)
        return y, cells[-1].clone()

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx: Any, dy: Tensor, dc_last: Tensor):  # type: ignore[override]
        y, y0, c0, i_all, f_all, g_all, o_all, cells, w_hh, ghost_w = ctx.saved_tensors
        steps, batch, width = y.shape
        m = c0.shape[1]
        dy = dy.contiguous()
        d_gates = y.new_empty(steps, batch, 4 * m)
        d_pre = y.new_zeros(steps + 1, batch, width - m)
        dy_rec = y.new_zeros(batch, width)
        dc_next = dc_last.clone() if dc_last is not None else y.new_zeros(batch, m)
        for t in range(steps - 1, -1, -1):
            dh = _ghost_backward(dy[t] + dy_rec, y[t, :, m:], ghost_w, ctx.activation, d_pre[t + 1])
            i, f, gg, o = i_all[t], f_all[t], g_all[t], o_all[t]
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
        d_state = torch.cat([dh0, dc_next], dim=1)
        return (d_gates, d_state, *_weight_grads(d_gates, y, y0, d_pre), None)


def fused_rnn(
    cell: str,
    x: Tensor,
    state: Tensor,
    weights: list[Tensor],
    training: bool = False,
    batch_first: bool = True,
) -> tuple[Tensor, Tensor]:
    """torch's fused GRU/LSTM kernel (one layer, width m, weights in torch.nn.GRU/LSTM order):
    x [B, T, D] (or [T, B, D]), state [1, B, S] -> (h for every frame, final state [1, B, S])."""
    if cell == "gru":
        return torch._VF.gru(x, state, weights, True, 1, 0.0, training, False, batch_first)
    m = weights[1].shape[1]
    hx = tuple(part.contiguous() for part in state.split([m, m], dim=-1))  # cuDNN wants them so
    h, h_n, c_n = torch._VF.lstm(x, hx, weights, True, 1, 0.0, training, False, batch_first)
    return h, torch.cat([h_n, c_n], dim=-1)


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

    def forward(self, x: Tensor, state: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """x [B, T, D], state [B, state_size] -> (y [B, T, H], final state [B, state_size])."""
        if state is None:
            state = self.initial_state(x.shape[0])
        if x.shape[1] == 0:
            return x.new_zeros(x.shape[0], 0, self.hidden_size), state
        if self.use_fused and self.foldable:
            return self._forward_fused(x, state)
        m = self.intrinsic_size
        gi = F.linear(x, self.weight_ih, self.bias_ih).transpose(0, 1).contiguous()
        args = (self.weight_hh, self.bias_hh, *self.ghost_affine(), self.activation)
        if not torch.is_grad_enabled() and not torch.is_autocast_enabled(x.device.type):
            # inference: the scan alone, nothing kept for a backward
            y, _, new_state, _ = _scan(self.cell, gi, state, *args, keep=False)
            return y.transpose(0, 1), new_state
        if self.cell == "gru":
            y = _GhostGRUScan.apply(gi, state, *args)
            new_state = y[-1, :, :m]
        else:
            y, c_last = _GhostLSTMScan.apply(gi, state, *args)
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

    @property
    def foldable(self) -> bool:
        return all(layer.foldable for layer in self.layers)

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
