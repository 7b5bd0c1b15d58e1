"""Folding, ONNX export of the streaming step (torch.onnx.export of ``step_module``, checked
against PyTorch before it is written), the runtime on the exported file, int8, the CLI."""

import json
import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from kws_ghost.checkpoint import save_checkpoint
from kws_ghost.cli import main
from kws_ghost.config import FrontendConfig, ModelConfig
from kws_ghost.errors import KwsError
from kws_ghost.export import (
    export_checkpoint,
    export_model,
    fold_model,
    folded_config,
    step_module,
)
from kws_ghost.models import KeywordModel, build_model
from kws_ghost.runtime import OnnxRuntime, load_model
from kws_ghost.scorers import FrameScorer

FEATURES = 10
LABELS = ["yes", "no", "_silence_", "_unknown_"]
FRONTEND = FrontendConfig(n_mfcc=FEATURES)
DETECTION = [{"threshold": 0.5, "hit_rate": 0.9, "false_alarms_per_hour": 2.0}]


def make_model(arch="ghost-gru", activation="tanh", cheap_op="linear", layers=2, hidden=12):
    torch.manual_seed(0)
    config = ModelConfig(
        arch=arch,
        input_dim=FEATURES,
        hidden=hidden,
        layers=layers,
        ratio=2,
        cheap_op=cheap_op,
        cheap_activation=activation,
        num_classes=len(LABELS),
        dropout=0.0,
    )
    model = build_model(config).eval()
    for layer in model.rnn.layers:  # non-zero ghost biases, so that their terms are exercised
        if layer.ghost is not None:
            torch.nn.init.uniform_(layer.ghost.bias, -0.5, 0.5)
    # Non-trivial normalisation: the exported graph must apply it to raw features.
    model.set_normalization(torch.linspace(-3, 3, FEATURES), torch.linspace(0.5, 4, FEATURES))
    return model


def raw_features(batch, frames, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, FEATURES, generator=generator) * 3 + 1


def save(tmp_path, model, name="model.pt", **extra):
    path = tmp_path / name
    save_checkpoint(path, model, FRONTEND, LABELS, **extra)
    return path


def step_loop(model, features):
    """The reference: ``model.step`` frame by frame from the zero state."""
    state, outputs = model.initial_state(features.shape[0]), []
    with torch.no_grad():
        for t in range(features.shape[1]):
            logits, state = model.step(features[:, t], state)
            outputs.append(logits)
    return torch.stack(outputs, 1), state


def graph_ops(path):
    return {node.op_type for node in onnx.load(str(path)).graph.node}


# ------------------------------------------------------------------------------ folding


@pytest.mark.parametrize("arch", ["ghost-gru", "ghost-lstm"])
@pytest.mark.parametrize("cheap_op", ["linear", "elementwise"])
def test_folded_model_equals_unfolded(arch, cheap_op):
    model = make_model(arch, "none", cheap_op, hidden=16)
    folded = fold_model(model)
    assert folded.config.arch == arch.removeprefix("ghost-")
    assert folded.config.hidden == model.config.intrinsic == 8
    assert folded.num_params() < model.num_params()
    assert folded.macs_per_frame() < model.macs_per_frame()
    x = raw_features(3, 15)
    with torch.no_grad():
        logits, state = model(x)
        folded_logits, folded_state = folded(x)
    assert logits.shape == (3, 15, len(LABELS))
    assert torch.allclose(logits, folded_logits, atol=1e-5)
    assert torch.allclose(state, folded_state, atol=1e-5)  # same state contract: h (and c)


def test_fold_refuses_a_cheap_operation_with_activation():
    with pytest.raises(KwsError, match="cannot fold.*tanh.*--cheap-activation none"):
        fold_model(make_model("ghost-gru", "tanh"))
    assert folded_config(ModelConfig(arch="gru")) == ModelConfig(arch="gru")


def test_folding_a_plain_model_is_the_identity():
    model = make_model("gru")
    folded = fold_model(model)
    assert folded is not model
    x = raw_features(2, 9)
    with torch.no_grad():
        assert torch.equal(model(x)[0], folded(x)[0])


# ------------------------------------------------------------------------------ parity

PARITY = [
    (arch, activation, layers)
    for arch in ("ghost-gru", "ghost-lstm")
    for activation in ("none", "tanh", "relu", "sigmoid")
    for layers in (1, 2)
] + [(arch, "tanh", layers) for arch in ("gru", "lstm") for layers in (1, 2)]


