"""Folding ghost operations, ONNX export (step and clip models), onnxruntime inference."""

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kws_ghost.checkpoint import save_checkpoint
from kws_ghost.cli import main
from kws_ghost.config import FrontendConfig, ModelConfig
from kws_ghost.errors import KwsError
from kws_ghost.export import (
    OnnxKeywordModel,
    clip_path_for,
    export_checkpoint,
    export_model,
    fold_model,
    folded_config,
)
from kws_ghost.models import build_model

FEATURES = 10
LABELS = ["yes", "no", "_silence_", "_unknown_"]
FRONTEND = FrontendConfig(n_mfcc=FEATURES)
WINDOW = 20


def make_model(arch="ghost-gru", activation="tanh", cheap_op="linear", pooling="mean", hidden=12):
    torch.manual_seed(0)
    config = ModelConfig(
        arch=arch,
        input_dim=FEATURES,
        hidden=hidden,
        layers=2,
        ratio=2,
        cheap_op=cheap_op,
        cheap_activation=activation,
        pooling=pooling,
        num_classes=len(LABELS),
        dropout=0.0,
    )
    model = build_model(config).eval()
    # Non-trivial normalisation: the exported graphs must apply it to raw features.
    model.set_normalization(torch.linspace(-3, 3, FEATURES), torch.linspace(0.5, 4, FEATURES))
    return model


def raw_features(batch, frames, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, FEATURES, generator=generator) * 3 + 1


def save(tmp_path, model, name="model.pt"):
    path = tmp_path / name
    save_checkpoint(path, model, FRONTEND, LABELS)
    return path


# ------------------------------------------------------------------------------ folding


@pytest.mark.parametrize("arch", ["ghost-gru", "ghost-lstm"])
@pytest.mark.parametrize("cheap_op", ["linear", "elementwise"])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_folded_model_equals_unfolded(arch, cheap_op, pooling):
    model = make_model(arch, "none", cheap_op, pooling, hidden=16)
    for layer in model.rnn.layers:  # non-zero ghost biases, so the bias terms are exercised
        torch.nn.init.uniform_(layer.ghost.bias, -0.5, 0.5)
    folded = fold_model(model)
    assert folded.config.arch == arch.removeprefix("ghost-")
    assert folded.config.hidden == model.config.intrinsic == 8
    assert folded.num_params() < model.num_params()
    assert folded.macs_per_frame() < model.macs_per_frame()
    x = raw_features(3, 15)
    with torch.no_grad():
        logits, state = model(x)
        folded_logits, folded_state = folded(x)
        frames, _ = model.frame_logits(x)
        folded_frames, _ = folded.frame_logits(x)
    assert torch.allclose(logits, folded_logits, atol=1e-5)
    assert torch.allclose(state, folded_state, atol=1e-5)  # same state contract: h (and c)
    assert torch.allclose(frames, folded_frames, atol=1e-5)


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


# ------------------------------------------------------------------------------ ONNX vs PyTorch

