"""The GhostRNN cell, written once (Zhou et al., Interspeech 2023).

A ghost layer of width H and ratio s keeps m = ceil(H / s) *intrinsic* state dimensions h with the
full recurrence, and derives the other H - m *ghost* dimensions with a cheap operation g = phi(h).
The layer's output, and the input to its own recurrence, is y = [h ; g]. ``gru_update`` /
``lstm_update`` are the gates and the state update, ``ghost_parts`` the cheap operation, and
``cell_step`` wires them into one frame of a layer around a *projection* (the matrix products
that give the gates' pre-activations). Every kernel (``kws_ghost.kernels``) and layer
(``kws_ghost.layers``) runs these functions; the tests hold them to an independent reference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

Projection = Callable[[list[Tensor], list[Tensor]], tuple[Tensor, ...]]
Ghost = Callable[[Tensor], list[Tensor]]


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


_onnx_spelling = False  # set by ``onnx_spelling`` while export traces the model


@contextlib.contextmanager
def onnx_spelling() -> Iterator[None]:
    """Write the cell's ops as ONNX wants them while export traces it (a mode its caller sets):
    ``linear`` as MatMul + Add, ``lerp`` and ``addcmul`` as their arithmetic."""
    global _onnx_spelling
    previous, _onnx_spelling = _onnx_spelling, True
    try:
        yield
    finally:
        _onnx_spelling = previous


def linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x W^T + b (``weight`` [out, in], as ``nn.Linear``). Under ONNX export it is spelt MatMul +
    Add: dynamic int8 quantisation only quantises MatMuls, and onnxruntime fuses the pair into a
    Gemm when it loads a float graph."""
    if _onnx_spelling:
        return torch.matmul(x, weight.t()) + bias
    return F.linear(x, weight, bias)


def cat(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def _lerp(start: Tensor, end: Tensor, weight: Tensor) -> Tensor:
    if _onnx_spelling:  # the exporters write torch.lerp as a dozen nodes
        return start + weight * (end - start)
    return torch.lerp(start, end, weight)


def _addcmul(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    if _onnx_spelling:  # ... and addcmul with a third Mul, by its value 1
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
