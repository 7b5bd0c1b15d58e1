"""Streaming detection: window scores equal offline ones, event logic, files, stdin, errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from click.testing import CliRunner

from kws_ghost.checkpoint import save_checkpoint
from kws_ghost.cli import main
from kws_ghost.config import DetectorConfig, FrontendConfig, ModelConfig
from kws_ghost.features import Frontend
from kws_ghost.models import build_model
from kws_ghost.stream import (
    EventDecoder,
    KeywordDetector,
    WindowScore,
    decode_scores,
    load_scorer,
)

LABELS = ["_silence_", "_unknown_", "yes", "no"]


def kws(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "kws_ghost", *map(str, args)],
        capture_output=True,
        text=True,
        **kwargs,
    )


@pytest.fixture
def random_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden=32, layers=2, num_classes=4))
    model.set_normalization(torch.randn(40) * 5 - 20, torch.rand(40) * 5 + 5)
    path = tmp_path / "random.pt"
    save_checkpoint(path, model, FrontendConfig(), LABELS)
    return path


def speechless_audio(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    tone = 0.2 * np.sin(2 * np.pi * (200 + 100 * np.sin(t)) * t) * (np.sin(3 * t) > 0)
    return (tone + 0.02 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("hop_ms", [10, 50, 100])
def test_window_scores_equal_offline_classifier(random_checkpoint, hop_ms):
    scorer = load_scorer(random_checkpoint)
    audio = speechless_audio(3.3)
    detector = KeywordDetector(scorer, DetectorConfig(hop_ms=hop_ms))
    rng = np.random.default_rng(1)
    scores, position = [], 0
    while position < len(audio):
        size = int(rng.integers(1, 4000))
        scores += detector.push_scores(audio[position : position + size])
        position += size
    hop_samples = hop_ms * 16
    expected_windows = (len(audio) - 16000) // hop_samples + 1
    assert len(scores) in (expected_windows, expected_windows - 1)  # last may lack its final frame
    frontend, model = Frontend(FrontendConfig()), scorer.model
    starts = [int(round(s.start * 16000)) for s in scores]
    clips = torch.from_numpy(np.stack([audio[s : s + 16000] for s in starts]))
    with torch.inference_mode():
        offline = torch.softmax(model(frontend(clips))[0], -1).numpy()
    online = np.stack([s.probabilities for s in scores])
    assert np.abs(online - offline).max() < 1e-4
    assert starts == [i * hop_samples for i in range(len(scores))]


def test_chunk_size_does_not_change_events(random_checkpoint):
    scorer = load_scorer(random_checkpoint)
    audio = speechless_audio(4.0, seed=2)
    config = DetectorConfig(threshold=0.3, patience=1)
    results = []
    for chunk in (160, 1237, 16000, len(audio)):
        detector = KeywordDetector(scorer, config)
        events = []
        for i in range(0, len(audio), chunk):
            events += detector.push(audio[i : i + chunk])
        results.append([e.as_dict() for e in events + detector.flush()])
    assert all(r == results[0] for r in results)


def window(t: float, probabilities) -> WindowScore:
    return WindowScore(t, t + 1.0, np.asarray(probabilities, dtype=float))


def run_decoder(rows, **settings):
    config = DetectorConfig(**{"smoothing": 1, "patience": 1, "refractory": 0.0, **settings})
    return decode_scores([window(0.1 * i, p) for i, p in enumerate(rows)], LABELS, config, 1.0)


def test_decoder_turns_a_run_into_one_event_with_the_word_span():
    low, yes = [0.9, 0.1, 0, 0], [0.0, 0.1, 0.9, 0]
    events = run_decoder([low] * 3 + [yes] * 4 + [low] * 3)
    assert len(events) == 1
    event = events[0]
    assert event.keyword == "yes" and event.score == pytest.approx(0.9)
    # windows 3..6 hold the word: it lies in [start of window 6, end of window 3]
    assert event.start == pytest.approx(0.6) and event.end == pytest.approx(1.3)


def test_event_snaps_to_the_loud_frames_around_the_run():
    # A word at 1.20-1.50 s (40 dB over the floor) and another, louder, at 0.10-0.30 s; the
    # model fires on windows starting at 0.6-0.9 s, which all hold the first word's frames.
    def levels(start: float) -> np.ndarray:
        t = start + 0.016 + 0.01 * np.arange(97)
        loud = ((t >= 1.2) & (t < 1.5)) | ((t >= 0.1) & (t < 0.3))
        return np.where(loud, -20.0, -60.0) + np.where((t >= 1.32) & (t < 1.38), -45.0, 0.0)

    low, yes = [0.9, 0.1, 0, 0], [0.0, 0.1, 0.9, 0]
    rows = [low] * 6 + [yes] * 4 + [low] * 3
    scores = [
        WindowScore(0.1 * i, 0.1 * i + 1.0, np.asarray(p, float), levels(0.1 * i))
        for i, p in enumerate(rows)
    ]
    config = DetectorConfig(smoothing=1, patience=1, refractory=0.0)
    (event,) = decode_scores(scores, LABELS, config, 1.0)
    # the loud stretch that overlaps the windows' intersection [0.9, 1.6], with the 60 ms dip
    # inside the word bridged; not the other word
    assert event.start == pytest.approx(1.2, abs=0.011) and event.end == pytest.approx(
        1.5, abs=0.011
    )
    # a second run, as another keyword, on the same word's frames is not a second event
    no = [0.0, 0.1, 0.0, 0.9]
    rows = [low] * 6 + [yes] * 4 + [no] * 2 + [low] * 3
    scores = [
        WindowScore(0.1 * i, 0.1 * i + 1.0, np.asarray(p, float), levels(0.1 * i))
        for i, p in enumerate(rows)
    ]
    assert [e.keyword for e in decode_scores(scores, LABELS, config, 1.0)] == ["yes"]
    # an event still waiting goes out before a later one that is final at once
    later = [WindowScore(2.0 + 0.1 * i, 3.0 + 0.1 * i, np.asarray(no, float)) for i in range(2)]
    events = decode_scores(scores[:10] + later, LABELS, config, 1.0)
    assert [e.keyword for e in events] == ["yes", "no"] and events[0].end < events[1].start
    flat = [WindowScore(s.start, s.end, s.probabilities, np.full(97, -50.0)) for s in scores]
    event = decode_scores(flat, LABELS, config, 1.0)[0]
    assert (event.start, event.end) == pytest.approx((0.9, 1.6))  # nothing loud: the intersection


def test_decoder_patience_threshold_refractory_and_filters():
    low, yes, no = [0.9, 0.1, 0, 0], [0, 0.1, 0.9, 0], [0, 0.1, 0, 0.9]
    assert run_decoder([low, yes, low], patience=2) == []
    assert len(run_decoder([low, yes, yes, low], patience=2)) == 1
    assert run_decoder([low, yes, yes, low], threshold=0.95) == []
    # silence and unknown never fire, however sure
    assert run_decoder([[0, 1.0, 0, 0]] * 5) == []
    assert run_decoder([[1.0, 0, 0, 0]] * 5) == []
    # refractory: a second keyword right after the first is suppressed
    rows = [yes, yes, low, no, no, low]
    assert [e.keyword for e in run_decoder(rows)] == ["yes", "no"]
    assert [e.keyword for e in run_decoder(rows, refractory=5.0)] == ["yes"]
    # keyword filter
    assert [e.keyword for e in run_decoder(rows, keywords=["no"])] == ["no"]
    with pytest.raises(Exception, match="not in the model's labels"):
        EventDecoder(LABELS, DetectorConfig(keywords=["maybe"]), 1.0)


def test_decoder_smooths_posteriors():
    low, yes = [0.9, 0.1, 0, 0], [0, 0.1, 0.9, 0]
    assert run_decoder([low, low, yes, low, low], smoothing=3, threshold=0.5) == []
    assert len(run_decoder([low, yes, yes, yes, low], smoothing=3, threshold=0.5)) == 1


def test_memory_stays_bounded_on_a_long_stream(random_checkpoint):
    detector = KeywordDetector(load_scorer(random_checkpoint))
    block = speechless_audio(5.0)
    ring = detector.windows.ring
    for _ in range(60):  # five minutes
        detector.push(block)
        assert detector.frontend.pending_samples < 512
        assert detector.windows.ring is ring and ring.shape == (97, 40)
        assert len(detector.decoder.recent) <= detector.config.smoothing
    hop = detector.windows.hop_frames * 160
    assert detector.scores_seen == (300 * 16000 - 16000) // hop + 1


def test_trained_model_finds_keywords_at_their_times(trained_run, tmp_path):
    from kws_ghost.stream_eval import build_recording, evaluate_recording, match_events

    wav = tmp_path / "stream.wav"
    truth = build_recording(
        trained_run["corpus"],
        wav,
        ["yes", "no", "up", "down"],
        duration=40,
        split="testing",
        seed=1,
    )
    assert len(truth["events"]) >= 8 and truth["distractors"]
    result = kws("detect", wav, "--model", trained_run["best"], "--format", "json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events and set(events[0]) == {"file", "keyword", "start", "end", "score"}

    class E:
        def __init__(self, d):
            self.keyword, self.start, self.end = d["keyword"], d["start"], d["end"]

    hits, false_alarms, offsets = match_events([E(e) for e in events], truth["events"])
    assert hits >= 0.75 * len(truth["events"]), (events, truth["events"])
    assert max(offsets) <= 0.25  # event centre within 250 ms of the word's centre
    assert false_alarms <= 2
    scorer = load_scorer(trained_run["best"])
    report = evaluate_recording(scorer, wav, truth)
    assert report["hits"] == hits and len(report["det"]) > 10
    rates = [p["hit_rate"] for p in report["det"]]
    assert rates == sorted(rates, reverse=True)  # higher thresholds never hit more


def test_trained_model_is_quiet_on_noise(trained_run, tmp_path):
    noise = sorted((trained_run["corpus"] / "_background_noise_").glob("*.wav"))
    assert len(noise) >= 3
    result = kws("detect", *noise, "--model", trained_run["best"], "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "file,keyword,start,end,score"  # no event at all


def test_detect_reads_stereo_and_other_rates_and_stdin(random_checkpoint, tmp_path):
    import soxr

    audio = speechless_audio(2.5)
    mono = tmp_path / "mono.wav"
    soundfile.write(mono, audio, 16000)
    options = [
        "--model",
        str(random_checkpoint),
        "--threshold",
        "0.3",
        "--patience",
        "1",
        "--format",
        "json",
    ]
    reference = CliRunner().invoke(main, ["detect", str(mono), *options])
    assert reference.exit_code == 0, reference.output
    assert reference.output.strip()
    for rate in (44100, 48000):
        stereo = tmp_path / f"stereo{rate}.wav"
        resampled = soxr.resample(audio, 16000, rate)
        soundfile.write(stereo, np.stack([resampled, 0.5 * resampled], 1), rate)
        result = CliRunner().invoke(main, ["detect", str(stereo), *options])
        assert result.exit_code == 0, result.output
        assert len(result.output.splitlines()) == len(reference.output.splitlines())
    pcm = (audio * 32767).astype("<i2").tobytes()
    piped = subprocess.run(
        [sys.executable, "-m", "kws_ghost", "detect", "-", *options],
        input=pcm,
        capture_output=True,
    )
    assert piped.returncode == 0, piped.stderr
    strip = [
        {k: v for k, v in json.loads(line).items() if k != "file"}
        for line in piped.stdout.decode().splitlines()
    ]
    expected = [
        {k: v for k, v in json.loads(line).items() if k != "file"}
        for line in reference.output.splitlines()
    ]
    assert len(strip) == len(expected)
    for a, b in zip(strip, expected):
        assert a["keyword"] == b["keyword"] and abs(a["start"] - b["start"]) < 1e-3


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "missing"])
def test_detect_bad_audio_is_one_line(random_checkpoint, tmp_path, kind):
    path = tmp_path / "bad.wav"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        soundfile.write(path, speechless_audio(2.0), 16000)
        path.write_bytes(path.read_bytes()[:20000])
    elif kind == "text":
        path.write_text("this is not audio\n" * 100)
    result = kws("detect", path, "--model", random_checkpoint)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert str(path) in result.stderr


def test_detect_without_a_model_says_how_to_get_one(tmp_path):
    wav = tmp_path / "a.wav"
    soundfile.write(wav, speechless_audio(1.5), 16000)
    env = {k: v for k, v in __import__("os").environ.items() if k != "KWS_GHOST_MODEL"}
    result = kws("detect", wav, cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "--model" in result.stderr and "kws-ghost train" in result.stderr


def test_detect_continues_after_a_bad_file(random_checkpoint, tmp_path):
    good = tmp_path / "good.wav"
    soundfile.write(good, speechless_audio(1.5), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_text("nope")
    result = kws("detect", bad, good, "--model", random_checkpoint, "--format", "csv")
    assert result.returncode == 1
    assert result.stdout.startswith("file,keyword") and "bad.wav" in result.stderr