@pytest.mark.parametrize("arch,activation,layers", PARITY)
def test_pytorch_step_scan_and_onnx_agree(tmp_path, arch, activation, layers):
    model = make_model(arch, activation, layers=layers)
    result = export_model(model, FRONTEND, LABELS, tmp_path / "m.onnx")
    ghost = arch.startswith("ghost-")
    foldable = ghost and activation == "none"
    assert result["folded"] == foldable
    runtime = load_model(tmp_path / "m.onnx")
    assert isinstance(runtime, OnnxRuntime)
    utterance = raw_features(2, 40, seed=2)
    with torch.no_grad():
        scan, scan_state = model(utterance)  # the training path (scan, or fused kernel)
    steps, step_state = step_loop(model, utterance)
    got, state = runtime.run(utterance.numpy(), runtime.initial_state(2))
    assert state.shape == (layers, 2, model.rnn.state_size)
    np.testing.assert_allclose(steps, scan, atol=1e-5)
    np.testing.assert_allclose(got, steps.numpy(), atol=1e-5)
    np.testing.assert_allclose(state, step_state.numpy(), atol=1e-5)
    np.testing.assert_allclose(step_state, scan_state, atol=1e-5)
    # Plain and folded float graphs run ONNX GRU/LSTM nodes; ghost layers a packed matmul.
    rnn_node = "GRU" if model.config.cell == "gru" else "LSTM"
    assert (rnn_node in graph_ops(tmp_path / "m.onnx")) == (foldable or not ghost)


@pytest.mark.parametrize("cheap_op", ["linear", "elementwise"])
@pytest.mark.parametrize("arch", ["ghost-gru", "ghost-lstm"])
def test_unfolded_export_of_a_foldable_model(tmp_path, arch, cheap_op):
    model = make_model(arch, "none", cheap_op)
    result = export_model(model, FRONTEND, LABELS, tmp_path / "u.onnx", fold=False)
    assert not result["folded"] and result["params"] == model.num_params()
    utterance = raw_features(3, 20, seed=3)
    got, _ = load_model(tmp_path / "u.onnx").run(
        utterance.numpy(), np.zeros((2, 3, 6 if arch == "ghost-gru" else 12), np.float32)
    )
    np.testing.assert_allclose(got, step_loop(model, utterance)[0].numpy(), atol=1e-5)


def with_input_batchnorm(model):
    """``model``'s config with an input BatchNorm whose running statistics and affine map are
    far from the identity (a negative gain among them), as after training."""
    import dataclasses

    config = dataclasses.replace(model.config, input_norm="batch")
    bn_model = build_model(config)
    bn_model.load_state_dict(model.state_dict(), strict=False)
    generator = torch.Generator().manual_seed(8)
    with torch.no_grad():
        bn = bn_model.input_bn
        bn.running_mean.copy_(torch.randn(FEATURES, generator=generator))
        bn.running_var.copy_(torch.rand(FEATURES, generator=generator) * 3 + 0.2)
        bn.weight.copy_(torch.linspace(-1.5, 2.0, FEATURES))
        bn.bias.copy_(torch.randn(FEATURES, generator=generator))
    return bn_model.eval()


@pytest.mark.parametrize("activation", ["tanh", "none"])
def test_an_input_batchnorm_is_one_affine_map_in_every_runtime(tmp_path, activation):
    model = with_input_batchnorm(make_model("ghost-gru", activation))
    x = raw_features(2, 30, seed=9)
    mean, std = model.input_affine()
    assert (std < 0).any()  # the negative gain
    with torch.no_grad():
        normalised = model.normalize(x)
        torch.testing.assert_close(normalised, (x - mean) / std, atol=1e-5, rtol=1e-5)
        # it is not the stored statistics alone
        assert not torch.allclose(normalised, (x - model.feature_mean) / model.feature_std)
        scan, _ = model(x)
        half, state = model(x[:, :13])  # streamed in two chunks
        rest, _ = model(x[:, 13:], state)
    steps, _ = step_loop(model, x)
    np.testing.assert_allclose(torch.cat([half, rest], 1), scan, atol=1e-5)
    np.testing.assert_allclose(steps, scan, atol=1e-5)
    result = export_model(model, FRONTEND, LABELS, tmp_path / "bn.onnx")
    assert result["folded"] == (activation == "none")
    runtime = load_model(tmp_path / "bn.onnx")
    got, _ = runtime.run(x.numpy(), runtime.initial_state(2))
    np.testing.assert_allclose(got, steps.numpy(), atol=1e-5)
    export_model(model, FRONTEND, LABELS, tmp_path / "q.onnx", int8=True)  # kept in the graph
    int8_runtime = load_model(tmp_path / "q.onnx")
    quantized, _ = int8_runtime.run(x.numpy(), int8_runtime.initial_state(2))
    assert np.abs(quantized - steps.numpy()).max() < 0.25 * steps.numpy().std() + 1e-3


