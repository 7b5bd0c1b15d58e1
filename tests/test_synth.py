"""`kws-ghost synth`: espeak-ng speech in the Speech Commands layout, offline and reproducible."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from kws_ghost import synth
from kws_ghost.cli import main
from kws_ghost.errors import KwsError

CLIP_NAME = re.compile(r"^([0-9a-f]{8})_nohash_(\d+)\.wav$")


@pytest.fixture(scope="module")
def espeak():
    pytest.importorskip("espeakng_loader")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, espeak):
    out = tmp_path_factory.mktemp("synth") / "corpus"
    summary = synth.synthesize_corpus(
        ["yes", "no"],
        out,
        voices=6,
        clips_per_voice=2,
        seed=3,
        background_seconds=2.0,
        other_words=0,
    )
    return out, summary


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def frame_rms_db(audio: np.ndarray, frame: int = 160) -> np.ndarray:
    frames = audio[: len(audio) // frame * frame].reshape(-1, frame)
    return 20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) + 1e-12)


def test_corpus_layout_and_clips(corpus):
    out, summary = corpus
    assert sorted(p.name for p in out.iterdir()) == [
        synth.SYNTH_MARKER,
        "_background_noise_",
        "no",
        "synth_manifest.json",
        "testing_list.txt",
        "validation_list.txt",
        "yes",
    ]
    assert summary.clips == 2 * 6 * 2 and summary.speakers == 6
    for word in ("yes", "no"):
        files = sorted((out / word).iterdir())
        assert len(files) == 12
        assert len({CLIP_NAME.match(f.name).group(1) for f in files}) == 6
        for path in files:
            info = sf.info(str(path))
            assert (info.samplerate, info.channels, info.frames, info.subtype) == (
                16000,
                1,
                16000,
                "PCM_16",
            )
            audio, _ = sf.read(str(path), dtype="float32")
            levels = frame_rms_db(audio)
            # speech well above the floor, and a floor (-60..-50 dBFS) rather than digital silence
            assert levels.max() > -35, path
            assert -68 < levels.min() < -44, path
            assert levels.max() - levels.min() > 20, path
            assert np.abs(audio).max() < 1.0


def test_word_sits_inside_the_clip_at_varying_offsets(corpus):
    out, _ = corpus
    onsets = []
    for path in sorted((out / "yes").iterdir()):
        audio, _ = sf.read(str(path), dtype="float32")
        loud = np.flatnonzero(frame_rms_db(audio) > -45)
        assert len(loud) >= 10  # at least 100 ms of speech
        onsets.append(loud[0])
    assert len(set(onsets)) > 6  # random offsets, not all centred


def test_splits_are_speaker_disjoint_and_exist(corpus):
    out, summary = corpus
    lists = {
        name: (out / f"{name}_list.txt").read_text().split() for name in ("validation", "testing")
    }
    every = {str(p.relative_to(out)) for p in out.glob("[!_]*/*.wav")}
    speakers = {}
    for name, paths in lists.items():
        assert paths, f"{name} list is empty"
        for path in paths:
            assert path in every and not path.startswith("/")
        speakers[name] = {CLIP_NAME.match(Path(p).name).group(1) for p in paths}
    training = every - set(lists["validation"]) - set(lists["testing"])
    speakers["training"] = {CLIP_NAME.match(Path(p).name).group(1) for p in training}
    assert speakers["validation"].isdisjoint(speakers["testing"])
    assert speakers["training"].isdisjoint(speakers["validation"] | speakers["testing"])
    # a speaker's every clip is in its split
    for name, paths in lists.items():
        assert len(paths) == len(speakers[name]) * 2 * 2
    assert summary.splits == {"training": 16, "validation": 4, "testing": 4}
    manifest = json.loads((out / "synth_manifest.json").read_text())
    assert {s["speaker_id"] for s in manifest["speakers"] if s["split"] == "testing"} == (
        speakers["testing"]
    )


def test_background_noise_files(corpus):
    out, _ = corpus
    files = sorted((out / "_background_noise_").iterdir())
    assert [f.name for f in files] == sorted(synth.BACKGROUND_FILES.values())
    for path in files:
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (
            16000,
            1,
            32000,
            "PCM_16",
        )
        audio, _ = sf.read(str(path), dtype="float32")
        assert 0.05 < np.sqrt(np.mean(audio**2)) < 0.2


def test_same_seed_same_bytes_other_seed_other_audio(corpus, tmp_path):
    out, _ = corpus
    again = synth.synthesize_corpus(
        ["yes", "no"], tmp_path / "again", voices=6, clips_per_voice=2, seed=3,
        background_seconds=2.0, other_words=0,
    )  # fmt: skip
    assert again.splits == corpus[1].splits
    assert digest(tmp_path / "again") == digest(out)
    synth.synthesize_corpus(["yes"], tmp_path / "other", voices=6, clips_per_voice=1, seed=4)
    ours = {k for k in digest(out) if k.startswith("yes/")}
    theirs = {k for k in digest(tmp_path / "other") if k.startswith("yes/")}
    assert not ours & theirs  # other speaker ids


def test_worker_processes_write_the_same_bytes(corpus, tmp_path):
    out, _ = corpus
    synth.synthesize_corpus(
        ["yes", "no"], tmp_path / "pool", voices=6, clips_per_voice=2, seed=3,
        background_seconds=2.0, workers=2, other_words=0,
    )  # fmt: skip
    assert digest(tmp_path / "pool") == digest(out)


def test_synthesize_word_ignores_what_was_said_before(espeak):
    speaker = synth.make_speakers(2, seed=0)[1]
    first = synth.synthesize_word("yes", speaker)
    for other in ("down", "seven", "left"):
        synth.synthesize_word(other, speaker)
    assert np.array_equal(first, synth.synthesize_word("yes", speaker))
    assert first.dtype == np.float32 and 0.1 < len(first) / 16000 < 1.0
    # trimmed: no leading or trailing stretch of silence
    assert np.abs(first[:320]).max() > 1e-4 and np.abs(first[-320:]).max() > 1e-4


def median_f0(audio: np.ndarray, sr: int = 16000) -> float:
    """Median pitch over voiced 64 ms frames, by normalised autocorrelation (60-500 Hz)."""
    frame, hop = 1024, 256
    low, high = sr // 500, sr // 60
    pitches = []
    for start in range(0, len(audio) - frame, hop):
        x = audio[start : start + frame] - audio[start : start + frame].mean()
        if np.sqrt(np.mean(x**2)) < 0.02 * np.abs(audio).max():
            continue
        spectrum = np.fft.rfft(x, 2 * frame)
        ac = np.fft.irfft(np.abs(spectrum) ** 2)[:frame]
        lag = low + int(np.argmax(ac[low:high]))
        if ac[lag] > 0.5 * ac[0]:
            pitches.append(sr / lag)
    return float(np.median(pitches)) if pitches else float("nan")


def test_speakers_sound_different(espeak):
    speakers = synth.make_speakers(8, seed=0)
    assert len({s.speaker_id for s in speakers}) == 8
    assert len({(s.language, s.variant) for s in speakers}) == 8
    assert {s.gender for s in speakers} == {"male", "female"}
    words = [synth.synthesize_word("no", s) for s in speakers]
    for i in range(len(words)):
        for j in range(i + 1, len(words)):
            a, b = words[i], words[j]
            n = min(len(a), len(b))
            assert len(a) != len(b) or not np.allclose(a[:n], b[:n], atol=1e-3)
    f0 = np.array([median_f0(audio) for audio in words])
    assert np.isfinite(f0).all(), f0
    assert f0.max() / f0.min() > 1.8, f0  # female and male pitches, not one voice
    female = [f for f, s in zip(f0, speakers) if s.gender == "female"]
    male = [f for f, s in zip(f0, speakers) if s.gender == "male"]
    assert np.median(female) > 1.3 * np.median(male), f0


def test_long_words_are_said_faster_to_fit(espeak):
    slow = synth.make_speakers(1, seed=0)[0]
    slow = type(slow)(**{**slow.to_dict(), "rate": 90, "word_gap": 10})
    phrase = "hey_unbelievable_computer"
    free = synth.synthesize_word(phrase, slow)
    fitted = synth.synthesize_word(phrase, slow, max_seconds=0.96)
    assert len(free) > 16000
    assert len(fitted) <= int(0.96 * 16000)


def test_make_noise_kinds():
    for kind in synth.NOISE_KINDS:
        noise = synth.make_noise(kind, 1.5, seed=1)
        assert noise.dtype == np.float32 and noise.shape == (24000,)
        assert abs(np.sqrt(np.mean(noise**2)) - 0.1) < 0.02 and np.abs(noise).max() < 1.0
        assert np.array_equal(noise, synth.make_noise(kind, 1.5, seed=1))
        assert not np.array_equal(noise, synth.make_noise(kind, 1.5, seed=2))
    spectrum = {
        k: np.abs(np.fft.rfft(synth.make_noise(k, 2.0, 0))) ** 2 for k in ("white", "brown")
    }
    low, high = slice(100, 1000), slice(10000, 15000)  # 50-500 Hz vs 5-7.5 kHz (0.5 Hz bins)
    assert spectrum["brown"][low].mean() / spectrum["brown"][high].mean() > 100
    assert 0.5 < spectrum["white"][low].mean() / spectrum["white"][high].mean() < 2
    with pytest.raises(KwsError, match="unknown noise kind"):
        synth.make_noise("purple", 1.0)


def test_split_speakers_rules():
    ids = [f"{i:08x}" for i in range(30)]
    splits = synth.split_speakers(ids, 0.1, 0.1, seed=0)
    assert sorted(splits.values()).count("validation") == 3
    assert sorted(splits.values()).count("testing") == 3
    three = synth.split_speakers(ids[:3], 0.1, 0.1, seed=0)
    assert sorted(three.values()) == ["testing", "training", "validation"]
    assert set(synth.split_speakers(ids[:2], 0.1, 0.1, seed=0).values()) == {"training"}
    assert set(synth.split_speakers(ids, 0.0, 0.0, seed=0).values()) == {"training"}
    with pytest.raises(KwsError):
        synth.split_speakers(ids, 0.6, 0.5, seed=0)


def test_parse_words():
    assert synth.parse_words(" Yes,no , hey_ghost,follow-up") == [
        "yes",
        "no",
        "hey_ghost",
        "follow-up",
    ]
    for bad, message in (
        ("", "empty"),
        (",", "empty"),
        ("yes,,no", "empty item"),
        ("yes,n0", "'n0'"),
        ("héllo", "plain word"),
        ("_silence_", "plain word"),
        ("a b", "plain word"),
        ("yes,yes", "more than once"),
    ):
        with pytest.raises(KwsError, match=message):
            synth.parse_words(bad)


def test_cli_json_summary(tmp_path, espeak):
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        main,
        ["synth", "--words", "up,down", "--voices", "3", "--clips-per-voice", "1"]
        + ["--out", str(out), "--seed", "5", "--json", "--other-words", "0"],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["out"] == str(out) and summary["words"] == ["up", "down"]
    assert summary["speakers"] == 3 and summary["clips"] == 6
    assert summary["splits"] == {"training": 2, "validation": 2, "testing": 2}
    assert summary["seconds"] > 0
    assert len(list(out.glob("*/*.wav"))) == 6 + len(synth.BACKGROUND_FILES)
    # no temporary folders left beside the corpus
    assert [p.name for p in tmp_path.iterdir()] == ["cli"]


SMALL = ["synth", "--words", "go", "--voices", "1", "--clips-per-voice", "1"]


def run_synth(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kws_ghost", *SMALL, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def assert_one_line_error(result, *needles: str) -> None:
    assert result.returncode == 1, result.stderr
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    for needle in needles:
        assert needle in message, message


def test_force_replaces_an_earlier_synth_corpus(tmp_path, espeak):
    out = tmp_path / "corpus"
    first = CliRunner().invoke(main, [*SMALL, "--out", str(out), "--seed", "1"])
    assert first.exit_code == 0, first.output
    assert (out / synth.SYNTH_MARKER).is_file()
    old = sorted(p.name for p in (out / "go").iterdir())
    again = CliRunner().invoke(main, [*SMALL, "--out", str(out), "--seed", "2"])
    assert again.exit_code == 1 and "earlier synth corpus" in again.output
    assert "--force" in again.output
    replaced = CliRunner().invoke(main, [*SMALL, "--out", str(out), "--seed", "2", "--force"])
    assert replaced.exit_code == 0, replaced.output
    new = sorted(p.name for p in (out / "go").iterdir())
    assert len(new) == 1 and new != old  # seed 2's speaker, not seed 1's
    assert (out / synth.SYNTH_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # old one removed


@pytest.mark.parametrize("manifest_lists_files", [True, False])  # False: an earlier version's
def test_force_keeps_the_files_the_user_added(tmp_path, espeak, manifest_lists_files):
    out = tmp_path / "corpus"
    earlier = [] if manifest_lists_files else ["--other-words", "0"]  # as earlier versions
    first = CliRunner().invoke(main, [*SMALL, "--out", str(out), "--seed", "1", *earlier])
    assert first.exit_code == 0, first.output
    if not manifest_lists_files:
        manifest = json.loads((out / "synth_manifest.json").read_text())
        del manifest["files"]
        (out / "synth_manifest.json").write_text(json.dumps(manifest))
    ours = synth.written_files(out)
    assert "go/" + next((out / "go").iterdir()).name in ours
    (out / "NOTES.txt").write_text("mine")
    (out / "myword").mkdir()
    (out / "myword" / "me_nohash_0.wav").write_bytes(b"my recording")
    (out / "go" / "me_nohash_0.wav").write_bytes(b"another")
    replaced = run_synth("--out", str(out), "--seed", "2", "--force")
    assert replaced.returncode == 0, replaced.stderr
    assert "kept 3 files" in replaced.stderr and "myword/me_nohash_0.wav" in replaced.stderr
    assert (out / "NOTES.txt").read_text() == "mine"
    assert (out / "myword" / "me_nohash_0.wav").read_bytes() == b"my recording"
    assert (out / "go" / "me_nohash_0.wav").read_bytes() == b"another"
    clips = sorted(p.name for p in (out / "go").iterdir() if p.name != "me_nohash_0.wav")
    assert len(clips) == 1 and "go/" + clips[0] not in ours  # seed 2's speaker, seed 1's gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_force_refuses_when_a_users_file_sits_where_the_new_corpus_goes(tmp_path, espeak):
    out = tmp_path / "corpus"
    assert CliRunner().invoke(main, [*SMALL, "--out", str(out), "--seed", "1"]).exit_code == 0
    manifest = json.loads((out / "synth_manifest.json").read_text())
    manifest["files"].remove("testing_list.txt")  # as if the user had written it
    (out / "synth_manifest.json").write_text(json.dumps(manifest))
    (out / "testing_list.txt").write_text("my own list\n")
    result = run_synth("--out", str(out), "--seed", "2", "--force")
    assert result.returncode == 1 and "Traceback" not in result.stderr  # (and --voices 1's warning)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "testing_list.txt" in last and "did not write" in last
    assert (out / "testing_list.txt").read_text() == "my own list\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


@pytest.mark.parametrize("force", [False, True])
def test_a_folder_synth_did_not_write_is_never_replaced(tmp_path, force):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    result = run_synth("--out", str(out), *(["--force"] if force else []))
    assert_one_line_error(result, str(out), synth.SYNTH_MARKER, "did not write")
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


@pytest.mark.parametrize("marked", [False, True])
def test_the_current_folder_and_its_parents_are_refused(tmp_path, marked):
    here = tmp_path / "work"
    (here / "sub").mkdir(parents=True)
    (here / "notes.txt").write_text("precious")
    if marked:  # even an earlier corpus is not replaced while someone stands in it
        (here / synth.SYNTH_MARKER).write_text("{}")
    for out, cwd in ((str(here), here), (".", here), (str(here), here / "sub")):
        result = run_synth("--voices", "2", "--out", out, "--force", cwd=cwd)
        assert result.returncode == 1 and result.stderr.startswith("error: "), result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert (here / "notes.txt").read_text() == "precious"
        assert (here / "sub").is_dir()
    assert "current folder" in run_synth("--out", str(here), "--force", cwd=here).stderr
    assert "above the current" in run_synth("--out", str(here), cwd=here / "sub").stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_an_empty_current_folder_is_refused_too(tmp_path):
    result = run_synth("--out", str(tmp_path), cwd=tmp_path)
    assert_one_line_error(result, "current folder")
    assert tmp_path.is_dir() and list(tmp_path.iterdir()) == []


def test_few_voices_warn_that_held_out_splits_are_empty(tmp_path, espeak):
    result = run_synth("--voices", "2", "--out", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    warning = result.stderr.strip()
    assert warning.startswith("warning: ") and "\n" not in warning, warning
    assert "validation and testing" in warning and "--voices 2" in warning
    assert (tmp_path / "c" / "validation_list.txt").read_text() == ""
    # enough voices, or splits that were asked to be empty: no warning
    quiet = run_synth("--voices", "3", "--out", str(tmp_path / "d"))
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    zero = run_synth("--out", str(tmp_path / "e"), "--val-fraction", "0", "--test-fraction", "0")
    assert zero.returncode == 0 and zero.stderr == "", zero.stderr


def test_no_progress_bar_in_a_log(tmp_path, espeak):
    """stderr is a file here (not a terminal): no \\r bar lines end up in it."""
    result = run_synth("--voices", "3", "--out", str(tmp_path / "c"))
    assert result.returncode == 0 and "\r" not in result.stderr and "clip/s" not in result.stderr


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch, espeak):
    calls = []

    def failing(word, speaker, sample_rate=16000, max_seconds=None):
        calls.append(word)
        if len(calls) > 3:
            raise KwsError("synthetic failure")
        return np.full(4000, 0.1, dtype=np.float32)

    monkeypatch.setattr(synth, "synthesize_word", failing)
    with pytest.raises(KwsError, match="synthetic failure"):
        synth.synthesize_corpus(["yes"], tmp_path / "corpus", voices=4, clips_per_voice=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["--words", "yes,n0"], "'n0'"),
        (["--words", ""], "empty"),
        (["--words", "yes", "--voices", "0"], "--voices"),
        (["--words", "yes", "--val-fraction", "0.6", "--test-fraction", "0.5"], "training"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, "-m", "kws_ghost", "synth", "--out", str(tmp_path / "x"), *args],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "x").exists()


def test_out_that_is_a_file_is_one_line(tmp_path, espeak):
    target = tmp_path / "file.txt"
    target.write_text("x")
    result = subprocess.run(
        [sys.executable, "-m", "kws_ghost", "synth", "--words", "yes", "--out", str(target)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "file" in result.stderr
    assert target.read_text() == "x"


@pytest.mark.slow
def test_other_words_are_the_unknown_material_by_default(tmp_path, espeak):
    """A custom-keyword corpus holds other speech too, and train takes its keywords."""
    out = tmp_path / "corpus"
    made = run_synth_words("yes,no,up", "--voices", "6", "--out", out, "--json")
    summary = json.loads(made.stdout)
    others = summary["other_words"]
    assert len(others) > 24 and not set(others) & {"yes", "no", "up"}
    assert set(others) <= set(synth.OTHER_WORDS)
    per_speaker: dict[str, int] = {}
    for word in others:
        for clip in (out / word).glob("*.wav"):
            speaker = clip.name.split("_")[0]
            per_speaker[speaker] = per_speaker.get(speaker, 0) + 1
    assert sorted(per_speaker.values()) == [24] * 6  # each voice says 24 other words once
    assert summary["clips"] == 3 * 6 * 3 + 24 * 6
    assert synth.corpus_keywords(out) == ["yes", "no", "up"]
    trained = subprocess.run(
        [sys.executable, "-m", "kws_ghost", "train", "--data", str(out), "--epochs", "1"]
        + ["--hidden", "16", "--layers", "1", "--workers", "0", "--val-recording-minutes", "0.2"]
        + ["--warm-start", "none"]
        + ["--out", str(tmp_path / "run"), "--json"],
        capture_output=True,
        text=True,
    )
    assert trained.returncode == 0, trained.stderr
    assert json.loads(trained.stdout)["labels"] == ["_silence_", "_unknown_", "yes", "no", "up"]
    assert "training the synth corpus's keywords yes, no, up" in trained.stderr
    none = run_synth_words("yes", "--voices", "3", "--out", tmp_path / "bare", "--other-words", "0")
    assert none.returncode == 0 and sorted(
        p.name for p in (tmp_path / "bare").iterdir() if p.is_dir()
    ) == [
        "_background_noise_",
        "yes",
    ]


def run_synth_words(words, *args):
    result = subprocess.run(
        [sys.executable, "-m", "kws_ghost", "synth", "--words", words, *map(str, args)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result
