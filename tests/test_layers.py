"""GhostRNN layers: the per-frame step is the reference; the scan (forward and hand-written
backward), the fused kernel and the packed export form are each held to it, for every cell,
cheap operation and activation. Also exactness against torch's GRU/LSTM and the counts."""

import math

import pytest
import torch

import kws_ghost.layers as layers
from kws_ghost.layers import GhostRNN, GhostRNNLayer, PackedLayer

CELLS = [("gru", torch.nn.GRU), ("lstm", torch.nn.LSTM)]
ACTIVATIONS = ["none", "tanh", "relu", "sigmoid"]
CHEAP_OPS = ["linear", "elementwise"]


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


def make_rnn(cell, cheap_op="linear", activation="tanh", num_layers=2, ratio=2, seed=0, **kw):
    torch.manual_seed(seed)
    rnn = GhostRNN(cell, 5, 12, num_layers, ratio, cheap_op, activation, **kw)
    for layer in rnn.layers:  # non-zero ghost biases, so that their terms are exercised
        if layer.ghost is not None:
            torch.nn.init.uniform_(layer.ghost.bias, -0.5, 0.5)
    return rnn


def run_steps(rnn, x, state):
    """The reference: ``step`` frame by frame, state carried."""
    outputs = []
    for t in range(x.shape[1]):
        y, state = rnn.step(x[:, t], state)
        outputs.append(y)
    return torch.stack(outputs, 1), state


def gradients(fn, tensors):
    out, state = fn()
    (out.square().sum() + (state * torch.linspace(-1, 1, state.shape[-1])).sum()).backward()
    grads = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out.detach(), state.detach(), grads


# ------------------------------------------------------------------------ torch's GRU/LSTM


@pytest.mark.parametrize("path", ["fused", "scan", "step"])
@pytest.mark.parametrize("cell,reference", CELLS)
def test_ratio_one_equals_torch_rnn(cell, reference, path):
    torch.manual_seed(0)
    rnn = GhostRNN(cell, 12, 16, num_layers=2, ratio=1)
    rnn.set_kernel("fused" if path == "fused" else "scan")
    ref = reference(12, 16, num_layers=2, batch_first=True)
    copy_into_torch(rnn, ref)
    x = torch.randn(3, 25, 12)
    state = 0.5 * torch.randn(2, 3, rnn.state_size)
    y, new_state = run_steps(rnn, x, state) if path == "step" else rnn(x, state)
    y_ref, state_ref = ref(x, torch_state(rnn, state))
    assert y.shape == (3, 25, 16)
    assert torch.allclose(y, y_ref, atol=1e-5)
    if cell == "lstm":
        state_ref = torch.cat(state_ref, dim=-1)
    assert torch.allclose(new_state, state_ref, atol=1e-5)


# ------------------------------------------------------------------------ scan vs step


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("cheap_op", CHEAP_OPS)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_scan_forward_and_backward_equal_the_step(cell, cheap_op, activation, num_layers):
    rnn = make_rnn(cell, cheap_op, activation, num_layers).double()
    rnn.set_kernel("scan")  # the scan, even where the layer could fold
    x = torch.randn(3, 9, 5, dtype=torch.double, requires_grad=True)
    state = (0.5 * torch.randn(num_layers, 3, rnn.state_size, dtype=torch.double)).requires_grad_()
    tensors = [x, state, *rnn.parameters()]
    y_scan, s_scan, g_scan = gradients(lambda: rnn(x, state), tensors)
    y_step, s_step, g_step = gradients(lambda: run_steps(rnn, x, state), tensors)
    assert torch.allclose(y_scan, y_step, atol=1e-10)
    assert torch.allclose(s_scan, s_step, atol=1e-10)
    rnn.set_kernel("scan-inference")  # what eval mode runs: no autograd function
    with torch.inference_mode():
        y_inference, s_inference = rnn(x, state)
    assert torch.allclose(y_inference, y_step, atol=1e-10)
    assert torch.allclose(s_inference, s_step, atol=1e-10)
    names = ["x", "state", *(name for name, _ in rnn.named_parameters())]
    for name, a, b in zip(names, g_scan, g_step):
        assert b.abs().sum() > 0, name  # every gradient is exercised
        assert torch.allclose(a, b, atol=1e-9), name


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("cheap_op", CHEAP_OPS)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_hand_written_backward_passes_gradcheck(cell, cheap_op, activation):
    torch.manual_seed(3)
    layer = GhostRNNLayer(cell, 3, 6, ratio=2, cheap_op=cheap_op, activation=activation).double()
    with torch.no_grad():
        if layer.ghost is not None:
            layer.ghost.bias.uniform_(-0.5, 0.5)
    layer.kernel = "scan"
    x = torch.randn(2, 4, 3, dtype=torch.double, requires_grad=True)
    state = (0.5 * torch.randn(2, layer.state_size, dtype=torch.double)).requires_grad_()
    names = [n for n, _ in layer.named_parameters()]

    def run(x, state, *weights):
        with torch.nn.utils.stateless._reparametrize_module(layer, dict(zip(names, weights))):
            return layer(x, state)

    assert torch.autograd.gradcheck(run, (x, state, *layer.parameters()))


