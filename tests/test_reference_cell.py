"""An independent reference: GhostGRU and GhostLSTM written here from the paper's equations
(Zhou et al., Interspeech 2023) with plain torch operations, and nothing of kws_ghost's layers,
cell or kernels, against every path the package runs a model by: the per-frame step, the
training scan (forward and gradients), the inference scan, the fused kernel where it is exact,
and the exported ONNX step, for every architecture, cheap operation and activation, on weights
copied from the model.

The equations (torch's gate conventions; y = [h ; g] is the layer's output and what its own
recurrence sees):

    GRU   r = s(W_r x + b_ir + U_r y + b_hr)      z = s(W_z x + b_iz + U_z y + b_hz)
          n = tanh(W_n x + b_in + r * (U_n y + b_hn))      h' = (1 - z) * n + z * h
    LSTM  [i f g o] = W x + b_ih + U y + b_hh; i, f, o = s(.), g = tanh(.)
          c' = f * c + i * g      h' = o * tanh(c')
    ghost g' = act(A h' + c)  (linear: A dense; elementwise: g'_j = act(a_j h'_(j mod m) + c_j))
"""

import numpy as np
import pytest
import torch

from kws_ghost.config import FrontendConfig, ModelConfig
from kws_ghost.models import build_model

ARCHS = ["ghost-gru", "ghost-lstm", "gru", "lstm"]
CHEAP = [("linear", "none"), ("linear", "tanh"), ("linear", "relu"), ("linear", "sigmoid")]
CHEAP += [("elementwise", "none"), ("elementwise", "tanh")]
ACT = {"none": lambda v: v, "tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}


def reference_ghost(h, op, cheap_op, activation):
    """g = act(A h + c) by the cheap operation's own definition (None: no ghost part)."""
    if op is None:
        return h[:, :0]
    if cheap_op == "linear":
        return ACT[activation](h @ op.weight.T + op.bias)
    m, ghosts = h.shape[1], op.bias.shape[0]
    source = torch.arange(ghosts) % m  # each ghost dimension scales one intrinsic dimension
    return ACT[activation](op.scale * h[:, source] + op.bias)


def reference_layer_step(layer, x, state, cell, cheap_op, activation):
    """One frame of one layer, from the equations above."""
    m = layer.weight_hh.shape[0] // (3 if cell == "gru" else 4)
    h = state[:, :m]
    y = torch.cat([h, reference_ghost(h, layer.ghost, cheap_op, activation)], dim=1)
    gi = x @ layer.weight_ih.T + layer.bias_ih
    gh = y @ layer.weight_hh.T + layer.bias_hh
    if cell == "gru":
        r = torch.sigmoid(gi[:, :m] + gh[:, :m])
        z = torch.sigmoid(gi[:, m : 2 * m] + gh[:, m : 2 * m])
        n = torch.tanh(gi[:, 2 * m :] + r * gh[:, 2 * m :])
        h_new = (1 - z) * n + z * h
        new_state = h_new
    else:
        c = state[:, m:]
        pre = gi + gh
        i, f = torch.sigmoid(pre[:, :m]), torch.sigmoid(pre[:, m : 2 * m])
        g, o = torch.tanh(pre[:, 2 * m : 3 * m]), torch.sigmoid(pre[:, 3 * m :])
        c_new = f * c + i * g
        h_new = o * torch.tanh(c_new)
        new_state = torch.cat([h_new, c_new], dim=1)
    out = torch.cat([h_new, reference_ghost(h_new, layer.ghost, cheap_op, activation)], dim=1)
    return out, new_state


def reference_model(model, features, state):
    """Frame logits [B, T, C] and final state of the whole model: normalise, layers, head."""
    config = model.config
    x_all = (features - model.feature_mean) / model.feature_std
    state = state.clone()
    logits = []
    for t in range(features.shape[1]):
        x = x_all[:, t]
        for k, layer in enumerate(model.rnn.layers):
            x, state_k = reference_layer_step(
                layer, x, state[k], config.cell, config.cheap_op, config.cheap_activation
            )
            state = torch.cat([state[:k], state_k[None], state[k + 1 :]])
        logits.append(x @ model.head.weight.T + model.head.bias)
    return torch.stack(logits, 1), state


def make_model(arch, cheap_op, activation, layers=2):
    torch.manual_seed(0)
    config = ModelConfig(
        arch=arch, hidden=12, layers=layers, ratio=2, cheap_op=cheap_op,
        cheap_activation=activation, num_classes=5, dropout=0.0,
    )  # fmt: skip
    model = build_model(config).double()
    with torch.no_grad():
        model.set_normalization(torch.randn(40).double() * 5 - 20, torch.rand(40).double() * 5 + 5)
        for layer in model.rnn.layers:  # non-zero ghost biases, so their terms are exercised
            if layer.ghost is not None:
                layer.ghost.bias.uniform_(-0.5, 0.5)
    return model


def cases():
    for arch in ARCHS:
        for cheap_op, activation in CHEAP if arch.startswith("ghost-") else [("linear", "none")]:
            yield arch, cheap_op, activation


def features(batch=3, frames=9, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 40, generator=generator, dtype=torch.double) * 8 - 20


@pytest.mark.parametrize("arch,cheap_op,activation", list(cases()))
def test_every_torch_path_equals_the_reference(arch, cheap_op, activation):
    model = make_model(arch, cheap_op, activation)
    x = features()
    state = 0.3 * torch.randn(2, 3, model.rnn.state_size, dtype=torch.double)
    with torch.no_grad():
        expected, expected_state = reference_model(model, x, state)
    # the per-frame step, what a device runs
    logits, s = [], state
    with torch.no_grad():
        for t in range(x.shape[1]):
            out, s = model.step(x[:, t], s)
            logits.append(out)
    assert torch.allclose(torch.stack(logits, 1), expected, atol=1e-10)
    assert torch.allclose(s, expected_state, atol=1e-10)
    kernels = ["scan", "scan-inference", "step"] + (["fused"] if model.rnn.foldable else [])
    for kernel in kernels:
        model.rnn.set_kernel(kernel)
        with torch.no_grad():
            got, got_state = model(x, state)
        assert torch.allclose(got, expected, atol=1e-10), kernel
        assert torch.allclose(got_state, expected_state, atol=1e-10), kernel


@pytest.mark.parametrize("arch,cheap_op,activation", list(cases()))
def test_training_gradients_equal_the_references(arch, cheap_op, activation):
    """The scan's hand-written backward (and the fused kernel's) give the gradients autograd
    finds through the reference equations."""
    model = make_model(arch, cheap_op, activation, layers=1)
    x = features(2, 6)
    state = (0.3 * torch.randn(1, 2, model.rnn.state_size, dtype=torch.double)).requires_grad_()
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(run):
        logits, final = run()
        loss = logits.square().sum() + (final * torch.linspace(-1, 1, final.shape[-1])).sum()
        return torch.autograd.grad(loss, [state, *params])

    expected = grads(lambda: reference_model(model, x, state))
    model.train()
    for kernel in ["scan"] + (["fused"] if model.rnn.foldable else []):
        model.rnn.set_kernel(kernel)
        for a, b in zip(grads(lambda: model(x, state)), expected):
            assert torch.allclose(a, b, atol=1e-9), kernel


@pytest.mark.parametrize("arch,cheap_op,activation", list(cases()))
def test_the_exported_onnx_step_equals_the_reference(tmp_path, arch, cheap_op, activation):
    from kws_ghost.export import export_model
    from kws_ghost.runtime import load_model

    model = make_model(arch, cheap_op, activation).float()
    labels = ["_silence_", "_unknown_", "yes", "no", "up"]
    export_model(model, FrontendConfig(), labels, tmp_path / "m.onnx")
    runtime = load_model(tmp_path / "m.onnx")
    x = features(2, 7).float()
    state = runtime.initial_state(2)
    got, got_state = runtime.run(x.numpy(), state)
    with torch.no_grad():
        expected, expected_state = reference_model(
            model.double(), x.double(), torch.zeros(2, 2, model.rnn.state_size, dtype=torch.double)
        )
    assert np.abs(got - expected.numpy()).max() < 1e-4
    assert np.abs(got_state - expected_state.numpy()).max() < 1e-5
