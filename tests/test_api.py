"""The Python API (``from kws_ghost import Detector``): the events of ``detect``, any chunk size,
float32 or int16 samples, one-line refusals, no torch for an ONNX model."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch

from kws_ghost.checkpoint import save_checkpoint
from kws_ghost.config import FrontendConfig, ModelConfig
from kws_ghost.errors import KwsError
from kws_ghost.models import build_model

LABELS = ["_silence_", "_unknown_", "yes", "no"]


@pytest.fixture
def random_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="ghost-gru", hidden=32, layers=1, num_classes=4))
    model.set_normalization(torch.randn(40) * 5 - 20, torch.rand(40) * 5 + 5)
    detection = {
        "threshold": 0.4,
        "det": [
            {"threshold": 0.3, "hit_rate": 0.9, "false_alarms_per_hour": 30.0},
            {"threshold": 0.6, "hit_rate": 0.7, "false_alarms_per_hour": 2.0},
        ],
    }
    path = tmp_path / "random.pt"
    save_checkpoint(path, model.eval(), FrontendConfig(), LABELS, detection=detection)
    return path


def test_detector_gives_the_events_of_detect_in_any_chunks(exported, test_recording):
    from kws_ghost import Detector

    wav, _ = test_recording
    pcm = soundfile.read(wav, dtype="int16")[0]
    result = subprocess.run(
        [sys.executable, "-m", "kws_ghost", "detect", str(wav), "--model", str(exported)]
        + ["--format", "json", "--scorer", "stream"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    expected = [
        {k: v for k, v in json.loads(line).items() if k != "file"}
        for line in result.stdout.splitlines()
    ]
    assert len(expected) >= 5
    detector = Detector(exported)
    for samples, chunk in ((pcm, 1280), (pcm.astype(np.float32) / 32768, 333)):
        events = []
        for start in range(0, len(samples), chunk):
            events += detector.process(samples[start : start + chunk])
        events += detector.flush()  # ends the stream and starts a new one
        assert [e.as_dict() for e in events] == expected
    assert set(detector.keywords) == {"yes", "no", "up", "down"}


def test_scores_are_the_keyword_posteriors_of_each_frame(exported, test_recording):
    from kws_ghost import Detector, load_model
    from kws_ghost.frontend import compute_features
    from kws_ghost.scorers import FrameScorer

    wav, _ = test_recording
    audio = soundfile.read(wav, dtype="float32")[0][: 5 * 16000]
    detector = Detector(exported, keywords=["yes", "up"])
    parts = [detector.scores(audio[i : i + 500]) for i in range(0, len(audio), 500)]
    assert all(list(p) == ["yes", "up"] for p in parts)
    runtime = load_model(exported)
    frames = compute_features(audio, runtime.frontend_config)
    posteriors = FrameScorer(runtime).push(frames)
    for keyword in ("yes", "up"):
        got = np.concatenate([p[keyword] for p in parts])
        assert np.array_equal(got, posteriors[:, runtime.labels.index(keyword)])
    detector.reset()
    again = [detector.scores(audio[i : i + 500]) for i in range(0, len(audio), 500)]
    assert np.array_equal(
        np.concatenate([p["yes"] for p in again]), np.concatenate([p["yes"] for p in parts])
    )


def test_detector_with_an_onnx_model_imports_no_torch(exported):
    code = (
        "import sys, numpy as np; from kws_ghost import Detector; "
        f"d = Detector({str(exported)!r}, false_alarms_per_hour=5); "
        "d.process(np.zeros(16000, np.int16)); d.scores(np.zeros(800, np.float32)); "
        "assert 'torch' not in sys.modules, 'torch was imported'; print(d.threshold)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 0 < float(result.stdout) <= 1


def test_detector_threshold_from_the_det_or_given(random_checkpoint):
    from kws_ghost import Detector

    assert Detector(random_checkpoint).threshold == 0.4  # the model's operating point
    assert Detector(random_checkpoint, false_alarms_per_hour=2).threshold == 0.6
    assert Detector(random_checkpoint, threshold=0.25).threshold == 0.25
    with pytest.raises(KwsError, match="not both"):
        Detector(random_checkpoint, threshold=0.3, false_alarms_per_hour=2)
    with pytest.raises(KwsError, match="not in the model's labels"):
        Detector(random_checkpoint, keywords=["maybe"])


@pytest.mark.parametrize(
    "samples, message",
    [
        (np.zeros(100, np.int32), "not int32"),
        (np.zeros(100, np.uint8), "not uint8"),
        (np.full(100, np.nan, np.float32), "NaN"),
        (np.zeros((100, 2), np.float32), "mono"),
        (np.full(100, 12000.0, np.float32), "int16 values as floats"),
    ],
)
def test_detector_refuses_samples_it_cannot_read_in_one_line(random_checkpoint, samples, message):
    from kws_ghost import Detector

    detector = Detector(random_checkpoint)
    with pytest.raises(KwsError, match=message) as caught:
        detector.process(samples)
    assert "\n" not in str(caught.value)
    detector.process(np.zeros(1600, np.float32))  # the stream goes on after a refused chunk
    assert detector.seconds > 0