def test_an_input_batchnorm_normalises_by_the_batch_while_training():
    model = with_input_batchnorm(make_model("ghost-gru", "tanh")).train()
    x = raw_features(4, 25, seed=10) * 7 - 20  # far from the stored statistics
    normalised = model.normalize(x)
    per_coefficient = normalised.reshape(-1, FEATURES)
    torch.testing.assert_close(
        per_coefficient.mean(0), model.input_bn.bias.detach(), atol=1e-4, rtol=0
    )
    assert model.input_bn.num_batches_tracked.item() == 1  # its running statistics moved
    assert KeywordModel(ModelConfig(input_dim=FEATURES)).input_bn is None  # the default: stats
    with pytest.raises(KwsError, match="input normalisation"):
        ModelConfig(input_norm="layer").validate()


def test_step_module_is_the_models_step():
    for arch, activation in (("ghost-gru", "tanh"), ("ghost-lstm", "relu"), ("gru", "tanh")):
        model = make_model(arch, activation)
        for in_graph in (False, True):
            module = step_module(model, normalize_in_graph=in_graph)
            frames, state = (
                raw_features(1, 4, seed=4)[0],
                0.3 * torch.randn(2, 4, model.rnn.state_size),
            )
            with torch.no_grad():
                expected = model.step(frames, state)
                got = module(frames, state)
            assert torch.allclose(got[0], expected[0], atol=1e-5)
            assert torch.allclose(got[1], expected[1], atol=1e-5)


def test_batch_is_dynamic(tmp_path):
    model = make_model("ghost-gru", "tanh")
    export_model(model, FRONTEND, LABELS, tmp_path / "b.onnx")
    runtime = load_model(tmp_path / "b.onnx")
    for batch in (1, 2, 7):
        x = raw_features(batch, 5, seed=batch)
        got, state = runtime.run(x.numpy(), runtime.initial_state(batch))
        assert got.shape == (batch, 5, len(LABELS)) and state.shape == (2, batch, 6)
        np.testing.assert_allclose(got, step_loop(model, x)[0].numpy(), atol=1e-5)


def test_state_carried_over_a_long_stream_matches_pytorch(tmp_path):
    model = make_model("ghost-gru", "tanh", hidden=32)
    checkpoint = save(tmp_path, model)
    export_checkpoint(checkpoint, tmp_path / "s.onnx")
    frames = raw_features(1, 3000, seed=5)[0].numpy()  # 30 s of frames, in pushes of 100
    torch_scorer, onnx_scorer = (
        FrameScorer(load_model(checkpoint)),
        FrameScorer(load_model(tmp_path / "s.onnx")),
    )
    for start in range(0, len(frames), 100):
        chunk = frames[start : start + 100]
        np.testing.assert_allclose(onnx_scorer.push(chunk), torch_scorer.push(chunk), atol=1e-4)
    np.testing.assert_allclose(onnx_scorer.state, torch_scorer.state, atol=1e-4)


