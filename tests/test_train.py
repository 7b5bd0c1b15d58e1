"""Training, resuming, distributed training and evaluation."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from kws_ghost.checkpoint import load_checkpoint
from kws_ghost.cli import main

FAST = ["--hidden", "16", "--layers", "1", "--batch-size", "8", "--workers", "0", "--quiet"]


def kws(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "kws_ghost", *map(str, args)],
        capture_output=True,
        text=True,
        **kwargs,
    )


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_small_ghost_gru_learns_held_out_synthetic_speakers(trained_run):
    print(f"\ntraining took {trained_run['seconds']:.1f} s")  # the budget: 2 minutes
    result = CliRunner().invoke(main, ["eval", str(trained_run["best"]), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["split"] == "testing" and report["count"] >= 150
    assert report["accuracy"] >= 0.90, report["confusion"]
    assert set(report["per_class"]) == {"_silence_", "_unknown_", "yes", "no", "up", "down"}


def test_run_folder_holds_config_metrics_and_checkpoints(trained_run):
    run_dir = trained_run["dir"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["arch"] == "ghost-gru" and config["labels"][2:] == [
        "yes",
        "no",
        "up",
        "down",
    ]
    metrics = read_metrics(run_dir)
    assert [m["epoch"] for m in metrics] == list(range(1, 31))
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    best = load_checkpoint(run_dir / "best.pt")
    top = max(metrics, key=lambda m: (m["val_accuracy"], -m["val_loss"]))
    assert best.extra["metrics"]["epoch"] == top["epoch"]
    last = load_checkpoint(run_dir / "last.pt")
    assert last.extra["train_state"]["epoch"] == 30
    assert "train_state" not in best.extra
    assert (run_dir.parent / "latest").resolve() == run_dir.resolve()
    # normalisation statistics were computed and stored
    assert not torch.allclose(best.model_state["feature_std"], torch.ones(40))


def test_best_checkpoint_breaks_accuracy_ties_by_loss():
    from kws_ghost.train import best_so_far, is_better

    assert is_better(0.9, 0.5, 0.8, 0.1)
    assert is_better(0.9, 0.2, 0.9, 0.3)
    assert not is_better(0.9, 0.3, 0.9, 0.3)
    assert not is_better(0.8, 0.1, 0.9, 0.3)
    history = [
        {"val_accuracy": 0.8, "val_loss": 0.5},
        {"val_accuracy": 0.9, "val_loss": 0.4},
        {"val_accuracy": 0.9, "val_loss": 0.3},
        {"val_accuracy": 0.9, "val_loss": 0.35},
    ]
    assert best_so_far(history) == (0.9, 0.3)
    assert best_so_far([{"train_loss": 1.0}]) == (-1.0, float("inf"))


def test_eval_plot_and_text(trained_run, tmp_path):
    png = tmp_path / "confusion.png"
    result = CliRunner().invoke(
        main,
        ["eval", str(trained_run["best"]), "--split", "validation", "--plot", str(png), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "confusion" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_continues_exactly(tiny_corpus, tmp_path):
    from kws_ghost.config import FrontendConfig, ModelConfig, TrainConfig
    from kws_ghost.train import Trainer

    def trainer(out, resume=False):
        config = TrainConfig(data=str(tiny_corpus), epochs=4, batch_size=8, workers=0, seed=3)
        model = ModelConfig(hidden=16, layers=1)
        return Trainer(config, model, FrontendConfig(), tmp_path / out, resume, progress=False)

    trainer("whole").run()
    trainer("parts").run(stop_after=2)  # as if killed after epoch 2
    again = kws("train", "--data", tiny_corpus, *FAST, "--out", tmp_path / "parts")
    assert again.returncode == 1 and "--resume" in again.stderr
    resumed = kws("train", "--resume", "--out", tmp_path / "parts", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    whole_metrics, part_metrics = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "parts")
    assert [m["epoch"] for m in part_metrics] == [1, 2, 3, 4]
    for a, b in zip(whole_metrics, part_metrics):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["lr"] == pytest.approx(b["lr"])
        assert a["val_accuracy"] == b["val_accuracy"]
    whole, parts = (
        load_checkpoint(tmp_path / d / "last.pt").model_state for d in ("whole", "parts")
    )
    for name in whole:
        assert torch.allclose(whole[name], parts[name], atol=1e-6), name
    # the resumed run knows the best epoch so far: best.pt is the same epoch as without the break
    best = [load_checkpoint(tmp_path / d / "best.pt").extra["epoch"] for d in ("whole", "parts")]
    assert best[0] == best[1]


def test_sigkill_loses_at_most_the_epoch_in_progress(tiny_corpus, tmp_path):
    run_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kws_ghost",
            "train",
            "--data",
            str(tiny_corpus),
            *FAST,
            "--epochs",
            "40",
            "--out",
            str(run_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run_dir / "metrics.jsonl").exists() and len(read_metrics(run_dir)) >= 2:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = load_checkpoint(run_dir / "last.pt").extra["train_state"]["epoch"]
    assert done >= 2
    assert not list(run_dir.glob(".*.tmp"))
    resumed = kws("train", "--resume", "--epochs", done + 1, "--out", run_dir, "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert [m["epoch"] for m in read_metrics(run_dir)] == list(range(1, done + 2))


def test_two_process_gloo_training(tiny_corpus, tmp_path):
    run_dir = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "kws_ghost",
            "train",
            "--data",
            str(tiny_corpus),
            *FAST,
            "--epochs",
            "2",
            "--out",
            str(run_dir),
            "--device",
            "cpu",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["world_size"] == 2
    assert [m["epoch"] for m in read_metrics(run_dir)] == [1, 2]  # rank 0 alone wrote
    printed = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and json.loads(printed[0])["epochs"] == 2
    load_checkpoint(run_dir / "best.pt").build_model()


def test_training_errors_are_one_line(tmp_path, tiny_corpus):
    missing = kws("train", "--data", tmp_path / "nowhere")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "no such data folder" in missing.stderr
    nothing = kws("train", "--resume", "--out", tmp_path / "none")
    assert nothing.returncode == 1 and "nothing to resume" in nothing.stderr
    no_data = kws("train")
    assert no_data.returncode == 1 and "--data is required" in no_data.stderr


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _tampered(source: Path, target: Path, **changes) -> Path:
    payload = torch.load(source, weights_only=True)
    payload["model_config"].update(changes)
    torch.save(payload, target)
    return target


@pytest.mark.parametrize(
    "kind",
    [
        "other-model",
        "corrupt",
        "random-bytes",
        "foreign",
        "pickle",
        "code",
        "text",
        "onnx",
        "missing",
    ],
)
def test_eval_refuses_bad_checkpoints(trained_run, tmp_path, kind):
    best = trained_run["best"]
    path = tmp_path / "model.pt"
    if kind == "other-model":
        _tampered(best, path, arch="lstm")
        expect = "do not fit the lstm model"
    elif kind == "corrupt":
        path.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
        expect = "corrupt or truncated"
    elif kind == "random-bytes":
        path.write_bytes(os.urandom(4096))
        expect = "not a readable checkpoint"
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
        expect = "not a kws-ghost checkpoint"
    elif kind == "pickle":
        with open(path, "wb") as handle:
            pickle.dump(_Evil(), handle)
        expect = "not a readable checkpoint"
    elif kind == "code":
        torch.save({"format": "kws-ghost-checkpoint", "payload": _Evil()}, path)
        expect = "objects other than plain weights"
    elif kind == "text":
        path.write_text("hello\n" * 20)
        expect = "not a readable checkpoint"
    elif kind == "onnx":
        path = tmp_path / "model.onnx"
        path.write_bytes(b"onnx")
        expect = "ONNX model"
    else:
        path = tmp_path / "absent.pt"
        expect = "no such checkpoint"
    result = kws("eval", path, "--data", trained_run["corpus"], "--quiet")
    assert result.returncode == 1
    assert expect in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
