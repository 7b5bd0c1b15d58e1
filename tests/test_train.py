"""Training (stream and clip objectives), model selection, resuming, distributed training,
failures that must not lose or hide anything, and evaluation."""

import errno
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
FAST += ["--val-recording-minutes", "0.5"]
FAST += ["--warm-start", "none"]  # one stage; the clip stage first has tests of its own
TWO_STAGES = [*FAST[:-2], "--warm-start-epochs", "1"]  # the default: a clip stage, then stream


def kws(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "kws_ghost", *map(str, args)],
        capture_output=True,
        text=True,
        **kwargs,
    )


def train_one_epoch(corpus: Path, out: Path, *flags) -> Path:
    """A one-epoch run of the small fast model into ``out``, which it returns."""
    result = kws("train", "--data", corpus, *FAST, "--epochs", "1", *flags, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_small_ghost_gru_learns_held_out_synthetic_speakers(trained_run):
    print(f"\ntraining took {trained_run['seconds']:.1f} s")
    result = CliRunner().invoke(main, ["eval", str(trained_run["best"]), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["split"] == "testing" and report["count"] >= 150
    assert report["accuracy"] >= 0.90, report["confusion"]
    assert set(report["per_class"]) == {"_silence_", "_unknown_", "yes", "no", "up", "down"}


def test_run_folder_holds_config_metrics_checkpoints_and_the_det(trained_run):
    run_dir = trained_run["dir"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["arch"] == "ghost-gru" and config["train"]["objective"] == "stream"
    assert config["model"]["objective"] == "stream"  # the model config records its objective
    assert config["labels"][2:] == ["yes", "no", "up", "down"]
    assert Path(config["train"]["data"]).is_absolute()
    metrics = read_metrics(run_dir)
    epochs = len(metrics)
    assert [m["epoch"] for m in metrics] == list(range(1, epochs + 1))
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    validated = [m["epoch"] for m in metrics if "val_accuracy" in m]
    # every 2nd epoch of the second half, and the last
    assert validated == [e for e in range(epochs // 2 + 1, epochs + 1) if e % 2 == 0 or e == epochs]
    for record in metrics:  # validated epochs score the validation recordings
        if record["epoch"] in validated:
            assert 0 <= record["val_hit_rate"] <= 1 and "val_fa_per_hour" in record
        else:
            assert "val_hit_rate" not in record
    from kws_ghost.runs import best_epoch

    best = load_checkpoint(run_dir / "best.pt")
    assert best.extra["metrics"]["epoch"] == best_epoch(metrics)["epoch"]
    detection = best.extra["detection"]
    assert detection["target_fa_per_hour"] == 10.0 and len(detection["det"]) > 10
    thresholds = [p["threshold"] for p in detection["det"]]
    assert thresholds == sorted(thresholds)
    rates = [p["false_alarms_per_hour"] for p in detection["det"]]
    assert rates[0] >= rates[-1]  # a higher threshold never fires more (smoothing aside)
    last = load_checkpoint(run_dir / "last.pt")
    assert last.extra["train_state"]["epoch"] == epochs
    assert "train_state" not in best.extra
    assert not torch.allclose(best.model_state["feature_std"], torch.ones(40))


def test_the_budget_counts_training_items_not_steps():
    from kws_ghost.config import MAX_EPOCHS, MIN_EPOCHS, MIN_ITEMS, budget_epochs

    assert budget_epochs(1102) == 25  # the real-speech development subset's sequences
    assert budget_epochs(160) * 160 >= MIN_ITEMS > (budget_epochs(160) - 1) * 160
    assert budget_epochs(100_000) == MIN_EPOCHS  # a large corpus: the epoch floor
    assert budget_epochs(1) == MAX_EPOCHS


def test_best_checkpoint_rule():
    from kws_ghost.runs import best_epoch, selection_key

    # clip accuracy and hit rate count alike: a noisy hit rate alone does not choose
    assert selection_key({"val_hit_rate": 0.38, "val_accuracy": 0.69}) < selection_key(
        {"val_hit_rate": 0.35, "val_accuracy": 0.81}
    )
    assert selection_key({"val_hit_rate": 0.6, "val_accuracy": 0.8}) > selection_key(
        {"val_hit_rate": 0.5, "val_accuracy": 0.8}
    )
    assert selection_key({"val_accuracy": 0.9, "val_loss": 0.2}) > selection_key(
        {"val_accuracy": 0.9, "val_loss": 0.3}
    )
    history = [
        {"epoch": 1, "val_hit_rate": 0.5, "val_accuracy": 0.8, "val_loss": 0.5},
        {"epoch": 2, "val_hit_rate": 0.7, "val_accuracy": 0.8, "val_loss": 0.4},
        {"epoch": 3, "val_hit_rate": 0.7, "val_accuracy": 0.85, "val_loss": 0.45},
        {"epoch": 4, "val_hit_rate": 0.7, "val_accuracy": 0.85, "val_loss": 0.45},
    ]
    assert best_epoch(history)["epoch"] == 3  # ties keep the first
    assert best_epoch([]) is None
    skipped = [{"epoch": 5}]  # epochs without validation (--val-every) are never chosen
    assert best_epoch(history + skipped)["epoch"] == 3
    assert best_epoch([{"epoch": 1}, {"epoch": 2}])["epoch"] == 2  # no validation: the last


@pytest.mark.slow
def test_train_json_names_the_epoch_best_pt_holds(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    result = kws("train", "--data", tiny_corpus, *FAST, "--epochs", "3", "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["best_epoch"] == load_checkpoint(out / "best.pt").extra["epoch"]
    assert "\r" not in result.stderr  # no progress bar in a log


@pytest.mark.slow
def test_eval_plot_and_text(trained_run, tmp_path):
    png = tmp_path / "confusion.png"
    result = CliRunner().invoke(
        main,
        ["eval", str(trained_run["best"]), "--split", "validation", "--plot", str(png), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "confusion" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = tmp_path / "notes.txt"
    text.write_text("mine")
    refused = kws("eval", trained_run["best"], "--plot", text, "--quiet")
    assert refused.returncode == 1 and text.read_text() == "mine"


@pytest.mark.slow
@pytest.mark.parametrize(
    "objective, ema, norm, vtlp",
    [("stream", 0.0, "stats", 0.0), ("clip", 0.0, "stats", 0.1), ("stream", 0.9, "batch", 0.1)],
)
def test_resume_continues_exactly(tiny_corpus, tmp_path, objective, ema, norm, vtlp):
    """Also with VTLP, whose warp factors come from the run's generator."""
    from kws_ghost.config import AugmentConfig, FrontendConfig, ModelConfig, TrainConfig
    from kws_ghost.train import Trainer

    def trainer(out):
        config = TrainConfig(
            data=str(tiny_corpus),
            epochs=4,
            batch_size=8,
            workers=0,
            seed=3,
            objective=objective,
            val_recording_minutes=0.5,
            val_from=0.0,  # epochs 2 and 4 validated: on both sides of the interruption
            ema_decay=ema,
            warm_start="none",
            augment=AugmentConfig(vtlp=vtlp),
        )
        pooling = "max" if objective == "stream" else "mean"
        model = ModelConfig(hidden=16, layers=1, pooling=pooling, input_norm=norm)
        return Trainer(config, model, FrontendConfig(), tmp_path / out, progress=False)

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
        assert a.get("val_accuracy") == b.get("val_accuracy")
        assert a.get("val_hit_rate") == b.get("val_hit_rate")
    assert [m["epoch"] for m in part_metrics if "val_accuracy" in m] == [2, 4]
    whole, parts = (
        load_checkpoint(tmp_path / d / "last.pt").model_state for d in ("whole", "parts")
    )
    for name in whole:
        assert torch.allclose(whole[name], parts[name], atol=1e-6), name
    best = [load_checkpoint(tmp_path / d / "best.pt").extra["epoch"] for d in ("whole", "parts")]
    assert best[0] == best[1]
    if norm == "batch":  # the file (the weights' average, with ema) holds the running statistics
        assert whole["input_bn.num_batches_tracked"] > 0
        assert not torch.allclose(whole["input_bn.running_var"], torch.ones(40))


@pytest.mark.slow
def test_resume_refuses_flags_it_cannot_honour(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    talkative = [arg for arg in FAST if arg != "--quiet"]
    first = kws("train", "--data", tiny_corpus, *talkative, "--epochs", "1", "--out", out)
    assert first.returncode == 0, first.stderr
    # each figure says what it measures: training frames against validation clips
    assert "train frame loss" in first.stderr and "val clip loss" in first.stderr
    before = (out / "last.pt").read_bytes()
    refused = kws("train", "--resume", "--out", out, "--hidden", "64", "--lr", "0.1")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "--hidden" in refused.stderr and "--lr" in refused.stderr
    assert (out / "last.pt").read_bytes() == before
    stored = torch.load(out / "last.pt", weights_only=True)  # as an earlier version wrote it:
    del stored["train_config"]["warm_start"], stored["train_config"]["warm_start_epochs"]
    torch.save(stored, out / "last.pt")
    more = kws("train", "--resume", "--out", out, "--epochs", "2", "--workers", "0", "--quiet")
    assert more.returncode == 0, more.stderr
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2]
    # ... its stream run started from random weights, and says so
    assert load_checkpoint(out / "last.pt").extra["train_config"]["warm_start"] == "none"


@pytest.mark.slow
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


@pytest.mark.slow
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
            *TWO_STAGES,
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
    assert [m["epoch"] for m in read_metrics(run_dir / "clip")] == [1]  # both stages
    assert json.loads((run_dir / "clip" / "config.json").read_text())["world_size"] == 2
    printed = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and json.loads(printed[0])["epochs"] == 2
    assert json.loads(printed[0])["init"] == str((run_dir / "clip" / "best.pt").resolve())
    load_checkpoint(run_dir / "best.pt").build_model()


@pytest.mark.slow
def test_the_default_run_trains_its_clip_stage_first(tiny_corpus, tmp_path):
    """The default recipe: the clip objective in RUN/clip, then the stream objective in RUN from
    that stage's best.pt; runs/latest names the run, not its stage."""
    result = kws(
        "train", "--data", tiny_corpus, *TWO_STAGES, "--epochs", "1", "--json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    run_dir = (tmp_path / "runs" / "latest").resolve()
    assert run_dir.parent == (tmp_path / "runs").resolve() and run_dir.name != "clip"
    stage = run_dir / "clip"
    clip_config = json.loads((stage / "config.json").read_text())
    assert clip_config["train"]["objective"] == "clip" and clip_config["model"]["pooling"] == "mean"
    assert [m["epoch"] for m in read_metrics(stage)] == [1]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["objective"] == "stream" and config["model"]["pooling"] == "max"
    assert config["train"]["warm_start"] == "clip"
    assert config["train"]["init"] == str(stage / "best.pt")
    assert json.loads(result.stdout)["run_dir"] == str(Path("runs") / run_dir.name)
    assert "stage 1 of 2" in result.stderr and "stage 2 of 2" in result.stderr
    assert "--warm-start-epochs" not in result.stderr  # given, so no budget note names it
    # the stream stage's file holds no clip-stage state: it resumes as a run of its own
    assert "then" not in load_checkpoint(run_dir / "last.pt").extra["train_state"]
    assert "then" in load_checkpoint(stage / "last.pt").extra["train_state"]


@pytest.mark.slow
def test_a_run_stopped_in_its_clip_stage_resumes_through_both(tiny_corpus, tmp_path, monkeypatch):
    from kws_ghost import train as train_module
    from kws_ghost.config import FrontendConfig, ModelConfig, TrainConfig
    from kws_ghost.errors import KwsError

    config = TrainConfig(
        data=str(tiny_corpus),
        epochs=2,
        warm_start_epochs=2,
        batch_size=8,
        workers=0,
        lr=3e-3,
        val_recording_minutes=0.5,
    )
    model = ModelConfig(hidden=16, layers=1)
    with pytest.raises(KwsError, match="begins with its clip stage"):
        train_module.Trainer(config, model, FrontendConfig(), tmp_path / "bare", progress=False)
    real_run = train_module.Trainer.run

    def killed_in_the_clip_stage(self, stop_after=None):
        if self.then is not None:  # the clip stage: as if killed after its first epoch
            real_run(self, stop_after=1)
            raise KeyboardInterrupt
        return real_run(self, stop_after)

    out = tmp_path / "run"
    monkeypatch.setattr(train_module.Trainer, "run", killed_in_the_clip_stage)
    with pytest.raises(KeyboardInterrupt):
        train_module.train_run(config, model, FrontendConfig(), out, progress=False)
    monkeypatch.undo()
    assert (out / "clip" / "last.pt").exists() and not (out / "last.pt").exists()
    again = kws("train", "--data", tiny_corpus, *FAST, "--out", out)
    assert again.returncode == 1 and "--resume" in again.stderr.splitlines()[-1]
    resumed = kws("train", "--resume", "--out", out, "--epochs", "3", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and "stage 2 of 2" in resumed.stderr
    assert [m["epoch"] for m in read_metrics(out / "clip")] == [1, 2]  # the clip stage's own 2
    assert [m["epoch"] for m in read_metrics(out)] == [1, 2, 3]  # --epochs: the stream stage's
    stream = json.loads((out / "config.json").read_text())["train"]
    assert stream["lr"] == 3e-3 and stream["objective"] == "stream"
    assert json.loads(resumed.stdout)["init"] == str((out / "clip" / "best.pt").resolve())


@pytest.mark.slow
def test_training_errors_are_one_line(tmp_path, tiny_corpus):
    missing = kws("train", "--data", tmp_path / "nowhere")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "no such data folder" in missing.stderr
    nothing = kws("train", "--resume", "--out", tmp_path / "none")
    assert nothing.returncode == 1 and "nothing to resume" in nothing.stderr
    no_data = kws("train")
    assert no_data.returncode == 1 and "--data is required" in no_data.stderr
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    occupied = kws("train", "--data", tiny_corpus, *FAST, "--out", mine)
    assert occupied.returncode == 1 and "holds other files" in occupied.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_a_failed_run_leaves_no_folder_and_keeps_runs_latest(tiny_corpus, tmp_path):
    good = kws("train", "--data", tiny_corpus, *FAST, "--epochs", "1", cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    latest = tmp_path / "runs" / "latest"
    target = latest.resolve()
    runs_before = sorted(p.name for p in (tmp_path / "runs").iterdir())
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(tiny_corpus, broken)
    for clip in broken.glob("*/*.wav"):  # every clip unreadable: the run cannot start
        if clip.parent.name != "_background_noise_":
            clip.write_text("not audio")
    time.sleep(1.1)  # a new run folder name (it holds the time to the second)
    failed = kws("train", "--data", broken, *FAST, "--epochs", "1", cwd=tmp_path)
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert failed.returncode == 1 and len(errors) == 1, failed.stderr
    assert "unreadable" in errors[0] and "Traceback" not in failed.stderr
    assert failed.stderr.splitlines()[-1] == errors[0]  # warnings name the clips, then the error
    assert latest.resolve() == target
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == runs_before
    elsewhere = kws(
        "train", "--data", tiny_corpus, *FAST, "--epochs", "1", "--out", tmp_path / "other" / "run"
    )
    assert elsewhere.returncode == 0, elsewhere.stderr
    assert not (tmp_path / "other" / "latest").exists() and latest.resolve() == target


@pytest.mark.slow
def test_an_unreadable_clip_is_skipped_with_a_warning(tiny_corpus, tmp_path):
    bad = sorted(tiny_corpus.glob("yes/*.wav"))[0]
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    for workers in ("0", "1"):  # in-line and in a worker process alike
        out = tmp_path / f"run{workers}"
        options = [o if o != "0" else workers for o in FAST]
        result = kws("train", "--data", tiny_corpus, *options, "--epochs", "1", "--out", out)
        assert result.returncode == 0, result.stderr
        warnings = [line for line in result.stderr.splitlines() if "skipping an unreadable" in line]
        assert len(warnings) == 1 and bad.name in warnings[0] and "Traceback" not in result.stderr
    evaluated = kws("eval", out / "best.pt", "--split", "training", "--quiet", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert bad.name in evaluated.stderr and json.loads(evaluated.stdout)["skipped_unreadable"] == 1


def test_a_full_disk_while_saving_keeps_the_checkpoints(tiny_corpus, tmp_path, monkeypatch):
    from kws_ghost.config import FrontendConfig, ModelConfig, TrainConfig
    from kws_ghost.errors import KwsError
    from kws_ghost.train import Trainer

    out = tmp_path / "run"
    config = TrainConfig(
        data=str(tiny_corpus),
        epochs=3,
        batch_size=8,
        workers=0,
        val_recording_minutes=0.5,
        warm_start="none",
    )
    trainer = Trainer(
        config, ModelConfig(hidden=16, layers=1), FrontendConfig(), out, progress=False
    )
    trainer.run(stop_after=1)
    saved = {name: (out / name).read_bytes() for name in ("best.pt", "last.pt")}
    real_open = open

    class FullDisk:
        """A checkpoint's temporary file on a disk that fills up at the first write."""

        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.handle, name)

    def full_disk_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        name = os.path.basename(str(path))
        if "w" in mode and ".pt." in name and name.endswith(".tmp"):
            return FullDisk(handle)
        return handle

    monkeypatch.setattr("builtins.open", full_disk_open)
    with pytest.raises(KwsError, match="no space left on device writing .*run/(best|last).pt"):
        Trainer.resume(out, progress=False).run()
    monkeypatch.undo()
    for name, data in saved.items():
        assert (out / name).read_bytes() == data
        load_checkpoint(out / name)
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_a_relative_data_path_works_from_anywhere(tiny_corpus, tmp_path):
    import shutil

    project = tmp_path / "project"
    shutil.copytree(tiny_corpus, project / "data" / "tiny")
    trained = kws(
        "train", "--data", "data/tiny", *FAST, "--epochs", "1", "--out", "run", cwd=project
    )
    assert trained.returncode == 0, trained.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evaluated = kws("eval", project / "run" / "best.pt", "--quiet", "--json", cwd=elsewhere)
    assert evaluated.returncode == 0, evaluated.stderr
    assert Path(json.loads(evaluated.stdout)["data"]).resolve() == (project / "data" / "tiny")


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
def test_eval_refuses_bad_checkpoints(tiny_corpus, tmp_path, kind):
    from kws_ghost.checkpoint import save_checkpoint
    from kws_ghost.config import FrontendConfig, ModelConfig
    from kws_ghost.models import build_model

    best = tmp_path / "best.pt"  # a good checkpoint to spoil: no training needed
    model = build_model(ModelConfig(hidden=16, layers=1, num_classes=5))
    save_checkpoint(best, model, FrontendConfig(), ["_silence_", "_unknown_", "yes", "no", "maybe"])
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
        expect = "not a readable ONNX model"
    else:
        path = tmp_path / "absent.pt"
        expect = "no such model"
    result = kws("eval", path, "--data", tiny_corpus, "--quiet")
    assert result.returncode == 1
    assert expect in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.slow
def test_flags_that_do_not_go_together_are_one_line(tiny_corpus, tmp_path):
    pooled = kws(
        "train", "--data", tiny_corpus, *FAST, "--pooling", "mean", "--out", tmp_path / "a"
    )
    assert pooled.returncode == 1 and "goes with --objective clip" in pooled.stderr
    assert pooled.stderr.count("\n") == 1 and not (tmp_path / "a").exists()
    task = kws(
        "train",
        "--data",
        tiny_corpus,
        *FAST,
        "--epochs",
        "1",
        "--task",
        "gsc12",
        "--keywords",
        "yes,no",
        "--out",
        tmp_path / "b",
    )
    assert task.returncode == 0, task.stderr
    assert json.loads((tmp_path / "b" / "config.json").read_text())["train"]["task"] == "gsc12"


def test_a_models_objective_is_recorded_or_derived_from_its_pooling():
    from kws_ghost.config import ModelConfig, TrainConfig
    from kws_ghost.objectives import make_objective

    assert ModelConfig(pooling="max").streams and not ModelConfig(pooling="mean").streams
    assert not ModelConfig(pooling="max", objective="clip").streams  # recorded wins
    labels = ["_silence_", "_unknown_", "yes"]
    clip = make_objective(TrainConfig(objective="clip"), labels).network_config(ModelConfig())
    assert clip.objective == "clip" and clip.pooling == "mean" and not clip.streams
    stream = make_objective(TrainConfig(), labels).network_config(ModelConfig())
    assert stream.objective == "stream" and stream.streams


@pytest.mark.slow
def test_init_starts_a_run_from_another_models_weights(tiny_corpus, tmp_path):
    """--init: a stream run from a clip run's weights (the two-stage recipe), and one clear line
    for a model file of another width or another front-end."""
    from kws_ghost.build import build_data, build_network
    from kws_ghost.config import FrontendConfig, ModelConfig, TrainConfig

    clip = train_one_epoch(tiny_corpus, tmp_path / "clip", "--objective", "clip")
    source = load_checkpoint(clip / "best.pt")
    config = TrainConfig(data=str(tiny_corpus), init=str(clip / "best.pt"))
    data = build_data(config, FrontendConfig(), None, lambda message: None, False)
    model = build_network(ModelConfig(hidden=16, layers=1), FrontendConfig(), data, config)
    assert model.config.objective == "stream" and source.model_config.objective == "clip"
    for name, value in model.state_dict().items():
        assert torch.equal(value, source.model_state[name]), name

    stream = tmp_path / "stream"
    second = kws(
        "train", "--data", tiny_corpus, *FAST, "--epochs", "1", "--init", clip / "best.pt",
        "--out", stream, "--json",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert json.loads((stream / "config.json").read_text())["train"]["init"] == str(
        (clip / "best.pt").resolve()
    )
    wider = kws("train", "--data", tiny_corpus, *FAST, "--hidden", "24", "--init", clip / "best.pt")
    assert wider.returncode == 1 and "Traceback" not in wider.stderr
    assert "another model: hidden 16 (this run: 24)" in wider.stderr.splitlines()[-1]
    other = kws(
        "train", "--data", tiny_corpus, *FAST, "--features", "logmel", "--init", clip / "best.pt"
    )
    assert other.returncode == 1 and "front-end" in other.stderr.splitlines()[-1]
    missing = kws("train", "--data", tiny_corpus, *FAST, "--init", tmp_path / "none.pt")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "none.pt" in missing.stderr.splitlines()[-1]


def test_a_checkpoint_from_before_ensembles_names_its_teacher_as_a_list():
    """Checkpoints saved before --teacher could be given twice hold one path, or "" for none."""
    from kws_ghost.config import TrainConfig, from_dict

    old = {"objective": "stream", "teacher": "/runs/gru/best.pt"}
    assert from_dict(TrainConfig, old).teacher == ["/runs/gru/best.pt"]  # validated on load
    assert from_dict(TrainConfig, {**old, "teacher": ""}).teacher == []


def test_a_stored_config_gets_what_earlier_versions_did_where_it_is_silent():
    """Resumes and second stages rebuild the recipe a run trained with, not today's defaults."""
    from kws_ghost.config import AugmentConfig, TrainConfig, stored_train_config, to_dict
    from kws_ghost.errors import KwsError

    oldest = stored_train_config({"epochs": 3, "augment": {"time_masks": 1}}, "old")
    assert (oldest.objective, oldest.warm_start, oldest.augment.vtlp) == ("clip", "none", 0.0)
    assert oldest.augment.time_masks == 1
    today = TrainConfig(augment=AugmentConfig(vtlp=0.15))
    assert stored_train_config(to_dict(today), "new") == today
    with pytest.raises(KwsError, match="old: expected a mapping"):
        stored_train_config(["not", "a", "config"], "old")


@pytest.mark.slow
def test_teacher_distils_a_stream_model_into_another(tiny_corpus, tmp_path):
    """--teacher: a stream run learns from another stream model's posteriors as well. Weight 0
    trains exactly the run without a teacher (the teacher's carried state draws nothing random),
    any other weight changes the weights; a clip model or another task's model as teacher is one
    clear line, before any training."""
    student = [*FAST, "--model", "gru", "--hidden", "12", "--epochs", "1"]
    teacher = tmp_path / "none"  # the run without a teacher teaches the others
    runs = {}
    for name, extra in {
        "none": [],
        "zero": ["--teacher", teacher / "best.pt", "--teacher-weight", "0"],
        "half": ["--teacher", teacher / "best.pt"],
        # an ensemble teaches the mean of its logits: one model twice is that model exactly
        "twice": ["--teacher", teacher / "best.pt", "--teacher", teacher / "best.pt"],
        "pair": ["--teacher", teacher / "best.pt", "--teacher", tmp_path / "half" / "best.pt"],
    }.items():
        result = kws("train", "--data", tiny_corpus, *student, *extra, "--out", tmp_path / name)
        assert result.returncode == 0, result.stderr
        runs[name] = load_checkpoint(tmp_path / name / "last.pt").model_state
    assert all(torch.equal(runs["none"][k], runs["zero"][k]) for k in runs["none"])
    assert not all(torch.equal(runs["none"][k], runs["half"][k]) for k in runs["none"])
    assert all(torch.equal(runs["half"][k], runs["twice"][k]) for k in runs["half"])
    assert not all(torch.equal(runs["half"][k], runs["pair"][k]) for k in runs["half"])
    config = json.loads((tmp_path / "half" / "config.json").read_text())["train"]
    assert config["teacher"] == [str((teacher / "best.pt").resolve())]
    pair = json.loads((tmp_path / "pair" / "config.json").read_text())["train"]["teacher"]
    assert pair == [config["teacher"][0], str((tmp_path / "half" / "best.pt").resolve())]
    # two stages, the teacher named from the run's folder: the clip stage trains without it,
    # and its last.pt keeps the stream stage's teacher as a path a resume finds from anywhere
    two_stages = [*TWO_STAGES, "--model", "gru", "--hidden", "12", "--epochs", "1"]
    staged = kws("train", "--data", tiny_corpus, *two_stages, "--teacher", "none/best.pt",
                 "--out", "staged", cwd=tmp_path)  # fmt: skip
    assert staged.returncode == 0, staged.stderr
    stage = load_checkpoint(tmp_path / "staged" / "clip" / "last.pt").extra["train_state"]
    assert stage["then"]["train"]["teacher"] == config["teacher"]
    clip_config = json.loads((tmp_path / "staged" / "clip" / "config.json").read_text())
    assert clip_config["train"]["teacher"] == []

    # `eval A B` scores the pair as the ensemble it distils from, on the first model's split
    scored = {}
    for name, models in {"one": ["none"], "pair": ["none", "half"]}.items():
        paths = [str(tmp_path / m / "best.pt") for m in models]
        result = CliRunner().invoke(main, ["eval", *paths, "--split", "validation", "--json"])
        assert result.exit_code == 0, result.output
        scored[name] = json.loads(result.stdout)
        assert scored[name]["models"] == paths
    assert scored["pair"]["count"] == scored["one"]["count"] > 0
    assert scored["pair"]["params"] == 2 * scored["one"]["params"]

    clip = train_one_epoch(tiny_corpus, tmp_path / "clip", "--objective", "clip")
    mixed = CliRunner().invoke(main, ["eval", str(teacher / "best.pt"), str(clip / "best.pt")])
    assert mixed.exit_code == 1 and "pooling not as in" in mixed.stderr.splitlines()[-1]
    refused = kws("train", "--data", tiny_corpus, *two_stages, "--teacher", clip / "best.pt",
                  "--out", tmp_path / "refused")  # fmt: skip
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "a clip model; a teacher streams" in refused.stderr.splitlines()[-1]
    assert not (tmp_path / "refused").exists()  # refused before its clip stage trained
    other = kws("train", "--data", tiny_corpus, *student, "--task", "custom", "--keywords", "yes",
                "--teacher", teacher / "best.pt", cwd=tmp_path)  # fmt: skip
    assert other.returncode == 1 and "its labels" in other.stderr.splitlines()[-1]
