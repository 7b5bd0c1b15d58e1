"""Streaming detection: state carried across chunks, segment batching, the event decoder,
files, stdin, thresholds from the DET, errors."""

import json
import os
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
from kws_ghost.frontend import StreamingFrontend, compute_features, frame_levels
from kws_ghost.models import build_model
from kws_ghost.runtime import load_model, softmax
from kws_ghost.scorers import FrameScorer, SegmentScorer
from kws_ghost.stream import EventDecoder, KeywordDetector, decode, resolve_threshold

LABELS = ["_silence_", "_unknown_", "yes", "no"]
FE = FrontendConfig()


def kws(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "kws_ghost", *map(str, args)],
        capture_output=True,
        text=True,
        **kwargs,
    )


def random_model(arch="ghost-gru", layers=2, pooling="max", seed=0):
    """An untrained model whose outputs these tests' thresholds were set on (ratio 2: how fast
    a random state forgets, and which random events it fires, depend on the ratio)."""
    torch.manual_seed(seed)
    model = build_model(
        ModelConfig(arch=arch, hidden=32, ratio=2, layers=layers, num_classes=4, pooling=pooling)
    )
    model.set_normalization(torch.randn(40) * 5 - 20, torch.rand(40) * 5 + 5)
    return model.eval()


@pytest.fixture
def random_checkpoint(tmp_path):
    path = tmp_path / "random.pt"
    detection = {
        "target_fa_per_hour": 10.0,
        "threshold": 0.4,
        "decoder": {"smoothing": 0.1, "patience": 0.03, "refractory": 0.5},
        "det": [
            {"threshold": 0.3, "hit_rate": 0.9, "false_alarms_per_hour": 30.0},
            {"threshold": 0.4, "hit_rate": 0.8, "false_alarms_per_hour": 9.0},
            {"threshold": 0.6, "hit_rate": 0.7, "false_alarms_per_hour": 2.0},
        ],
    }
    save_checkpoint(path, random_model(), FE, LABELS, detection=detection)
    return path


