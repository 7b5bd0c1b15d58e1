"""`kws-ghost export --format c`: the C99 runtime compiles cleanly, its step gives onnxruntime's
logits for every architecture, cheap operation, activation and layer count, its front-end gives
kws_ghost.frontend's frames, and the example program gives `detect`'s events."""

import ctypes
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

from kws_ghost.checkpoint import save_checkpoint
from kws_ghost.config import FrontendConfig, ModelConfig
from kws_ghost.export import export_checkpoint
from kws_ghost.frontend import compute_features
from kws_ghost.models import build_model
from kws_ghost.runtime import load_model

CC = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc) on this machine")
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
LIBRARY = ["kws_step.c", "kws_frontend.c", "kws_decoder.c", "kws_model.c"]
LABELS = ["_silence_", "_unknown_", "yes", "no", "up"]
FE = FrontendConfig()


def kws(*args):
    return subprocess.run(
        [sys.executable, "-m", "kws_ghost", *map(str, args)], capture_output=True, text=True
    )


def checkpoint(
    tmp_path, arch="ghost-gru", cheap_op="linear", activation="tanh", layers=2, hidden=16, **kw
):
    torch.manual_seed(0)
    config = ModelConfig(
        arch=arch, hidden=hidden, layers=layers, cheap_op=cheap_op, cheap_activation=activation,
        num_classes=len(LABELS), dropout=0.0, **kw,
    )  # fmt: skip
    model = build_model(config)
    with torch.no_grad():
        model.set_normalization(torch.randn(40) * 5 - 20, torch.rand(40) * 5 + 5)
        for layer in model.rnn.layers:
            if layer.ghost is not None:
                layer.ghost.bias.uniform_(-0.5, 0.5)
        if model.input_bn is not None:  # as after training: far from the identity
            model.input_bn.running_mean.uniform_(-1, 1)
            model.input_bn.running_var.uniform_(0.2, 3)
            model.input_bn.weight.copy_(torch.linspace(-1.5, 2, 40))
            model.input_bn.bias.uniform_(-1, 1)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model.eval(), FE, LABELS)
    return path


def export_c(model_path, out, *options):
    """The CLI's export, in this process (a process per case would cost a torch import)."""
    from kws_ghost.export_c import export_c as export

    return export(model_path, out, int8="--int8" in options)