# ------------------------------------------------------------------------ fused vs step


FOLDABLE = [("linear", "none", 2), ("elementwise", "none", 2), ("linear", "tanh", 1)]


@pytest.mark.parametrize("cheap_op,activation,ratio", FOLDABLE)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_path_is_taken_and_equals_the_step(cell, cheap_op, activation, ratio):
    rnn = make_rnn(cell, cheap_op, activation, num_layers=2, ratio=ratio).double()
    assert [layer.kernel_in_use() for layer in rnn.layers] == ["fused", "fused"]
    x = torch.randn(3, 8, 5, dtype=torch.double, requires_grad=True)
    state = (0.5 * torch.randn(2, 3, rnn.state_size, dtype=torch.double)).requires_grad_()
    tensors = [x, state, *rnn.parameters()]
    y_fused, s_fused, g_fused = gradients(lambda: rnn(x, state), tensors)
    y_step, s_step, g_step = gradients(lambda: run_steps(rnn, x, state), tensors)
    assert torch.allclose(y_fused, y_step, atol=1e-10)
    assert torch.allclose(s_fused, s_step, atol=1e-10)
    names = ["x", "state", *(name for name, _ in rnn.named_parameters())]
    for name, a, b in zip(names, g_fused, g_step):
        assert b.abs().sum() > 0, name
        assert torch.allclose(a, b, atol=1e-9), name


