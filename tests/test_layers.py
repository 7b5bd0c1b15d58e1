"""GhostRNN layers: exactness against torch's GRU/LSTM, step == sequence, gradients, counts."""

import math

import pytest
import torch

from kws_ghost.layers import GhostRNN, GhostRNNLayer

CELLS = [("gru", torch.nn.GRU), ("lstm", torch.nn.LSTM)]


def copy_into_torch(rnn: GhostRNN, ref: torch.nn.RNNBase) -> None:
    with torch.no_grad():
        for i, layer in enumerate(rnn.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(ref, f"{name}_l{i}").copy_(getattr(layer, name))


def torch_state(rnn: GhostRNN, state: torch.Tensor):
    if rnn.cell == "gru":
        return state
    m = rnn.intrinsic_size
    return (state[..., :m].contiguous(), state[..., m:].contiguous())


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("cell,reference", CELLS)
def test_ratio_one_equals_torch_rnn(cell, reference, fused):
    torch.manual_seed(0)
    rnn = GhostRNN(cell, 12, 16, num_layers=2, ratio=1)
    rnn.set_fused(fused)
    ref = reference(12, 16, num_layers=2, batch_first=True)
    copy_into_torch(rnn, ref)
    x = torch.randn(3, 25, 12)
    state = 0.5 * torch.randn(2, 3, rnn.state_size)
    y, new_state = rnn(x, state)
    y_ref, state_ref = ref(x, torch_state(rnn, state))
    assert y.shape == (3, 25, 16)
    assert torch.allclose(y, y_ref, atol=1e-5)
    if cell == "gru":
        assert torch.allclose(new_state, state_ref, atol=1e-5)
    else:
        assert torch.allclose(new_state, torch.cat(state_ref, dim=-1), atol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("cheap_op", ["linear", "elementwise"])
@pytest.mark.parametrize("activation", ["none", "tanh", "relu"])
def test_step_equals_sequence(cell, cheap_op, activation):
    torch.manual_seed(1)
    rnn = GhostRNN(cell, 10, 24, num_layers=2, ratio=3, cheap_op=cheap_op, activation=activation)
    rnn.eval()
    x = torch.randn(2, 17, 10)
    state = 0.3 * torch.randn(2, 2, rnn.state_size)
    y, final = rnn(x, state)
    s = state
    for t in range(x.shape[1]):
        y_t, s = rnn.step(x[:, t], s)
        assert torch.allclose(y_t, y[:, t], atol=1e-5), t
    assert torch.allclose(s, final, atol=1e-5)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("activation", ["none", "tanh"])
def test_fused_path_equals_scan_path(cell, activation):
    torch.manual_seed(2)
    layer = GhostRNNLayer(cell, 8, 20, ratio=2, cheap_op="linear", activation=activation)
    x = torch.randn(4, 9, 8)
    outputs = []
    for fused in (True, False):
        layer.use_fused = fused
        y, s = layer(x)
        (y.square().sum() + s.sum()).backward()
        grads = [p.grad.clone() for p in layer.parameters()]
        layer.zero_grad()
        outputs.append((y.detach(), s.detach(), grads))
    (y1, s1, g1), (y2, s2, g2) = outputs
    assert torch.allclose(y1, y2, atol=1e-5) and torch.allclose(s1, s2, atol=1e-5)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("cheap_op", ["linear", "elementwise"])
def test_hand_written_backward_passes_gradcheck(cell, cheap_op):
    torch.manual_seed(3)
    layer = GhostRNNLayer(cell, 4, 6, ratio=2, cheap_op=cheap_op, activation="tanh").double()
    layer.use_fused = False
    x = torch.randn(2, 5, 4, dtype=torch.double, requires_grad=True)
    state = (0.5 * torch.randn(2, layer.state_size, dtype=torch.double)).requires_grad_()
    params = list(layer.parameters())

    def run(x, state, *weights):
        with torch.nn.utils.stateless._reparametrize_module(
            layer, dict(zip([n for n, _ in layer.named_parameters()], weights))
        ):
            return layer(x, state)

    assert torch.autograd.gradcheck(run, (x, state, *params))


@pytest.mark.parametrize("arch_cell", ["gru", "lstm"])
@pytest.mark.parametrize("activation", ["none", "tanh"])
def test_gradients_reach_every_parameter(arch_cell, activation):
    torch.manual_seed(4)
    rnn = GhostRNN(arch_cell, 6, 12, num_layers=2, ratio=2, activation=activation, dropout=0.1)
    y, state = rnn(torch.randn(3, 7, 6))
    y.sum().backward()
    for name, p in rnn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def closed_form_params(cell, d, h, s, cheap_op):
    gates = 3 if cell == "gru" else 4
    m = math.ceil(h / s)
    recurrence = gates * m * (d + h) + 2 * gates * m
    ghost = h - m
    cheap = ghost * m + ghost if cheap_op == "linear" else 2 * ghost
    return recurrence + (cheap if ghost else 0)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("cheap_op", ["linear", "elementwise"])
@pytest.mark.parametrize("d,h,s", [(40, 128, 2), (40, 128, 1), (13, 50, 3), (128, 64, 1.5)])
def test_parameter_count_matches_closed_form(cell, cheap_op, d, h, s):
    layer = GhostRNNLayer(cell, d, h, ratio=s, cheap_op=cheap_op)
    assert layer.num_params() == closed_form_params(cell, d, h, s, cheap_op)


def test_design_note_parameter_figures():
    # design.md: D 40, H 128, s 2, linear phi -> GRU 65,280 vs GhostGRU 36,800 (-43.6%).
    assert GhostRNNLayer("gru", 40, 128, ratio=1).num_params() == 65280
    assert GhostRNNLayer("gru", 40, 128, ratio=2, cheap_op="linear").num_params() == 36800
    ref = torch.nn.GRU(40, 128)
    assert sum(p.numel() for p in ref.parameters()) == 65280


def test_state_holds_only_intrinsic_dimensions():
    rnn = GhostRNN("gru", 40, 128, num_layers=2, ratio=2)
    assert rnn.initial_state(5).shape == (2, 5, 64)
    lstm = GhostRNN("lstm", 40, 128, num_layers=2, ratio=4)
    assert lstm.initial_state(1).shape == (2, 1, 64)  # h and c, 32 each
    assert rnn.state_bytes() == 2 * 64 * 4


def test_folded_weights_reproduce_the_ghost_recurrence():
    torch.manual_seed(5)
    layer = GhostRNNLayer("gru", 5, 12, ratio=3, cheap_op="elementwise", activation="none")
    w_hh, b_hh = layer.folded_weights()
    h = torch.randn(4, layer.intrinsic_size)
    full = torch.nn.functional.linear(layer.full_state(h), layer.weight_hh, layer.bias_hh)
    assert torch.allclose(full, torch.nn.functional.linear(h, w_hh, b_hh), atol=1e-5)


def test_empty_sequence_keeps_state():
    rnn = GhostRNN("gru", 3, 8, num_layers=1, ratio=2)
    state = torch.randn(1, 2, rnn.state_size)
    y, new_state = rnn(torch.zeros(2, 0, 3), state)
    assert y.shape == (2, 0, 8) and torch.equal(new_state, state)
