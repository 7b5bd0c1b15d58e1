"""Shared fixtures: a synthetic corpus and a model trained on it, built once per test session."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

KEYWORDS = ["yes", "no", "up", "down"]
# Tests that use these (a trained model, the corpus it is trained on) are the slow tier.
SLOW_FIXTURES = {"synth_corpus", "trained_run", "exported", "test_recording"}


def pytest_configure(config) -> None:
    """Under pytest-xdist (``make test`` runs a worker per core) each worker keeps to one torch
    thread: two workers with a thread per core each spin against each other (10x slower)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.hookimpl(wrapper=True)  # the markers go on before any plugin (xdist) reads them
def pytest_collection_modifyitems(config, items):
    """``make test-fast`` (``-m "not slow"``) leaves out every test that needs the trained
    model; tests that take seconds for other reasons carry ``@pytest.mark.slow`` themselves.
    Under ``--dist loadgroup`` the tests of the session fixtures run on one worker, so the
    model is trained once, not once per worker."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.xdist_group("trained_model"))
    return (yield)


OTHER_WORDS = ["cat", "house"]


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> Path:
    """4 keywords + 2 other words, 90 synthetic speakers (63 train / 9 validation / 18 test).

    Many speakers with 2 clips each rather than fewer with more clips: held-out-speaker accuracy
    depends on how many voices training saw (60 x 3 clips: 0.88-0.93; 90 x 2: 0.95-0.96)."""
    from kws_ghost.synth import synthesize_corpus

    out = tmp_path_factory.mktemp("corpus") / "synth"
    synthesize_corpus(
        KEYWORDS + OTHER_WORDS,
        out,
        voices=90,
        clips_per_voice=2,
        seed=0,
        test_fraction=0.2,
        progress=False,
        other_words=0,  # its other words are OTHER_WORDS (fewer: a shorter session)
    )
    return out


@pytest.fixture(scope="session")
def trained_run(synth_corpus, tmp_path_factory) -> dict:
    """A small GhostGRU trained with the default streaming recipe on the synthetic corpus."""
    from kws_ghost.config import FrontendConfig, ModelConfig, TrainConfig
    from kws_ghost.train import Trainer

    run_dir = tmp_path_factory.mktemp("runs") / "ghost"
    config = TrainConfig(
        data=str(synth_corpus),
        task="custom",
        keywords=KEYWORDS,
        seed=0,
        workers=0,
        epochs=30,  # the budget would give 60 on this corpus; 30 keep CI short (0.92-0.98)
        batch_size=16,  # 30 epochs of batch 64 are too few steps for this small corpus
        lr=3e-3,
        val_recording_minutes=5,
        warm_start="none",  # the stream stage alone: a clip stage first would double CI's time
    )
    model = ModelConfig(arch="ghost-gru", hidden=128, layers=1, ratio=2)
    started = time.perf_counter()
    history = Trainer(config, model, FrontendConfig(), run_dir=run_dir, progress=False).run()
    return {
        "dir": run_dir,
        "best": run_dir / "best.pt",
        "history": history,
        "seconds": time.perf_counter() - started,
        "corpus": synth_corpus,
    }


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory) -> Path:
    """``trained_run``'s model exported to ONNX by the CLI."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("onnx") / "kws.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "kws_ghost", "export", str(trained_run["best"]), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def test_recording(trained_run, tmp_path_factory) -> tuple[Path, dict]:
    """A 40 s recording of test-split keywords and other words over noise, with its truth."""
    from kws_ghost.recordings import build_recording

    wav = tmp_path_factory.mktemp("stream") / "stream.wav"
    truth = build_recording(
        trained_run["corpus"],
        wav,
        ["yes", "no", "up", "down"],
        duration=40,
        split="testing",
        seed=1,
    )
    assert len(truth["events"]) >= 8 and truth["distractors"]
    return wav, truth


def write_clip(path: Path, audio: np.ndarray, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, audio, rate, subtype="PCM_16")


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    """A hand-made corpus of tones: 3 words x 6 speakers x 2 clips, split lists, one noise file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tiny"
    words = {"yes": 300.0, "no": 600.0, "maybe": 900.0}
    validation, testing = [], []
    for w, freq in words.items():
        for s in range(6):
            for n in range(2):
                rel = f"{w}/spk{s:05d}_nohash_{n}.wav"
                length = 16000 if n == 0 else 12000  # some clips shorter than 1 s
                t = np.arange(length) / 16000
                audio = 0.3 * np.sin(2 * np.pi * freq * (1 + 0.05 * s) * t)
                write_clip(root / rel, audio + 0.01 * rng.standard_normal(length))
                if s == 4:
                    validation.append(rel)
                elif s == 5:
                    testing.append(rel)
    (root / "validation_list.txt").write_text("\n".join(validation) + "\n")
    (root / "testing_list.txt").write_text("\n".join(testing) + "\n")
    write_clip(root / "_background_noise_" / "white.wav", 0.2 * rng.standard_normal(16000 * 5))
    return root