@pytest.mark.parametrize("cheap_op", CHEAP_OPS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_each_path_names_the_kernel_it_runs(cell, cheap_op, activation):
    """The rule, stated: fused where exact (no activation after the cheap operation), else the
    scan in train mode and the scan without a backward in eval mode; what a caller sets wins,
    and the fused kernel is refused where it would not be exact."""
    rnn = make_rnn(cell, cheap_op, activation)
    foldable = activation == "none"
    expected = "fused" if foldable else "scan"
    assert [layer.kernel_in_use() for layer in rnn.layers] == [expected] * 2
    rnn.eval()
    expected = "fused" if foldable else "scan-inference"
    assert [layer.kernel_in_use() for layer in rnn.layers] == [expected] * 2
    x = torch.randn(2, 6, 5)
    reference, _ = run_steps(rnn, x, rnn.initial_state(2))
    for kernel in ("scan", "scan-inference", "step"):
        rnn.set_kernel(kernel)
        assert [layer.kernel_in_use() for layer in rnn.layers] == [kernel] * 2
        assert torch.allclose(rnn(x)[0], reference, atol=1e-5), kernel
    if not foldable:
        with pytest.raises(ValueError, match="exact only"):
            rnn.set_kernel("fused")


# ------------------------------------------------------------------------ packed vs step


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("cheap_op", CHEAP_OPS)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_packed_layer_equals_the_step(cell, cheap_op, activation):
    layer = make_rnn(cell, cheap_op, activation, num_layers=1).layers[0]
    packed = PackedLayer(layer)
    x, state = torch.randn(4, 5), 0.5 * torch.randn(4, layer.state_size)
    with torch.no_grad():
        y, new_state = layer.step(x, state)
        y_parts, packed_state = packed.step([x], state)
    assert len(y_parts) == 2  # [h, g]: the next consumer concatenates them once
    assert torch.allclose(torch.cat(y_parts, -1), y, atol=1e-6)
    assert torch.allclose(packed_state, new_state, atol=1e-6)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_packed_layer_equals_the_step(cell):
    layer = make_rnn(cell, num_layers=1, ratio=1).layers[0]
    packed = PackedLayer(layer, fused=True)
    x, state = torch.randn(4, 5), 0.5 * torch.randn(4, layer.state_size)
    with torch.no_grad():
        y, new_state = layer.step(x, state)
        (h,), packed_state = packed.step([x[None]], state[None])  # time-major, one frame
    assert torch.allclose(h[0], y, atol=1e-6) and torch.allclose(
        packed_state[0], new_state, atol=1e-6
    )
    with pytest.raises(ValueError, match="fold the model first"):
        PackedLayer(make_rnn(cell, num_layers=1).layers[0], fused=True)


# ------------------------------------------------------------------------ folding identities


def test_folded_weights_reproduce_the_ghost_recurrence():
    torch.manual_seed(5)
    layer = GhostRNNLayer("gru", 5, 12, ratio=3, cheap_op="elementwise", activation="none")
    torch.nn.init.uniform_(layer.ghost.bias, -0.5, 0.5)
    w_hh, b_hh = layer.folded_weights()
    h = torch.randn(4, layer.intrinsic_size)
    full = torch.nn.functional.linear(layer.full_state(h), layer.weight_hh, layer.bias_hh)
    assert torch.allclose(full, torch.nn.functional.linear(h, w_hh, b_hh), atol=1e-5)


def test_absorbed_normalisation_takes_raw_features():
    torch.manual_seed(6)
    weight, bias = torch.randn(6, 4), torch.randn(6)
    mean, std = torch.tensor([-300.0, 2.0, 0.5, 9.0]), torch.tensor([40.0, 3.0, 0.2, 1.0])
    raw = torch.randn(5, 4) * std + mean
    w, b = layers.absorb_normalization(weight, bias, mean, std)
    expected = torch.nn.functional.linear((raw - mean) / std, weight, bias)
    assert torch.allclose(torch.nn.functional.linear(raw, w, b), expected, atol=1e-4)


def test_fold_into_refuses_an_activation():
    rnn = make_rnn("gru", activation="tanh")
    with pytest.raises(ValueError, match="no activation"):
        rnn.fold_into(make_rnn("gru", ratio=1))


def test_elementwise_cheap_operation_is_its_dense_affine():
    torch.manual_seed(7)
    op = layers.ElementwiseCheapOperation(4, 7, "tanh")
    h = torch.randn(3, 4)
    expected = torch.tanh(h[:, torch.arange(7) % 4] * op.scale + op.bias)
    assert torch.allclose(op(h), expected, atol=1e-6)


@pytest.mark.parametrize("intrinsic, ghost", [(64, 64), (75, 37), (4, 7)])
def test_orthogonal_cheap_init_keeps_the_intrinsic_norm(intrinsic, ghost):
    """Orthogonal: the ghost states start as large as the intrinsic ones (A's rows, or columns
    where there are more ghost than intrinsic dimensions, orthonormal; elementwise +-1 copies);
    uniform, the default, starts them at about 1/sqrt(3) of it."""
    torch.manual_seed(3)
    weight = layers.LinearCheapOperation(intrinsic, ghost, init="orthogonal").weight.detach()
    gram = weight @ weight.T if ghost <= intrinsic else weight.T @ weight
    assert torch.allclose(gram, torch.eye(min(intrinsic, ghost)), atol=1e-5)
    scale = layers.ElementwiseCheapOperation(intrinsic, ghost, init="orthogonal").scale
    assert torch.equal(scale.abs(), torch.ones(ghost))
    uniform = layers.LinearCheapOperation(intrinsic, ghost).weight.detach()
    assert uniform.abs().max() <= 1 / math.sqrt(intrinsic)
    assert not torch.allclose(uniform @ uniform.T, torch.eye(ghost), atol=0.1)


def test_cheap_init_reaches_every_layer_from_the_model_config():
    from kws_ghost.config import ModelConfig
    from kws_ghost.errors import KwsError
    from kws_ghost.models import KeywordModel

    model = KeywordModel(ModelConfig(hidden=16, ratio=2, cheap_init="orthogonal"))
    for layer in model.rnn.layers:
        weight = layer.ghost.weight.detach()
        assert torch.allclose(weight @ weight.T, torch.eye(8), atol=1e-5)
    with pytest.raises(KwsError, match="cheap-operation initialisation"):
        ModelConfig(cheap_init="zeros").validate()


# ------------------------------------------------------------------------ counts and state


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
@pytest.mark.parametrize("cheap_op", CHEAP_OPS)
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


def test_empty_sequence_keeps_state():
    rnn = GhostRNN("gru", 3, 8, num_layers=1, ratio=2)
    state = torch.randn(1, 2, rnn.state_size)
    y, new_state = rnn(torch.zeros(2, 0, 3), state)
    assert y.shape == (2, 0, 8) and torch.equal(new_state, state)