CASES = {
    # name: (arch, activation, cheap_op, pooling, fold)
    "ghost-gru-tanh": ("ghost-gru", "tanh", "linear", "mean", None),
    "ghost-gru-folded": ("ghost-gru", "none", "linear", "mean", None),
    "ghost-gru-elementwise-unfolded": ("ghost-gru", "none", "elementwise", "last", False),
    "gru": ("gru", "tanh", "linear", "last", None),
    "ghost-lstm-tanh": ("ghost-lstm", "tanh", "linear", "last", None),
    "ghost-lstm-folded": ("ghost-lstm", "none", "elementwise", "mean", True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_onnx_step_and_clip_models_match_pytorch(tmp_path, case):
    arch, activation, cheap_op, pooling, fold = CASES[case]
    model = make_model(arch, activation, cheap_op, pooling)
    result = export_model(
        model, FRONTEND, LABELS, tmp_path / "m.onnx", fold=fold, window_frames=WINDOW
    )
    assert result["folded"] == case.endswith("-folded")
    runtime = OnnxKeywordModel(tmp_path / "m.onnx")

    # Step model over a whole utterance (longer than a window), state carried between calls.
    utterance = raw_features(2, 45, seed=2)
    with torch.no_grad():
        expected, _ = model.frame_logits(utterance)
    state = runtime.initial_state(2)
    assert state.shape == (2, 2, model.rnn.state_size)
    got = []
    for t in range(utterance.shape[1]):
        logits, state = runtime.step(utterance[:, t].numpy(), state)
        got.append(logits)
    np.testing.assert_allclose(np.stack(got, 1), expected.numpy(), atol=1e-4)

    # Whole-clip model on a batch of windows.
    windows = raw_features(5, WINDOW, seed=3)
    with torch.no_grad():
        clip_expected, _ = model(windows)
    np.testing.assert_allclose(runtime.clip_logits(windows.numpy()), clip_expected, atol=1e-4)
    assert runtime.clip_logits(windows.numpy()[:0]).shape == (0, len(LABELS))


@pytest.mark.parametrize("case", ["ghost-gru-tanh", "ghost-lstm-folded"])
def test_step_model_with_several_frames_per_call(tmp_path, case):
    arch, activation, cheap_op, pooling, fold = CASES[case]
    model = make_model(arch, activation, cheap_op, pooling)
    export_model(model, FRONTEND, LABELS, tmp_path / "k.onnx", fold=fold, step_frames=3)
    runtime = OnnxKeywordModel(tmp_path / "k.onnx")
    utterance = raw_features(1, 12, seed=4)
    with torch.no_grad():
        expected, expected_state = model.frame_logits(utterance)
    state, got = runtime.initial_state(1), []
    for t in range(0, 12, 3):
        logits, state = runtime.step(utterance[:, t : t + 3].numpy(), state)
        assert logits.shape == (1, 3, len(LABELS))
        got.append(logits)
    np.testing.assert_allclose(np.concatenate(got, 1), expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(state, expected_state.numpy(), atol=1e-4)
    with pytest.raises(KwsError, match=r"frames must be \['batch', 3, 10\]"):
        runtime.step(utterance[:, 0].numpy(), state)


def test_metadata_round_trips(tmp_path):
    import onnx

    model = make_model("ghost-lstm", "tanh")
    result = export_model(model, FRONTEND, LABELS, tmp_path / "meta.onnx", window_frames=WINDOW)
    assert result["clip_model"] == str(tmp_path / "meta.clip.onnx")
    for path in (tmp_path / "meta.onnx", tmp_path / "meta.clip.onnx"):
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
        meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
        assert meta["labels"] == LABELS
        assert meta["state"] == {
            "layers": 2,
            "size": 12,  # LSTM: h then c, m = 6 each
            "cell": "lstm",
            "layout": ["h", "c"],
            "shape": ["layers", "batch", "size"],
            "initial": 0.0,
        }
        np.testing.assert_allclose(meta["normalization"]["mean"], model.feature_mean, atol=1e-6)
        np.testing.assert_allclose(meta["normalization"]["std"], model.feature_std, atol=1e-6)
        # Either file of the pair opens the pair.
        runtime = OnnxKeywordModel(path)
        assert runtime.labels == LABELS
        assert runtime.frontend_config == FRONTEND
        assert runtime.window_frames == WINDOW and runtime.step_frames == 1
        assert runtime.pooling == "mean" and not runtime.folded and not runtime.int8
        assert runtime.model_config == model.config
        assert runtime.initial_state(3).shape == (2, 3, 12)


def test_default_window_is_the_front_ends_clip(tmp_path):
    result = export_model(make_model("gru"), FRONTEND, LABELS, tmp_path / "w.onnx")
    assert result["window_frames"] == FRONTEND.num_frames(FRONTEND.clip_samples) == 97
    assert OnnxKeywordModel(tmp_path / "w.onnx").window_frames == 97


@pytest.mark.parametrize(
    "arch,pooling,hidden",
    # gru H12: 4m = 48 splits evenly in 3, the case where shape inference once guessed wrong.
    [("ghost-gru", "mean", 64), ("ghost-lstm", "last", 64), ("gru", "mean", 12)],
)
def test_int8_model_is_smaller_and_agrees(tmp_path, arch, pooling, hidden):
    import onnx

    model = make_model(arch, "tanh", pooling=pooling, hidden=hidden)
    float_result = export_model(model, FRONTEND, LABELS, tmp_path / "f.onnx", window_frames=WINDOW)
    int8_result = export_model(
        model, FRONTEND, LABELS, tmp_path / "q.onnx", int8=True, window_frames=WINDOW
    )
    for name in ("q.onnx", "q.clip.onnx"):
        onnx.checker.check_model(onnx.load(str(tmp_path / name)), full_check=True)
    sizes = int8_result["sizes"]
    if hidden >= 64:  # in tiny graphs the structure, not the weights, makes the size
        assert sizes["step_int8_bytes"] < 0.5 * sizes["step_fp32_bytes"]
        assert sizes["clip_int8_bytes"] < 0.5 * sizes["clip_fp32_bytes"]
    assert (tmp_path / "q.onnx").stat().st_size == int8_result["file_bytes"]["step"]
    assert float_result["sizes"]["step_fp32_bytes"] == sizes["step_fp32_bytes"]
    float_runtime, int8_runtime = (
        OnnxKeywordModel(tmp_path / "f.onnx"),
        OnnxKeywordModel(tmp_path / "q.onnx"),
    )
    assert int8_runtime.int8 and not float_runtime.int8
    windows = raw_features(64, WINDOW, seed=5).numpy()
    reference, quantized = float_runtime.clip_logits(windows), int8_runtime.clip_logits(windows)
    spread = reference.std()
    assert np.abs(quantized - reference).max() < 0.25 * spread + 1e-3
    assert (quantized.argmax(1) == reference.argmax(1)).mean() >= 0.8
    frames = windows[:, 0]
    logits, _ = int8_runtime.step(frames, int8_runtime.initial_state(64))
    float_logits, _ = float_runtime.step(frames, float_runtime.initial_state(64))
    assert np.abs(logits - float_logits).max() < 0.25 * spread + 1e-3


# ------------------------------------------------------------------------------ errors


def test_runtime_errors_are_clear(tmp_path):
    export_model(make_model("gru"), FRONTEND, LABELS, tmp_path / "r.onnx", window_frames=WINDOW)
    runtime = OnnxKeywordModel(tmp_path / "r.onnx")
    with pytest.raises(KwsError, match=r"features must be \[N, 20, 10\]"):
        runtime.clip_logits(np.zeros((1, WINDOW + 1, FEATURES), np.float32))
    with pytest.raises(KwsError, match=r"state must be \[2, 1, 12\]"):
        runtime.step(np.zeros((1, FEATURES), np.float32), runtime.initial_state(2))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(KwsError, match="not a readable ONNX model"):
        OnnxKeywordModel(garbage)
    with pytest.raises(KwsError, match="no such ONNX model"):
        OnnxKeywordModel(tmp_path / "absent.onnx")
    (tmp_path / "r.clip.onnx").unlink()
    with pytest.raises(KwsError, match="r.clip.onnx: missing"):
        OnnxKeywordModel(tmp_path / "r.onnx").clip_logits(np.zeros((1, WINDOW, FEATURES)))


def test_foreign_onnx_model_is_refused(tmp_path):
    import onnx
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
        OnnxKeywordModel(tmp_path / "other.onnx")


def test_missing_onnxruntime_says_how_to_install(tmp_path, monkeypatch):
    path = save(tmp_path, make_model("gru"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now raises ImportError
    with pytest.raises(KwsError, match=r"pip install kws-ghost\[export\]"):
        export_checkpoint(path, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_runtime_needs_only_onnxruntime(tmp_path, monkeypatch):
    export_model(make_model("gru"), FRONTEND, LABELS, tmp_path / "d.onnx", window_frames=WINDOW)
    monkeypatch.setitem(sys.modules, "onnx", None)  # a device with onnxruntime alone
    runtime = OnnxKeywordModel(tmp_path / "d.onnx")
    assert runtime.clip_logits(np.zeros((2, WINDOW, FEATURES), np.float32)).shape == (2, 4)
    with pytest.raises(KwsError, match=r"export needs the onnx package: pip install"):
        export_model(make_model("gru"), FRONTEND, LABELS, tmp_path / "e.onnx")


# ------------------------------------------------------------------------------ CLI


def test_export_cli_json(tmp_path):
    checkpoint = save(tmp_path, make_model("ghost-gru", "none"))
    result = CliRunner().invoke(main, ["export", str(checkpoint), "--format", "onnx", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["step_model"] == str(tmp_path / "model.onnx")
    assert data["clip_model"] == str(clip_path_for(tmp_path / "model.onnx"))
    assert data["folded"] is True and data["model"] == "gru H6 x2"
    assert data["params"] < data["source_params"]
    assert data["state_shape"] == [2, "batch", 6]
    assert data["labels"] == LABELS and data["window_frames"] == 97
    for key in ("step", "clip"):
        assert (tmp_path / f"model{'.clip' if key == 'clip' else ''}.onnx").stat().st_size == (
            data["file_bytes"][key]
        )


def test_export_cli_int8_text(tmp_path):
    checkpoint = save(tmp_path, make_model("ghost-gru", "tanh", hidden=32))
    out = tmp_path / "device" / "kws.onnx"
    result = CliRunner().invoke(
        main, ["export", str(checkpoint), "--int8", "--out", str(out), "--window-frames", "12"]
    )
    assert result.exit_code == 0, result.output
    assert "int8: step" in result.output and "state: [2, batch, 16]" in result.output
    assert out.exists() and (tmp_path / "device" / "kws.clip.onnx").exists()
    runtime = OnnxKeywordModel(out)
    assert runtime.int8 and runtime.window_frames == 12


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

    # A failed export leaves existing files as they were.
    existing = tmp_path / "keep.onnx"
    existing.write_bytes(b"old")
    run_cli(["export", str(checkpoint), "--fold", "--out", str(existing)])
    assert existing.read_bytes() == b"old"


def test_profile_fold_reports_savings():
    result = CliRunner().invoke(
        main, ["profile", "--model", "ghost-gru", "--cheap-activation", "none", "--fold", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["arch"] == "gru" and data["hidden"] == 64
    assert data["unfolded"]["arch"] == "ghost-gru"
    assert data["params"] < 0.6 * data["unfolded"]["params"]
    assert data["vs_unfolded"]["macs_per_frame"] < 0.6
    assert data["state_bytes"] == data["unfolded"]["state_bytes"]

    text = CliRunner().invoke(main, ["profile", "--cheap-activation", "none", "--fold"])
    assert text.exit_code == 0 and "folded ghost-gru H128 s2 x2" in text.output
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


def test_detector_on_onnx_gives_the_pytorch_events(trained_run, tmp_path):
    from kws_ghost.audio import iter_audio_blocks
    from kws_ghost.stream import detect_blocks, load_scorer, score_blocks
    from kws_ghost.stream_eval import build_recording

    onnx_path = tmp_path / "kws.onnx"
    result = CliRunner().invoke(
        main, ["export", str(trained_run["best"]), "--out", str(onnx_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    wav = tmp_path / "rec.wav"
    build_recording(trained_run["corpus"], wav, ["yes", "no", "up", "down"], duration=20, seed=4)
    torch_scorer, onnx_scorer = load_scorer(trained_run["best"]), load_scorer(onnx_path)
    torch_scores = score_blocks(iter_audio_blocks(wav), torch_scorer, 100)
    onnx_scores = score_blocks(iter_audio_blocks(wav), onnx_scorer, 100)
    assert len(torch_scores) == len(onnx_scores) > 100
    difference = max(
        np.abs(a.probabilities - b.probabilities).max() for a, b in zip(torch_scores, onnx_scores)
    )
    assert difference < 1e-4
    torch_events = [e.as_dict() for e in detect_blocks(iter_audio_blocks(wav), torch_scorer)]
    onnx_events = [e.as_dict() for e in detect_blocks(iter_audio_blocks(wav), onnx_scorer)]
    assert torch_events and [(e["keyword"], e["start"], e["end"]) for e in torch_events] == [
        (e["keyword"], e["start"], e["end"]) for e in onnx_events
    ]
    cli = CliRunner().invoke(
        main, ["detect", str(wav), "--model", str(onnx_path), "--format", "json"]
    )
    assert cli.exit_code == 0, cli.output
    assert len(cli.output.splitlines()) == len(torch_events)


def test_int8_costs_at_most_one_point_of_accuracy(trained_run, tmp_path):
    from kws_ghost.evaluate import evaluate_checkpoint

    int8_path = tmp_path / "kws-int8.onnx"
    result = CliRunner().invoke(
        main, ["export", str(trained_run["best"]), "--int8", "--out", str(int8_path)]
    )
    assert result.exit_code == 0, result.output
    accuracies = {}
    for name, path in (("torch", trained_run["best"]), ("int8", int8_path)):
        reports = [
            evaluate_checkpoint(path, trained_run["corpus"], split, progress=False, workers=0)
            for split in ("validation", "testing")
        ]
        correct = sum(r["accuracy"] * r["count"] for r in reports)
        accuracies[name] = correct / sum(r["count"] for r in reports)
    print(f"\nheld-out accuracy: PyTorch {accuracies['torch']:.4f}, int8 {accuracies['int8']:.4f}")
    assert accuracies["torch"] - accuracies["int8"] <= 0.01