def speechless_audio(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    tone = 0.2 * np.sin(2 * np.pi * (200 + 100 * np.sin(t)) * t) * (np.sin(3 * t) > 0)
    return (tone + 0.02 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("arch", ["ghost-gru", "gru", "ghost-lstm"])
def test_state_carried_across_chunks_equals_one_pass(arch):
    """Any chunking of the stream, down to one frame, gives the posteriors of one pass."""
    model = random_model(arch)
    frames = compute_features(speechless_audio(2.0), FE)
    with torch.inference_mode():
        whole = model(torch.from_numpy(frames)[None])[0][0].numpy()
        state = model.initial_state(1)
        stepped = []
        for frame in torch.from_numpy(frames):  # the per-frame step a device runs
            logits, state = model.step(frame[None], state)
            stepped.append(logits[0].numpy())
    assert np.abs(np.stack(stepped) - whole).max() < 1e-4
    runtime = load_model_from(model)
    rng = np.random.default_rng(1)
    for sizes in ([1] * len(frames), rng.integers(1, 40, size=len(frames))):
        scorer, parts, position = FrameScorer(runtime), [], 0
        for size in sizes:
            if position >= len(frames):
                break
            parts.append(scorer.push(frames[position : position + int(size)]))
            position += int(size)
        assert np.abs(np.concatenate(parts) - softmax(whole)).max() < 1e-4


def load_model_from(model, labels=LABELS):
    from kws_ghost.runtime import TorchRuntime

    return TorchRuntime(model, labels, FE)


def test_an_ensemble_runs_the_mean_of_its_models_logits_with_their_states_carried():
    """EnsembleRuntime (``eval A B``): the mean of its members' frame logits, each member's
    state carried across pushes inside the joined state, whatever the members' state shapes."""
    from kws_ghost.errors import KwsError
    from kws_ghost.runtime import EnsembleRuntime

    members = [
        load_model_from(random_model("ghost-gru", layers=2, seed=1)),  # state [2, B, 16]
        load_model_from(random_model("gru", layers=1, seed=2)),  # state [1, B, 32]
    ]
    ensemble = EnsembleRuntime(members)
    frames = np.random.default_rng(0).normal(-20, 5, size=(3, 50, 40)).astype(np.float32)
    alone = [m.run(frames, m.initial_state(3))[0] for m in members]
    state, parts = ensemble.initial_state(3), []
    bounds = [0, 7, 30, 50]  # three pushes of unequal size, the state carried between them
    for start, end in zip(bounds, bounds[1:]):
        logits, state = ensemble.run(frames[:, start:end], state)
        parts.append(logits)
    assert np.abs(np.concatenate(parts, axis=1) - (alone[0] + alone[1]) / 2).max() < 1e-5
    assert not np.allclose(alone[0], alone[1])  # so the mean is not either model's logits
    assert ensemble.params == members[0].params + members[1].params
    # one model twice is that model: its clip scores exactly
    twice = EnsembleRuntime([members[0], members[0]])
    assert np.allclose(twice.clip_logits(frames), members[0].clip_logits(frames), atol=1e-6)
    other = load_model_from(
        random_model("gru", layers=1), labels=["_silence_", "_unknown_", "a", "b"]
    )
    with pytest.raises(KwsError, match="labels not as in"):
        EnsembleRuntime([members[0], other])
    clip = load_model_from(random_model("gru", layers=1, pooling="mean"))
    with pytest.raises(KwsError, match="pooling not as in"):
        EnsembleRuntime([members[0], clip])


def test_streaming_frontend_gives_the_same_frames_for_any_chunking():
    audio = speechless_audio(3.1)
    whole = compute_features(audio, FE)
    stream = StreamingFrontend(FE)
    rng = np.random.default_rng(2)
    parts, position = [], 0
    while position < len(audio):
        size = int(rng.integers(1, 3000))
        parts.append(stream.push(audio[position : position + size]))
        position += size
        assert stream.pending_samples < FE.n_fft
    assert np.abs(np.concatenate(parts) - whole).max() < 1e-4


def test_segment_scorer_matches_the_stream_after_its_warm_up():
    """Segments are exact at the stream's start and converge on the stream as the warm-up
    grows (an untrained model forgets slowly; the trained one is checked by its events)."""
    runtime = load_model_from(random_model())
    frames = compute_features(speechless_audio(12.0, seed=3), FE)
    exact = FrameScorer(runtime).push(frames)
    errors = []
    for warmup in (50, 150, 400):
        scorer = SegmentScorer(runtime, segment=150, warmup=warmup, batch=3)
        parts = [scorer.push(frames[i : i + 400]) for i in range(0, len(frames), 400)]
        assert sum(len(p) for p in parts) == len(frames) // 450 * 450  # whole blocks so far
        batched = np.concatenate([*parts, scorer.flush()])
        assert batched.shape == exact.shape
        assert np.abs(batched[:150] - exact[:150]).max() < 1e-5  # the stream's own start
        errors.append(np.abs(batched - exact).max())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3, errors


def posteriors(rows):
    return np.asarray(rows, dtype=np.float64)


def run_decoder(rows, **settings):
    config = DetectorConfig(**{"smoothing": 0.0, "patience": 0.0, "refractory": 0.0, **settings})
    return decode(posteriors(rows), None, LABELS, config, FE)


LOW, YES, NO = [0.9, 0.1, 0, 0], [0.0, 0.1, 0.9, 0], [0.0, 0.1, 0, 0.9]


def test_decoder_turns_a_run_into_one_event():
    events = run_decoder([LOW] * 30 + [YES] * 8 + [LOW] * 30, threshold=0.5)
    assert len(events) == 1
    event = events[0]
    assert event.keyword == "yes" and event.score == pytest.approx(0.9)
    fired = 30 * 0.01 + 0.032  # the end of the first frame of the run
    assert event.end == pytest.approx(fired, abs=1e-6) and event.start < event.end


def test_decoder_patience_threshold_refractory_filters_and_background():
    assert run_decoder([LOW] * 5 + [YES] * 2 + [LOW] * 5, threshold=0.5, patience=0.05) == []
    assert len(run_decoder([LOW] * 5 + [YES] * 6 + [LOW] * 5, threshold=0.5, patience=0.05)) == 1
    assert run_decoder([LOW, YES, YES, LOW], threshold=0.95) == []
    # silence and unknown never fire, however sure
    assert run_decoder([[0, 1.0, 0, 0]] * 20, threshold=0.5) == []
    assert run_decoder([[1.0, 0, 0, 0]] * 20, threshold=0.5) == []
    rows = [YES] * 5 + [LOW] * 20 + [NO] * 5 + [LOW] * 5
    assert [e.keyword for e in run_decoder(rows, threshold=0.5)] == ["yes", "no"]
    assert [e.keyword for e in run_decoder(rows, threshold=0.5, refractory=1.0)] == ["yes"]
    assert [e.keyword for e in run_decoder(rows, threshold=0.5, keywords=["no"])] == ["no"]
    with pytest.raises(Exception, match="not in the model's labels"):
        EventDecoder(LABELS, DetectorConfig(threshold=0.5, keywords=["maybe"]), FE)


def test_events_pair_with_the_nearest_unused_word_of_their_keyword():
    from kws_ghost.det import match_events, pair_events
    from kws_ghost.stream import Event

    words = [
        {"keyword": "yes", "start": 1.0, "end": 1.4},
        {"keyword": "yes", "start": 3.0, "end": 3.4},
        {"keyword": "no", "start": 5.0, "end": 5.3},
    ]
    events = [
        Event("yes", 3.1, 3.5, 0.9),  # overlaps the second yes
        Event("yes", 3.0, 3.3, 0.9),  # the second yes again: taken, the first is 2 s away
        Event("no", 1.0, 1.4, 0.9),  # over a yes: another keyword's word is no hit
        Event("yes", 1.5, 1.7, 0.9),  # centre 0.4 s from the first yes's: within 0.5 s
    ]
    pairs = pair_events(events, words)
    assert [word for _, word, _ in pairs] == [words[1], None, None, words[0]]
    assert [event for event, _, _ in pairs] == events
    assert pairs[3][2] == pytest.approx(0.4)
    assert match_events(events, words) == (2, 2, [pytest.approx(0.1), pytest.approx(0.4)])
    assert pair_events(events[3:], words, tolerance=0.3)[0][1] is None


def test_false_alarms_are_grouped_by_the_word_under_them():
    from kws_ghost.det import false_alarm_words
    from kws_ghost.stream import Event

    truth = {
        "events": [{"keyword": "yes", "word": "yes", "start": 1.0, "end": 1.4, "source": "yes/a"}],
        "distractors": [
            {"keyword": None, "word": "dog", "start": 3.0, "end": 3.4, "source": "dog/b"},
            {"keyword": None, "word": "dog", "start": 6.0, "end": 6.4, "source": "dog/b"},
            {"keyword": None, "word": "bed", "start": 9.0, "end": 9.5, "source": "bed/c"},
        ],
    }
    events = [
        Event("yes", 1.1, 1.5, 0.9),  # a hit: not a false alarm
        Event("no", 1.0, 1.3, 0.9),  # another keyword over the yes
        Event("stop", 3.2, 3.6, 0.9),  # the same clip twice, as stop
        Event("stop", 6.1, 6.5, 0.9),
        Event("go", 9.6, 9.9, 0.9),  # just after bed: within 0.5 s of its end
        Event("go", 12.0, 12.3, 0.9),  # nothing near: noise
    ]
    found = false_alarm_words(events, truth)
    assert found == [
        {"word": "dog", "source": "dog/b", "fired": "stop", "count": 2},
        {"word": "yes", "source": "yes/a", "fired": "no", "count": 1},
        {"word": "bed", "source": "bed/c", "fired": "go", "count": 1},
        {"word": None, "source": None, "fired": "go", "count": 1},
    ]
    # a detector listening for "no" alone counts only no-words as hits: the yes event is false
    only_no = false_alarm_words(events[:1], truth, DetectorConfig(keywords=["no"]))
    assert only_no == [{"word": "yes", "source": "yes/a", "fired": "yes", "count": 1}]
    near = false_alarm_words(events, truth, tolerance=0.1)  # the go after bed is noise now
    assert {"word": None, "source": None, "fired": "go", "count": 2} in near
    assert all(w["word"] != "bed" for w in near)


def test_decoder_smooths_and_gives_the_same_events_in_any_pieces():
    spike = [LOW] * 20 + [YES] * 2 + [LOW] * 20
    assert len(run_decoder(spike, threshold=0.5)) == 1
    assert run_decoder(spike, threshold=0.5, smoothing=0.1) == []  # 2 frames of 10 averaged
    rng = np.random.default_rng(4)
    rows = rng.dirichlet([4, 2, 0.3, 0.3], size=3000)
    for start in rng.integers(0, 2980, size=40):  # bursts of a keyword, 3-20 frames long
        rows[start : start + rng.integers(3, 20)] = YES if rng.uniform() < 0.5 else NO
    config = DetectorConfig(threshold=0.4, smoothing=0.05, patience=0.02, refractory=0.3)
    levels = rng.normal(-40, 10, size=len(rows)).astype(np.float32)
    whole = decode(rows, levels, LABELS, config, FE)
    assert len(whole) > 10
    for sizes in ([1], [2, 3], [7], list(range(1, 300))):  # pushes shorter than the smoothing
        decoder, pieces, position = EventDecoder(LABELS, config, FE), [], 0
        while position < len(rows):
            size = int(rng.choice(sizes))
            pieces += decoder.push(
                rows[position : position + size], levels[position : position + size]
            )
            position += size
        pieces += decoder.flush()
        assert [e.as_dict() for e in pieces] == [e.as_dict() for e in whole], sizes


def test_threshold_from_the_models_det():
    det = {
        "threshold": 0.4,
        "det": [
            {"threshold": 0.3, "hit_rate": 0.9, "false_alarms_per_hour": 30.0},
            {"threshold": 0.4, "hit_rate": 0.8, "false_alarms_per_hour": 9.0},
            {"threshold": 0.6, "hit_rate": 0.7, "false_alarms_per_hour": 2.0},
        ],
    }
    assert resolve_threshold(det, DetectorConfig())[0] == 0.4
    assert resolve_threshold(det, DetectorConfig(false_alarms_per_hour=2))[0] == 0.6
    assert resolve_threshold(det, DetectorConfig(false_alarms_per_hour=10))[0] == 0.4
    assert resolve_threshold(det, DetectorConfig(threshold=0.55))[0] == 0.55
    assert resolve_threshold(None, DetectorConfig())[0] == 0.5
    with pytest.raises(Exception, match="no validation DET"):
        resolve_threshold(None, DetectorConfig(false_alarms_per_hour=2))


@pytest.mark.slow
def test_memory_stays_bounded_on_a_long_stream(random_checkpoint):
    detector = KeywordDetector(load_model(random_checkpoint), DetectorConfig(threshold=0.3))
    block = speechless_audio(5.0)
    state = detector.scorer.state
    for _ in range(60):  # five minutes
        detector.push(block)
        assert detector.frontend.pending_samples < FE.n_fft
        assert detector.scorer.state.shape == state.shape
        assert len(detector.decoder.tail) < detector.decoder.width
        assert len(detector.decoder.levels) <= detector.decoder.lookback + detector.decoder.max_run
    assert detector.frames_seen == FE.num_frames(300 * 16000)


def test_digital_silence_gives_no_zero_length_events(random_checkpoint, tmp_path):
    wav = tmp_path / "silence.wav"
    soundfile.write(wav, np.zeros(16000 * 3, np.float32), 16000)
    result = kws(
        "detect", wav, "--model", random_checkpoint, "--threshold", "0.01", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events  # at this threshold the random model fires: the spans were really checked
    assert all(e["end"] > e["start"] for e in events)


@pytest.mark.slow
def test_detect_notes_the_threshold_and_ends_with_a_count(random_checkpoint, tmp_path):
    wav = tmp_path / "a.wav"
    soundfile.write(wav, speechless_audio(2.0), 16000)
    result = kws("detect", wav, "--model", random_checkpoint)
    assert result.returncode == 0, result.stderr
    assert "threshold 0.4" in result.stderr and "9.0 false alarms per hour" in result.stderr
    last = result.stdout.splitlines()[-1]
    assert (
        last.startswith(f"{wav}: ") and "keyword event" in last and "highest keyword score" in last
    )
    assert "other settings" not in result.stderr
    picked = kws("detect", wav, "--model", random_checkpoint, "--false-alarms-per-hour", "2")
    assert "threshold 0.6" in picked.stderr
    smoother = kws("detect", wav, "--model", random_checkpoint, "--smoothing", "0.3")
    assert "with smoothing 0.1 s; other settings shift these figures" in smoother.stderr
    assert "\r" not in picked.stderr  # no progress bar when stderr is not a terminal


@pytest.mark.slow
def test_detect_reads_stereo_and_other_rates_and_stdin(random_checkpoint, tmp_path):
    import soxr

    audio = speechless_audio(2.5)
    mono = tmp_path / "mono.wav"
    soundfile.write(mono, audio, 16000)
    options = ["--model", str(random_checkpoint), "--threshold", "0.3", "--format", "json"]
    options += ["--scorer", "stream"]  # as stdin always is
    reference = CliRunner().invoke(main, ["detect", str(mono), *options])
    assert reference.exit_code == 0, reference.output
    assert reference.stdout.strip()
    for rate in (44100, 48000):
        stereo = tmp_path / f"stereo{rate}.wav"
        resampled = soxr.resample(audio, 16000, rate)
        soundfile.write(stereo, np.stack([resampled, 0.5 * resampled], 1), rate)
        result = CliRunner().invoke(main, ["detect", str(stereo), *options])
        assert result.exit_code == 0, result.output
        assert len(result.stdout.splitlines()) == len(reference.stdout.splitlines())
    pcm = soundfile.read(mono, dtype="int16")[0].astype("<i2").tobytes()  # the same samples
    assert detect_stdin(pcm, *options) == json_records(reference.stdout)
    # a WAV or FLAC stream on stdin is read by its header: rate and channels honoured
    for suffix in ("wav", "flac"):
        stereo = tmp_path / f"stereo48000.{suffix}"
        if suffix == "flac":
            soundfile.write(stereo, soundfile.read(tmp_path / "stereo48000.wav")[0], 48000)
        from_file = CliRunner().invoke(main, ["detect", str(stereo), *options])
        assert detect_stdin(stereo.read_bytes(), *options) == json_records(from_file.stdout)


def json_records(stdout):
    """detect --format json lines without the file name (stdin is "-")."""
    return [
        {k: v for k, v in json.loads(line).items() if k != "file"} for line in stdout.splitlines()
    ]


def detect_stdin(data, *options):
    piped = subprocess.run(
        [sys.executable, "-m", "kws_ghost", "detect", "-", *options],
        input=data,
        capture_output=True,
    )
    assert piped.returncode == 0, piped.stderr
    return json_records(piped.stdout.decode())


@pytest.mark.parametrize(
    "header",
    [
        b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x02\x00\x01\x00\x80>\x00\x00"
        b"\x00}\x00\x00\x02\x00\x04\x00data\x00\x00\x00\x00",  # ADPCM
        b"RIFF\x24\x00\x00\x00AVI LIST",
        b"RIFF\x24\x00\x00\x00WAVEdata\x00\x00\x00\x00",  # no fmt chunk
        b"fLaC\x00\x00\x00\x22garbage",
    ],
)
def test_detect_stdin_with_a_header_it_cannot_honour_is_one_line(random_checkpoint, header):
    piped = subprocess.run(
        [sys.executable, "-m", "kws_ghost", "detect", "-", "--model", str(random_checkpoint)],
        input=header + bytes(3200),
        capture_output=True,
    )
    assert piped.returncode == 1 and piped.stdout == b""
    assert piped.stderr.count(b"\n") == 1 and b"stdin" in piped.stderr, piped.stderr


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "missing", "nan"])
def test_detect_bad_audio_is_one_line(random_checkpoint, tmp_path, kind):
    path = tmp_path / "bad.wav"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        soundfile.write(path, speechless_audio(2.0), 16000)
        path.write_bytes(path.read_bytes()[:20000])
    elif kind == "text":
        path.write_text("this is not audio\n" * 100)
    elif kind == "nan":
        audio = speechless_audio(2.0)
        audio[5000:5010] = np.nan
        soundfile.write(path, audio, 16000, subtype="FLOAT")
    result = kws("detect", path, "--model", random_checkpoint)  # no threshold note first
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(path) in result.stderr


def test_detect_without_a_model_says_how_to_get_one(tmp_path):
    wav = tmp_path / "a.wav"
    soundfile.write(wav, speechless_audio(1.5), 16000)
    env = {k: v for k, v in os.environ.items() if k != "KWS_GHOST_MODEL"}
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


@pytest.mark.parametrize("kind", ["stream", "segments", "window"])
def test_every_scorer_gives_posteriors(kind):
    """One contract: push and flush give probabilities over the labels, one row per frame."""
    from kws_ghost.scorers import make_scorer

    runtime = load_model_from(random_model(pooling="mean" if kind == "window" else "max"))
    scorer = make_scorer(runtime, kind)
    frames = compute_features(speechless_audio(3.0), FE)
    out = np.concatenate([scorer.push(frames[:120]), scorer.push(frames[120:]), scorer.flush()])
    assert out.shape == (len(frames), len(LABELS)) and (out >= 0).all()
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_window_scorer_for_clip_trained_models(tmp_path):
    """A clip-trained model (mean pooling) is rescored window by window; streaming it is
    refused, since its state is not trained to be carried."""
    model = random_model(pooling="mean")
    path = tmp_path / "clip.pt"
    save_checkpoint(path, model, FE, LABELS)
    runtime = load_model(path)
    audio = speechless_audio(3.0)
    detector = KeywordDetector(runtime, DetectorConfig(threshold=0.5, hop_ms=100), "window")
    probabilities, _ = detector.push_posteriors(audio)
    frames = compute_features(audio, FE)
    window = FE.num_frames(FE.clip_samples)
    # frame f holds the posteriors of the last window scored, the one ending at or before f
    for f in (window - 1, window + 9, window + 25, len(frames) - 1):
        first = (f - window + 1) // 10 * 10
        clip = runtime.clip_logits(frames[None, first : first + window])
        assert np.abs(probabilities[f] - softmax(clip)[0]).max() < 1e-4
    with pytest.raises(Exception, match="trained on isolated clips"):
        KeywordDetector(runtime, DetectorConfig(threshold=0.5), "stream")


def test_stored_features_of_a_clip_model_are_scored_by_windows(tmp_path):
    """The validation and test recordings' DET (``score_features``) scores a clip-trained model
    window by window, as ``detect`` scores a file, so its hit rate compares with a stream's."""
    from kws_ghost.det import score_audio, score_features

    model = random_model(pooling="mean")
    path = tmp_path / "clip.pt"
    save_checkpoint(path, model, FE, LABELS)
    runtime = load_model(path)
    audio = speechless_audio(3.0)
    from_features, levels = score_features(runtime, compute_features(audio, FE))
    from_audio, _ = score_audio(runtime, audio)
    assert from_features.shape == from_audio.shape and len(levels) == len(from_features)
    assert np.abs(from_features - from_audio).max() < 1e-4
    # not the stream's posteriors: a window's first frames hold the silence prior until scored
    assert np.allclose(from_features[0, LABELS.index("_silence_")], 1.0)


class _Event:
    def __init__(self, record):
        self.keyword, self.start, self.end = record["keyword"], record["start"], record["end"]


def detect_json(wav, model, *options):
    result = kws("detect", wav, "--model", model, "--format", "json", *options)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_trained_model_finds_keywords_at_their_times(trained_run, test_recording):
    from kws_ghost.det import evaluate_recording, match_events

    wav, truth = test_recording
    events = detect_json(wav, trained_run["best"])
    assert events and set(events[0]) == {"file", "keyword", "start", "end", "score"}
    hits, false_alarms, offsets = match_events([_Event(e) for e in events], truth["events"])
    assert hits >= 0.75 * len(truth["events"]), (events, truth["events"])
    assert max(offsets) <= 0.3  # event centre within 300 ms of the word's centre
    assert false_alarms <= 2
    report = evaluate_recording(load_model(trained_run["best"]), wav, truth)
    assert report["hits"] == hits and len(report["det"]) > 10
    named = report["false_alarm_words"]  # each false alarm once, with the word under it
    assert sum(w["count"] for w in named) == report["false_alarms"]
    sources = {w["source"] for w in truth["events"] + truth["distractors"]}
    assert all(w["source"] in sources | {None} for w in named)
    rates = [p["hit_rate"] for p in report["det"]]
    # Higher thresholds hit less, up to one word at a step: a lower threshold can fire earlier,
    # so its event's centre may miss the word's tolerance where a later event would not.
    one_word = 1 / len(truth["events"])
    assert rates[0] >= rates[-1] and rates[0] > 0.5
    assert all(later <= earlier + one_word + 1e-9 for earlier, later in zip(rates, rates[1:]))


def test_eval_stream_names_the_words_that_fire_falsely(trained_run, test_recording):
    wav, _ = test_recording
    low = ("eval-stream", wav, "--model", trained_run["best"], "--threshold", "0.05")
    report = kws(*low, "--json")
    assert report.returncode == 0, report.stderr
    result = json.loads(report.stdout)
    assert result["false_alarms"] > 0  # a threshold this low fires on other words
    assert sum(w["count"] for w in result["false_alarm_words"]) == result["false_alarms"]
    text = kws(*low)
    top = result["false_alarm_words"][0]
    named = f"{top['source'] or top['word'] or 'noise'} as {top['fired']} x{top['count']}"
    assert f"false alarms by the word under them: {named}" in text.stdout


def test_segments_give_the_events_of_strict_streaming(trained_run, test_recording):
    """The batched segment scorer that files use gives the events of the frame-by-frame stream
    (its segments' warm-up is long enough for the trained state to forget the zero start)."""
    wav, _ = test_recording
    strict = detect_json(wav, trained_run["best"], "--scorer", "stream", "--threshold", "0.3")
    batched = detect_json(wav, trained_run["best"], "--scorer", "segments", "--threshold", "0.3")
    assert strict and len(strict) == len(batched)
    for a, b in zip(strict, batched):
        assert a["keyword"] == b["keyword"] and abs(a["score"] - b["score"]) < 1e-3
        assert abs(a["start"] - b["start"]) < 1e-3 and abs(a["end"] - b["end"]) < 1e-3


def test_segments_across_blocks_equal_the_stream_for_the_trained_model(trained_run, test_recording):
    """The same, with blocks of two segments, so that the warm-up context crosses from block to
    block many times (the CLI's blocks of 64 segments hold a 40 s recording whole)."""
    wav, _ = test_recording
    runtime = load_model(trained_run["best"])
    frames = compute_features(soundfile.read(wav, dtype="float32")[0], FE)
    exact = FrameScorer(runtime).push(frames)
    scorer = SegmentScorer(runtime, segment=400, warmup=200, batch=2)
    parts = [scorer.push(frames[i : i + 700]) for i in range(0, len(frames), 700)]
    batched = np.concatenate([*parts, scorer.flush()])
    config = DetectorConfig(threshold=0.3)
    levels = frame_levels(frames, FE)
    strict = [e.as_dict() for e in decode(exact, levels, runtime.labels, config, FE)]
    segmented = [e.as_dict() for e in decode(batched, levels, runtime.labels, config, FE)]
    assert strict and len(segmented) == len(strict)
    for a, b in zip(strict, segmented):  # the same events; scores within 1e-3, as above
        assert (a["keyword"], a["start"], a["end"]) == (b["keyword"], b["start"], b["end"])
        assert abs(a["score"] - b["score"]) < 1e-3
    assert np.abs(batched - exact).max() < 0.05  # the state forgets its zero start


def test_scores_and_events_do_not_depend_on_the_push_size(trained_run, test_recording):
    """Live audio arrives in pieces of any size: the library, `detect -` and `detect FILE
    --scorer stream` give the same posteriors and events, bit for bit, whatever the pieces."""
    wav, _ = test_recording
    audio = soundfile.read(wav, dtype="float32")[0]
    runtime = load_model(trained_run["best"])
    config = DetectorConfig(threshold=0.3)
    results = {}
    for size in (1, 37, 160, 800, 1280, len(audio)):
        part = audio if size > 1 else audio[: 12 * 16000]  # one sample a push: the first 12 s
        detector = KeywordDetector(runtime, config, "stream")
        posteriors, events = [], []
        for start in range(0, len(part), size):
            scored, levels = detector.push_posteriors(part[start : start + size])
            posteriors.append(scored)
            events += detector.decoder.push(scored, levels)
        events += detector.decoder.flush()
        results[size] = (np.concatenate(posteriors), [e.as_dict() for e in events])
    whole, whole_events = results[len(audio)]
    assert len(whole_events) >= 5
    for size, (posteriors, events) in results.items():
        assert np.array_equal(posteriors, whole[: len(posteriors)]), size
        if size > 1:
            assert events == whole_events, size
    short = [e for e in whole_events if e["end"] < 11.0]  # decided well inside the first 12 s
    assert short and results[1][1][: len(short)] == short
    options = ["--model", trained_run["best"], "--threshold", "0.3", "--format", "json"]
    pcm = (np.clip(np.round(audio * 32768), -32768, 32767)).astype("<i2").tobytes()
    assert detect_stdin(pcm, *options) == whole_events  # the recording is PCM16: same samples
    from_file = kws("detect", wav, *options, "--scorer", "stream")
    assert json_records(from_file.stdout) == whole_events


def test_a_long_push_is_scored_in_every_block_it_holds():
    runtime = load_model_from(random_model())
    frames = compute_features(speechless_audio(10.0), FE)
    scorer = SegmentScorer(runtime, segment=100, warmup=50, batch=2)
    out = scorer.push(frames)  # one push of five blocks
    assert len(out) == len(frames) // 200 * 200 and scorer.pending_frames < 200
    assert len(out) + len(scorer.flush()) == len(frames)


def test_scorers_refuse_what_their_model_is_not_for(random_checkpoint, tmp_path):
    with pytest.raises(Exception, match="streaming model"):
        KeywordDetector(load_model(random_checkpoint), DetectorConfig(threshold=0.5), "window")
    with pytest.raises(Exception, match="patience must be under 1 s"):
        DetectorConfig(patience=1.5).validate()


def test_trained_model_is_quiet_on_noise(trained_run):
    noise = sorted((trained_run["corpus"] / "_background_noise_").glob("*.wav"))
    assert len(noise) >= 3
    result = kws("detect", *noise, "--model", trained_run["best"], "--format", "csv")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "file,keyword,start,end,score"  # no event at all


def test_the_exported_step_model_gives_the_checkpoints_events(
    trained_run, test_recording, exported
):
    """What `export` writes is the model `detect` runs: the same events from the ONNX step
    model as from the checkpoint, on the same recording (strict streaming and segments)."""
    wav, _ = test_recording
    for scorer in ("segments", "stream"):
        from_pt = detect_json(wav, trained_run["best"], "--scorer", scorer, "--threshold", "0.3")
        from_onnx = detect_json(wav, exported, "--scorer", scorer, "--threshold", "0.3")
        assert from_pt and len(from_pt) == len(from_onnx)
        for a, b in zip(from_pt, from_onnx):
            assert a["keyword"] == b["keyword"] and abs(a["score"] - b["score"]) < 1e-3
            assert abs(a["start"] - b["start"]) < 1e-3 and abs(a["end"] - b["end"]) < 1e-3
    # and the threshold it picks by itself: the validation DET travels in the metadata
    default_pt = kws("detect", wav, "--model", trained_run["best"])
    default_onnx = kws("detect", wav, "--model", exported)
    assert default_pt.stderr == default_onnx.stderr and "threshold" in default_onnx.stderr


def test_detect_with_an_onnx_model_never_imports_torch(exported, test_recording):
    wav, _ = test_recording
    code = (
        "import sys; from kws_ghost.cli import main; "
        f"main(['detect', {str(wav)!r}, '--model', {str(exported)!r}, '--quiet'], "
        "standalone_mode=False); "
        "assert 'torch' not in sys.modules, 'torch was imported'; "
        "assert 'librosa' not in sys.modules, 'librosa was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "keyword event" in result.stdout


def test_make_stream_every_keyword_needs_keywords_among_the_words(tmp_path, tiny_corpus):
    make_stream = ("make-stream", "--data", tiny_corpus, "--keywords", "yes")
    every_keyword = (*make_stream, "--out", tmp_path / "s.wav", "--every-keyword")
    result = kws(*every_keyword, "--distractors", "1", "--split", "training")
    assert result.returncode == 1 and "needs --distractors below 1" in result.stderr
    named_json = kws(*make_stream, "--out", tmp_path / "s.json")
    assert named_json.returncode == 1 and "name a .wav" in named_json.stderr
    made = kws(*every_keyword, "--split", "training", "--json")
    assert made.returncode == 0, made.stderr
    record = json.loads(made.stdout)
    assert len(record["events"]) == len(list((tiny_corpus / "yes").glob("spk0000[0-3]*.wav")))