def test_clip_scores_are_the_step_in_the_runtimes_loop(tmp_path):
    model = make_model("ghost-lstm", "tanh")
    export_model(model, FRONTEND, LABELS, tmp_path / "c.onnx")
    runtime = load_model(tmp_path / "c.onnx")
    clips = raw_features(6, 30, seed=6)
    frame_logits = step_loop(model, clips)[0].numpy()
    from kws_ghost.runtime import clip_scores

    expected = clip_scores(frame_logits, LABELS, model.config.pooling)
    np.testing.assert_allclose(runtime.clip_logits(clips.numpy(), batch=4), expected, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.onnx"]  # one file: no clip model


# ------------------------------------------------------------------------------ the file


def test_metadata(tmp_path):
    model = make_model("ghost-lstm", "tanh")
    train_config = {"seed": 3, "epochs": 7}
    checkpoint = save(tmp_path, model, detection=DETECTION, train_config=train_config)
    export_checkpoint(checkpoint, tmp_path / "meta.onnx")
    proto = onnx.load(str(tmp_path / "meta.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}  # every value is JSON
    assert set(meta) == {
        "format", "format_version", "labels", "frontend_config", "model_config",
        "source_model_config", "state", "params", "folded", "int8", "package_version",
        "detection", "train_config",
    }  # fmt: skip
    assert meta["format"] == "kws-ghost-onnx" and meta["format_version"] == 2
    assert meta["state"] == {
        "layers": 2,
        "size": 12,  # LSTM: h then c, m = 6 each
        "cell": "lstm",
        "layout": ["h", "c"],
        "shape": ["layers", "batch", "size"],
        "initial": 0.0,
    }
    assert meta["params"] == model.num_params() and not meta["folded"] and not meta["int8"]
    assert meta["detection"] == DETECTION and meta["train_config"] == train_config
    assert [i.name for i in proto.graph.input] == ["frames", "state"]
    assert [o.name for o in proto.graph.output] == ["logits", "new_state"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    runtime = load_model(tmp_path / "meta.onnx")
    assert runtime.labels == LABELS and runtime.frontend_config == FRONTEND
    assert runtime.model_config == model.config and runtime.params == model.num_params()
    assert runtime.detection == DETECTION and runtime.train_config == train_config
    assert runtime.initial_state(3).shape == (2, 3, 12)


def test_folded_metadata_and_no_detection(tmp_path):
    model = make_model("ghost-gru", "none")
    export_model(model, FRONTEND, LABELS, tmp_path / "f.onnx")
    runtime = load_model(tmp_path / "f.onnx")
    assert runtime.metadata["folded"] and runtime.metadata["source_model_config"]["hidden"] == 12
    assert runtime.model_config == folded_config(model.config)
    assert runtime.detection is None and runtime.train_config == {}


def test_normalisation_is_absorbed_in_float_graphs_and_kept_in_int8(tmp_path):
    model = make_model("ghost-gru", "tanh", hidden=64)
    export_model(model, FRONTEND, LABELS, tmp_path / "f.onnx")
    export_model(model, FRONTEND, LABELS, tmp_path / "q.onnx", int8=True)
    float_ops, int8_ops = graph_ops(tmp_path / "f.onnx"), graph_ops(tmp_path / "q.onnx")
    assert "Div" not in float_ops and "MatMulInteger" not in float_ops
    assert "Div" in int8_ops and "MatMulInteger" in int8_ops and "MatMul" not in int8_ops


@pytest.mark.parametrize(
    "arch,activation,hidden",
    [
        ("ghost-gru", "tanh", 64),
        ("ghost-lstm", "tanh", 64),
        ("gru", "tanh", 64),
        ("ghost-gru", "none", 64),
    ],
)
def test_int8_model_is_smaller_and_agrees(tmp_path, arch, activation, hidden):
    model = make_model(arch, activation, hidden=hidden)
    float_result = export_model(model, FRONTEND, LABELS, tmp_path / "f.onnx")
    int8_result = export_model(model, FRONTEND, LABELS, tmp_path / "q.onnx", int8=True)
    onnx.checker.check_model(onnx.load(str(tmp_path / "q.onnx")), full_check=True)
    sizes = int8_result["sizes"]
    assert sizes["int8_bytes"] < 0.5 * sizes["fp32_bytes"]
    assert (tmp_path / "q.onnx").stat().st_size == int8_result["file_bytes"] == sizes["int8_bytes"]
    assert float_result["file_bytes"] == float_result["sizes"]["fp32_bytes"]
    float_runtime, int8_runtime = load_model(tmp_path / "f.onnx"), load_model(tmp_path / "q.onnx")
    assert int8_runtime.metadata["int8"] and not float_runtime.metadata["int8"]
    x = raw_features(64, 20, seed=7).numpy()
    reference, _ = float_runtime.run(x, float_runtime.initial_state(64))
    quantized, _ = int8_runtime.run(x, int8_runtime.initial_state(64))
    spread = reference.std()
    assert np.abs(quantized - reference).max() < 0.25 * spread + 1e-3
    assert (quantized.argmax(-1) == reference.argmax(-1)).mean() >= 0.8


# ------------------------------------------------------------------------------ the self-check


def test_an_export_that_disagrees_with_pytorch_is_refused(tmp_path, monkeypatch):
    import kws_ghost.export as exporter

    original = exporter.step_module

    def broken(model, normalize_in_graph=False):
        module = original(model, normalize_in_graph)
        module.head_bias.add_(1e-2)  # a wrong graph: logits off by 0.01
        return module

    export_model(make_model(), FRONTEND, LABELS, tmp_path / "keep.onnx")  # an earlier good export
    old = (tmp_path / "keep.onnx").read_bytes()
    monkeypatch.setattr(exporter, "step_module", broken)
    with pytest.raises(KwsError, match="export check failed.*differ by 0.01"):
        export_model(make_model(), FRONTEND, LABELS, tmp_path / "keep.onnx")
    assert (tmp_path / "keep.onnx").read_bytes() == old  # nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.onnx"]  # no temporary left


def test_the_check_reports_how_close_the_export_is(tmp_path):
    result = export_model(make_model("ghost-gru", "relu"), FRONTEND, LABELS, tmp_path / "r.onnx")
    assert 0 <= result["check_difference"] < 1e-5


# ------------------------------------------------------------------------------ errors


def test_runtime_errors_are_clear(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(KwsError, match="not a readable ONNX model"):
        load_model(garbage)
    with pytest.raises(KwsError, match="no such"):
        load_model(tmp_path / "absent.onnx")


def test_foreign_onnx_model_is_refused(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, str(tmp_path / "other.onnx"))
    with pytest.raises(KwsError, match="not a kws-ghost ONNX model"):
        load_model(tmp_path / "other.onnx")


def test_missing_onnxruntime_says_how_to_install(tmp_path, monkeypatch):
    path = save(tmp_path, make_model("gru"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(KwsError, match=r"pip install kws-ghost\[export\]"):
        export_checkpoint(path, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_runtime_needs_only_onnxruntime(tmp_path, monkeypatch):
    model = make_model("gru")
    export_model(model, FRONTEND, LABELS, tmp_path / "d.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # a device with onnxruntime alone
    runtime = load_model(tmp_path / "d.onnx")
    assert runtime.clip_logits(np.zeros((2, 20, FEATURES), np.float32)).shape == (2, 4)
    with pytest.raises(KwsError, match=r"export needs onnx and onnxruntime: pip install"):
        export_model(model, FRONTEND, LABELS, tmp_path / "e.onnx")


# ------------------------------------------------------------------------------ CLI


def test_export_cli_json(tmp_path):
    checkpoint = save(tmp_path, make_model("ghost-gru", "none"))
    result = CliRunner().invoke(main, ["export", str(checkpoint), "--format", "onnx", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["step_model"] == str(tmp_path / "model.onnx")
    assert data["folded"] is True and data["model"] == "gru H6 x2"
    assert data["params"] < data["source_params"]
    assert data["state_shape"] == [2, "batch", 6]
    assert data["labels"] == LABELS
    assert (tmp_path / "model.onnx").stat().st_size == data["file_bytes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.pt"]


def test_int8_export_checks_the_int8_file_and_refuses_a_broken_one(tmp_path, monkeypatch):
    from kws_ghost import export as exporter

    model = make_model("ghost-gru", "tanh", hidden=32)
    result = export_model(model, FRONTEND, LABELS, tmp_path / "q.onnx", int8=True)
    checks = result["checks"]
    assert result["check_difference"] == checks["int8_difference"] > checks["fp32_difference"]
    assert 0 < checks["int8_posterior_difference"] < exporter.INT8_POSTERIOR_TOLERANCE
    quantize = exporter._quantize

    def broken(onnx_module, proto):  # an int8 graph whose weights went wrong
        quantized = quantize(onnx_module, proto)
        for tensor in quantized.graph.initializer:
            if tensor.name.endswith("_scale"):  # the weights' dequantisation scales
                values = onnx.numpy_helper.to_array(tensor)
                tensor.CopyFrom(onnx.numpy_helper.from_array(values * 50, tensor.name))
        return quantized

    monkeypatch.setattr(exporter, "_quantize", broken)
    with pytest.raises(KwsError, match="int8 graph's posteriors differ"):
        export_model(model, FRONTEND, LABELS, tmp_path / "bad.onnx", int8=True)
    assert not (tmp_path / "bad.onnx").exists()


def test_export_cli_int8_text(tmp_path):
    checkpoint = save(tmp_path, make_model("ghost-gru", "tanh", hidden=32))
    out = tmp_path / "device" / "kws.onnx"
    result = CliRunner().invoke(main, ["export", str(checkpoint), "--int8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "int8: " in result.output and "state: [2, batch, 16]" in result.output
    assert "checked the int8 file against PyTorch" in result.output
    assert "posteriors by up to" in result.output
    assert load_model(out).metadata["int8"]


def run_cli(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_export_cli_bad_input(tmp_path):
    not_checkpoint = tmp_path / "notes.pt"
    not_checkpoint.write_text("hello")
    assert "notes.pt" in run_cli(["export", str(not_checkpoint)])
    assert "no such checkpoint" in run_cli(["export", str(tmp_path / "absent.pt")])

    checkpoint = save(tmp_path, make_model("ghost-gru", "tanh"))
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    message = run_cli(["export", str(checkpoint), "--out", str(blocker / "m.onnx")])
    assert "is a file, not a folder" in message
    assert "is a folder" in run_cli(["export", str(checkpoint), "--out", str(tmp_path)])
    assert "cannot fold" in run_cli(["export", str(checkpoint), "--fold"])
    assert "same file as the input" in run_cli(["export", str(checkpoint), "-o", str(checkpoint)])

    # A failed export leaves existing files as they were.
    existing = tmp_path / "keep.onnx"
    existing.write_bytes(b"old")
    run_cli(["export", str(checkpoint), "--fold", "--out", str(existing)])
    assert existing.read_bytes() == b"old"


def test_export_cli_has_no_clip_model_options(tmp_path):
    checkpoint = save(tmp_path, make_model("gru"))
    result = CliRunner().invoke(main, ["export", str(checkpoint), "--window-frames", "97"])
    assert result.exit_code == 2 and "--window-frames" in result.output


def test_profile_fold_reports_savings():
    options = "--hidden 128 --ratio 2 --cheap-activation none --fold --json".split()
    result = CliRunner().invoke(main, ["profile", *options])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["arch"] == "gru" and data["hidden"] == 64
    assert data["unfolded"]["arch"] == "ghost-gru"
    assert data["params"] < 0.6 * data["unfolded"]["params"]
    assert data["vs_unfolded"]["macs_per_frame"] < 0.6
    assert data["state_bytes"] == data["unfolded"]["state_bytes"]

    text = CliRunner().invoke(main, ["profile", "--cheap-activation", "none", "--fold"])
    assert text.exit_code == 0 and "gru H75 x2 (folded ghost-gru H112 s1.5 x2)" in text.output
    assert "cannot fold" in run_cli(["profile", "--fold"])  # default activation: tanh


def test_profile_fold_of_a_checkpoint(tmp_path):
    checkpoint = save(tmp_path, make_model("ghost-lstm", "none"))
    result = CliRunner().invoke(main, ["profile", str(checkpoint), "--fold", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    folded = fold_model(make_model("ghost-lstm", "none"))
    assert data["params"] == folded.num_params()
    assert data["macs_per_frame"] == folded.macs_per_frame()


# -- with a trained model (the session's synthetic-corpus GhostGRU) ------------------------------


def test_trained_model_scores_alike_in_pytorch_fp32_onnx_and_int8(trained_run, tmp_path):
    from kws_ghost.evaluate import evaluate_model

    best = trained_run["best"]
    paths = {"torch": best, "fp32": tmp_path / "kws.onnx", "int8": tmp_path / "kws-int8.onnx"}
    for kind in ("fp32", "int8"):
        args = ["export", str(best), "--out", str(paths[kind])] + (["--int8"] * (kind == "int8"))
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    assert load_model(paths["fp32"]).detection == load_model(best).detection
    accuracies, confusions = {}, {}
    for name, path in paths.items():
        reports = [
            evaluate_model(path, trained_run["corpus"], split)
            for split in ("validation", "testing")
        ]
        count = sum(r["count"] for r in reports)
        accuracies[name] = sum(r["accuracy"] * r["count"] for r in reports) / count
        confusions[name] = [r["confusion"] for r in reports]
    print(f"\nheld-out accuracy: PyTorch {accuracies['torch']:.4f}, int8 {accuracies['int8']:.4f}")
    assert confusions["fp32"] == confusions["torch"]  # the same prediction for every clip
    # int8 is quantised as before this exporter (the previous one gives the same accuracy on the
    # same checkpoint: 0.678 -> 0.659 with the streaming recipe when this was written)
    assert accuracies["torch"] - accuracies["int8"] <= 0.02
