"""The kernels that run a GhostRNN layer over a sequence, and the choice between them.

* ``step``: ``cell_step`` frame by frame, the reference (``GhostRNNLayer.step``);
* ``scan``: ``cell_step``'s recurrence over time inside a custom autograd function, with the
  input projection of all frames hoisted into one matmul and a hand-written backward, the step's
  derivative (gradcheck, and autograd through the step, check it): training;
* ``scan-inference``: the same recurrence, no graph kept (as torch's cuDNN RNN, it gives no
  gradients): a model in eval mode; ``set_kernel("scan")`` for gradients in eval mode;
* ``fused``: when phi is linear with no activation (or absent), U y = (U_h + U_g A) h + U_g c, so
  the layer is a GRU/LSTM of width m with folded recurrent weights and torch's fused kernel runs
  it, exactly.

``choose_kernel`` is the one rule: what the caller asked for (``GhostRNN.set_kernel``), else
``fused`` where it is exact, else ``scan`` in train mode and ``scan-inference`` in eval mode.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from kws_ghost.cell import activate, activation_grad, gru_update, lstm_update, split_projection

KERNELS = ("auto", "fused", "scan", "scan-inference", "step")


def choose_kernel(requested: str, foldable: bool, training: bool) -> str:
    """The kernel a layer runs: ``requested`` unless ``auto``; ``fused`` is refused where it
    would not be exact (a cheap operation with an activation)."""
    if requested not in KERNELS:
        raise ValueError(f"unknown kernel {requested!r}: use {', '.join(KERNELS)}")
    if requested == "fused" and not foldable:
        raise ValueError("the fused kernel is exact only for cheap operations without activation")
    if requested != "auto":
        return requested
    if foldable:
        return "fused"
    return "scan" if training else "scan-inference"


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
    d_pre_flat = d_pre.reshape(d_pre.shape[0] * d_pre.shape[1], width - m)  # may be 0 wide
    return d_flat.t() @ y_prev, d_flat.sum(0), d_pre_flat.t() @ h_all, d_pre_flat.sum(0)


def scan_recurrence(
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


class GhostGRUScan(torch.autograd.Function):
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
        y, y0, _, saved = scan_recurrence("gru", gi, h0, w_hh, b_hh, ghost_w, ghost_b, activation)
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


class GhostLSTMScan(torch.autograd.Function):
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
        y, y0, _, saved = scan_recurrence(
            "lstm", gi, state, w_hh, b_hh, ghost_w, ghost_b, activation
        )
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