def shared_library(folder):
    """The runtime as a shared library, compiled with every warning an error."""
    lib = folder / "libkws.so"
    sources = [str(folder / name) for name in LIBRARY]
    command = [CC, *STRICT, "-O2", "-shared", "-fPIC", "-o", str(lib), *sources, "-lm"]
    compiled = subprocess.run(command, capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr
    return ctypes.CDLL(str(lib))


def macro(folder, name):
    return int(re.search(rf"#define {name} (\d+)", (folder / "kws_model.h").read_text())[1])


def c_logits(lib, folder, frames):
    floats = ctypes.POINTER(ctypes.c_float)
    state = np.zeros(macro(folder, "KWS_STATE_FLOATS"), np.float32)
    scratch = np.zeros(macro(folder, "KWS_SCRATCH_FLOATS"), np.float32)
    logits = np.zeros((len(frames), len(LABELS)), np.float32)
    lib.kws_reset(state.ctypes.data_as(floats))
    for t, frame in enumerate(np.ascontiguousarray(frames, np.float32)):
        row = logits[t]
        lib.kws_step(
            frame.ctypes.data_as(floats),
            state.ctypes.data_as(floats),
            row.ctypes.data_as(floats),
            scratch.ctypes.data_as(floats),
        )
    return logits


def speechless(seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    tone = 0.3 * np.sin(2 * np.pi * (300 + 200 * np.sin(2 * t)) * t) * (np.sin(5 * t) > 0)
    return (tone + 0.02 * rng.standard_normal(len(t))).astype(np.float32)


def cases():
    """At the default ratio (1.5: fewer ghost than intrinsic dimensions), and at 2 and 3 (as
    many, and more: elementwise sources wrap around); an input BatchNorm, folded or not."""
    for arch in ("ghost-gru", "ghost-lstm"):
        for cheap_op in ("linear", "elementwise"):
            for activation in ("none", "tanh", "relu", "sigmoid"):
                yield arch, cheap_op, activation, 2, 1.5, "stats"
    for arch in ("gru", "lstm", "ghost-gru"):
        yield arch, "linear", "tanh", 1, 1.5, "stats"
    yield "ghost-gru", "linear", "tanh", 2, 2.0, "stats"
    yield "ghost-lstm", "elementwise", "relu", 2, 3.0, "stats"
    yield "ghost-gru", "linear", "tanh", 2, 1.5, "batch"
    yield "ghost-gru", "linear", "none", 2, 1.5, "batch"


@pytest.mark.parametrize("arch,cheap_op,activation,layers,ratio,norm", list(cases()))
def test_the_c_step_gives_onnxruntimes_logits(
    tmp_path, arch, cheap_op, activation, layers, ratio, norm
):
    model = checkpoint(tmp_path, arch, cheap_op, activation, layers, ratio=ratio, input_norm=norm)
    result = export_c(model, tmp_path / "c")
    assert result["folded"] == (arch.startswith("ghost-") and activation == "none")
    lib = shared_library(tmp_path / "c")
    frames = compute_features(speechless(2.0), FE)
    export_checkpoint(model, tmp_path / "m.onnx")
    runtime = load_model(tmp_path / "m.onnx")
    expected, _ = runtime.run(frames[None], runtime.initial_state(1))
    got = c_logits(lib, tmp_path / "c", frames)
    assert np.abs(got - expected[0]).max() < 1e-4


def test_the_c_front_end_gives_the_numpy_frames(tmp_path):
    export_c(checkpoint(tmp_path), tmp_path / "c")
    lib = shared_library(tmp_path / "c")

    class Frontend(ctypes.Structure):
        _fields_ = [("samples", ctypes.c_float * FE.n_fft), ("filled", ctypes.c_long)]

    audio = speechless(3.0, seed=2)
    state, frame, frames = Frontend(), np.zeros(40, np.float32), []
    scratch = np.zeros(macro(tmp_path / "c", "KWS_SCRATCH_FLOATS"), np.float32)
    lib.kws_frontend_reset(ctypes.byref(state))
    push, out = lib.kws_frontend_push, frame.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    push.argtypes = [ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p]
    for sample in audio:
        if push(ctypes.byref(state), float(sample), out, scratch.ctypes.data):
            frames.append(frame.copy())
    expected = compute_features(audio, FE)
    assert len(frames) == len(expected) == 297
    assert np.abs(np.array(frames) - expected).max() < 1e-4


def test_int8_weights_are_a_quarter_and_stay_close(tmp_path):
    model = checkpoint(tmp_path, layers=2, hidden=64)
    fp32 = export_c(model, tmp_path / "f")
    int8 = export_c(model, tmp_path / "q", "--int8")
    assert int8["int8"] and int8["weight_bytes"] < 0.4 * fp32["weight_bytes"]
    frames = compute_features(speechless(2.0), FE)
    a = c_logits(shared_library(tmp_path / "f"), tmp_path / "f", frames)
    b = c_logits(shared_library(tmp_path / "q"), tmp_path / "q", frames)
    assert 0 < np.abs(a - b).max() < 0.1 * max(1.0, np.abs(a).max())


def test_bad_input_is_one_line_and_overwrites_nothing(tmp_path):
    clip = checkpoint(tmp_path, pooling="mean")
    refused = kws("export", clip, "--format", "c", "-o", tmp_path / "c")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "isolated clips" in refused.stderr and not (tmp_path / "c").exists()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    model = checkpoint(tmp_path)
    refused = kws("export", model, "--format", "c", "-o", theirs)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert (theirs / "notes.txt").read_text() == "mine" and len(list(theirs.iterdir())) == 1
    for _ in range(2):  # its own folder is replaced
        made = kws("export", model, "--format", "c", "-o", tmp_path / "ours", "--json")
        assert made.returncode == 0 and json.loads(made.stdout)["format"] == "c", made.stderr
    assert (tmp_path / "ours" / "kws_model.c").exists()


@pytest.mark.slow
def test_the_example_program_gives_detects_events(tmp_path, trained_run, test_recording, exported):
    """Built by its own Makefile, kws-detect reads PCM on stdin and prints detect's events."""
    wav, _ = test_recording
    pcm = soundfile.read(wav, dtype="int16")[0].astype("<i2").tobytes()
    expected = kws("detect", wav, "--model", exported, "--format", "json", "--scorer", "stream")
    assert expected.returncode == 0, expected.stderr
    expected = [json.loads(line) for line in expected.stdout.splitlines()]
    assert len(expected) >= 5
    for options, folder in (([], "c"), (["--int8"], "q")):
        export_c(trained_run["best"], tmp_path / folder, *options)
        built = subprocess.run(["make", "-C", str(tmp_path / folder)], capture_output=True)
        assert built.returncode == 0, built.stderr
        ran = subprocess.run(
            [str(tmp_path / folder / "kws-detect")], input=pcm, capture_output=True
        )
        assert ran.returncode == 0, ran.stderr
        events = [json.loads(line) for line in ran.stdout.decode().splitlines()]
        if not options:  # fp32: the same events
            assert [{**e, "file": "-"} for e in expected] == events
        else:  # int8: within one event
            assert abs(len(events) - len(expected)) <= 1
    bad = subprocess.run([str(tmp_path / "c" / "kws-detect"), "--threshold", "2"], input=b"")
    assert bad.returncode == 2
