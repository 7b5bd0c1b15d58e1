"""The MFCC / log-mel front-end (offline, batched, streaming) and `kws-ghost features`."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from click.testing import CliRunner

from kws_ghost.audio import load_audio
from kws_ghost.cli import main
from kws_ghost.config import FrontendConfig, ModelConfig
from kws_ghost.features import Frontend
from kws_ghost.frontend import (
    StreamingFrontend,
    compute_features,
    dct_matrix,
    librosa_features,
    mel_filterbank,
    vtlp_frequencies,
)

RATE = 16000
# librosa and torch run different float32 FFTs (numpy's pocketfft vs torch's MKL) and sum the mel
# and DCT products in different orders; measured differences are ~1e-5 dB. 1e-3 dB leaves a 100x
# margin yet is far below what any real mistake makes (a frame off by one sample, a different
# window or mel band each move values by tenths of a dB or more).
LIBROSA_ATOL_DB = 1e-3
# Streaming vs offline: identical power spectra; the mel/DCT matmuls may round differently when
# called on other row counts (~4e-6 dB measured).
STREAM_ATOL_DB = 1e-4


def speechlike(seconds=1.3, seed=0):
    """Noise, a chirp, a tone and a stretch of digital silence (exercises the log floor)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    audio = 0.05 * rng.standard_normal(n)
    audio += 0.3 * np.sin(2 * np.pi * (200 + 2000 * t) * t)
    audio += 0.2 * np.sin(2 * np.pi * 1234 * t) * (t > 0.5)
    audio[int(0.2 * RATE) : int(0.45 * RATE)] = 0.0
    return audio.astype(np.float32)


librosa_reference = librosa_features


@pytest.mark.parametrize(
    "config",
    [
        FrontendConfig(),
        FrontendConfig(kind="logmel"),
        FrontendConfig(hop_ms=20, window_ms=25, n_mfcc=13, fmax=None, log_floor=1e-10),
    ],
    ids=["mfcc-default", "logmel-default", "mfcc-13-hop20-nofmax"],
)
@pytest.mark.slow
def test_numpy_and_torch_front_ends_match_librosa(config):
    audio = speechlike()
    ours = compute_features(audio, config)
    theirs = librosa_reference(audio, config)
    with torch.inference_mode():
        batched = Frontend(config)(torch.from_numpy(audio)).numpy()
    assert ours.shape == theirs.shape == (config.num_frames(len(audio)), config.num_features)
    assert ours.dtype == np.float32 and batched.shape == ours.shape
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=LIBROSA_ATOL_DB)
    np.testing.assert_allclose(batched, theirs, rtol=0, atol=LIBROSA_ATOL_DB)
    np.testing.assert_allclose(batched, ours, rtol=0, atol=LIBROSA_ATOL_DB)
    if config.kind == "logmel":  # the digital silence sits exactly on the floor
        assert ours.min() == pytest.approx(10 * np.log10(config.log_floor))


@pytest.mark.parametrize(
    "args",
    [(16000, 512, 40, 20.0, 7600.0), (16000, 400, 80, 0.0, None), (8000, 256, 23, 100.0, 3000.0)],
)
def test_mel_filterbank_is_librosas(args):
    import librosa

    rate, n_fft, n_mels, fmin, fmax = args
    expected = librosa.filters.mel(
        sr=rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney"
    )
    np.testing.assert_allclose(mel_filterbank(*args), expected, rtol=1e-5, atol=1e-8)


def test_dct_matrix_is_scipy_orthonormal_dct():
    import scipy.fft

    expected = scipy.fft.dct(np.eye(40), type=2, norm="ortho", axis=0)[:13]
    np.testing.assert_allclose(dct_matrix(40, 13), expected, atol=1e-6)


def test_frames_follow_stft_without_centre_padding():
    config = FrontendConfig()
    frontend = Frontend(config)
    for n in (0, 100, 511, 512, 513, 671, 672, 16000):
        assert frontend(torch.zeros(n)).shape == (config.num_frames(n), 40)
    assert config.num_frames(16000) == 97
    # frame i covers samples [i*hop, i*hop + n_fft): a change at sample 700 touches frames 2-4
    audio = torch.from_numpy(speechlike(0.2))
    changed = audio.clone()
    changed[700] += 0.5
    differs = (frontend(audio) - frontend(changed)).abs().amax(dim=1) > 0
    assert differs.nonzero().flatten().tolist() == [2, 3, 4]


def test_batched_equals_per_clip_and_chunking_is_invisible():
    config = FrontendConfig()
    clips = torch.from_numpy(np.stack([speechlike(1.0, seed) for seed in range(6)]))
    batch = clips.reshape(2, 3, -1)
    frontend = Frontend(config)
    out = frontend(batch)
    assert out.shape == (2, 3, 97, 40)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(out[i, j], frontend(batch[i, j]), rtol=0, atol=1e-4)
    # tiny CPU pieces: whole clips per piece, then stretches of one clip
    frontend.cpu_chunk_frames = 150
    torch.testing.assert_close(frontend(batch), out, rtol=0, atol=1e-4)
    frontend.cpu_chunk_frames = 20
    torch.testing.assert_close(frontend(batch), out, rtol=0, atol=1e-4)


def test_vtlp_warps_frequencies_below_the_boundary_and_keeps_nyquist():
    hz = np.linspace(0, RATE / 2, 257)
    for factor in (0.9, 0.95, 1.05, 1.1):
        warped = vtlp_frequencies(hz, factor, RATE / 2)
        assert warped[0] == 0 and warped[-1] == pytest.approx(RATE / 2)
        assert np.all(np.diff(warped) > 0)  # continuous and order-keeping: no folded bands
        assert vtlp_frequencies(np.array([1000.0]), factor, RATE / 2)[0] == pytest.approx(
            1000 * factor
        )
    unwarped = mel_filterbank(RATE, 512, 40, 20.0, None)
    assert np.array_equal(mel_filterbank(RATE, 512, 40, 20.0, None, 1.0), unwarped)
    assert not np.allclose(mel_filterbank(RATE, 512, 40, 20.0, None, 1.1), unwarped)


@pytest.mark.parametrize("factor, moves", [(1.1, 1), (0.9, -1)])
def test_a_vtlp_factor_moves_a_tone_across_the_mel_bands(factor, moves):
    """A factor over 1 plays a shorter vocal tract: a 2 kHz tone lands in higher mel bands."""
    tone = torch.from_numpy(np.sin(2 * np.pi * 2000 * np.arange(RATE) / RATE).astype(np.float32))
    frontend = Frontend(FrontendConfig(kind="logmel"))
    band = int(frontend(tone).mean(0).argmax())
    warped = int(frontend(tone[None], torch.tensor([factor]))[0].mean(0).argmax())
    assert np.sign(warped - band) == moves


def test_each_row_gets_its_own_warp_in_every_chunking():
    clips = torch.from_numpy(np.stack([speechlike(1.0, seed) for seed in range(6)]))
    frontend = Frontend(FrontendConfig())
    torch.testing.assert_close(frontend(clips, torch.ones(6)), frontend(clips), rtol=0, atol=0)
    factors = torch.tensor([0.9, 0.93, 1.0, 1.04, 1.1, 0.9])
    out = frontend(clips, factors)
    for row in range(6):
        alone = frontend(clips[row : row + 1], factors[row : row + 1])[0]
        torch.testing.assert_close(out[row], alone, rtol=0, atol=1e-4)
    assert not torch.allclose(out[0], frontend(clips[0]), atol=0.1)
    for chunk in (150, 20):  # whole clips per piece, then stretches of one clip
        frontend.cpu_chunk_frames = chunk
        torch.testing.assert_close(frontend(clips, factors), out, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="5 warp factors for 6 rows"):
        frontend(clips, factors[:5])


def test_vtlp_out_of_range_is_refused():
    from kws_ghost.config import AugmentConfig
    from kws_ghost.errors import KwsError

    AugmentConfig(vtlp=0.2).validate()
    for bad in (-0.1, 0.5):
        with pytest.raises(KwsError, match="--vtlp"):
            AugmentConfig(vtlp=bad).validate()


def test_buffers_follow_the_module_and_stay_out_of_state_dict():
    frontend = Frontend(FrontendConfig())
    assert frontend.state_dict() == {}
    assert {name for name, _ in frontend.named_buffers()} == {"window", "mel_basis", "dct_basis"}
    assert frontend.to(torch.float32).to("cpu")(torch.zeros(1000)).device.type == "cpu"


def test_gradients_reach_the_audio():
    audio = torch.from_numpy(speechlike(0.1)).requires_grad_()
    Frontend(FrontendConfig())(audio).sum().backward()
    assert audio.grad is not None and audio.grad.abs().sum() > 0


@pytest.mark.parametrize("seed", range(4))
def test_streaming_equals_offline_for_random_chunks(seed):
    config = FrontendConfig()
    audio = speechlike(2.5, seed)
    offline = compute_features(audio, config)
    rng = np.random.default_rng(seed)
    stream = StreamingFrontend(config)
    outputs, position = [], 0
    while position < len(audio):
        size = int(rng.choice([0, 1, 2, 159, 160, 161, 511, 512, 513, rng.integers(1, 7000)]))
        new = stream.push(audio[position : position + size])
        assert new.shape[1] == 40
        outputs.append(new)
        position = min(position + size, len(audio))
        assert stream.pending_samples < config.n_fft
        assert stream.frames_emitted == config.num_frames(position)
    streamed = np.concatenate(outputs)
    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, rtol=0, atol=STREAM_ATOL_DB)


def test_streaming_one_sample_at_a_time_and_reset():
    config = FrontendConfig(kind="logmel")
    audio = speechlike(0.1, 7)
    offline = compute_features(audio, config)
    stream = StreamingFrontend(config)
    streamed = np.concatenate([stream.push(audio[i : i + 1]) for i in range(len(audio))])
    np.testing.assert_allclose(streamed, offline, rtol=0, atol=STREAM_ATOL_DB)
    stream.reset()
    assert stream.frames_emitted == 0 and stream.pending_samples == 0
    np.testing.assert_allclose(stream.push(audio), offline, rtol=0, atol=STREAM_ATOL_DB)
    assert stream.push(np.zeros(0, np.float32)).shape == (0, 40)
    assert stream.push(audio[None, :200]).shape[1] == 40  # [1, n] is mono too
    with pytest.raises(ValueError):
        stream.push(np.zeros((2, 100), np.float32))


def test_the_numpy_front_end_imports_neither_torch_nor_librosa():
    code = (
        "import sys, kws_ghost.frontend, kws_ghost.audio, kws_ghost.cli.features; "
        "assert 'librosa' not in sys.modules, 'librosa imported'; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- kws-ghost features


def write_clip(path, seconds=1.0, seed=0, rate=RATE):
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = speechlike(seconds, seed)
    if rate != RATE:
        audio = np.interp(
            np.arange(int(seconds * rate)) * RATE / rate, np.arange(len(audio)), audio
        )
    soundfile.write(path, audio, rate, subtype="PCM_16")
    return path


def run_cli(*args):
    return CliRunner().invoke(main, ["features", *map(str, args)])


def test_cli_file_equals_the_frontend(tmp_path):
    wav = write_clip(tmp_path / "in" / "clip.wav", 1.0, seed=3, rate=44100)
    result = run_cli(wav, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    saved = np.load(tmp_path / "out" / "clip.npy")
    expected = compute_features(load_audio(wav), FrontendConfig())
    assert saved.shape == (97, 40) and saved.dtype == np.float32
    np.testing.assert_allclose(saved, expected, rtol=0, atol=STREAM_ATOL_DB)
    assert "97 frames x 40 MFCCs" in result.output and "100 frames/s" in result.output

    result = run_cli(wav, "--out", tmp_path / "lm", "--kind", "logmel", "--json")
    report = json.loads(result.output)
    assert report["frontend"]["kind"] == "logmel" and report["outputs"][0]["shape"] == [97, 40]
    expected = compute_features(load_audio(wav), FrontendConfig(kind="logmel"))
    np.testing.assert_allclose(np.load(tmp_path / "lm" / "clip.npy"), expected, atol=1e-4)


def test_cli_folder_npz_holds_every_clip(tmp_path):
    root = tmp_path / "speech"
    clips = {
        "yes/aaaa_nohash_0.wav": 1.0,
        "yes/bbbb_nohash_1.wav": 0.7,
        "no/cccc_nohash_0.wav": 1.0,
        "_background_noise_/hum.wav": 3.2,
        "tiny/short.wav": 0.01,  # shorter than one frame: (0, 40)
    }
    for seed, (name, seconds) in enumerate(clips.items()):
        write_clip(root / name, seconds, seed)
    (root / "testing_list.txt").write_text("yes/aaaa_nohash_0.wav\n")

    result = run_cli(root, "--out", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["outputs"][0]
    assert report["clips"] == 5 and report["output"] == str(tmp_path / "out" / "speech.npz")

    with np.load(tmp_path / "out" / "speech.npz") as archive:
        assert sorted(archive.files) == sorted(clips)
        for name in clips:
            expected = compute_features(load_audio(root / name), FrontendConfig())
            np.testing.assert_allclose(archive[name], expected, rtol=0, atol=STREAM_ATOL_DB)
        assert archive["tiny/short.wav"].shape == (0, 40)


def test_cli_model_uses_the_checkpoint_frontend(tmp_path):
    from kws_ghost.checkpoint import save_checkpoint
    from kws_ghost.models import build_model

    labels = ["yes", "no", "_unknown_"]
    model = build_model(ModelConfig(input_dim=40, hidden=8, layers=1, num_classes=len(labels)))
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, model, FrontendConfig(hop_ms=20), labels)
    wav = write_clip(tmp_path / "clip.wav", 1.0)

    result = run_cli(wav, "--model", checkpoint, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    saved = np.load(tmp_path / "out" / "clip.npy")
    config = FrontendConfig(hop_ms=20)
    assert saved.shape == (config.num_frames(RATE), 40) == (49, 40)
    np.testing.assert_allclose(saved, compute_features(load_audio(wav), config), atol=1e-4)
    assert "50 frames/s" in result.output


def test_cli_plot_writes_a_png(tmp_path):
    wav = write_clip(tmp_path / "clip.wav", 1.0)
    result = run_cli(wav, "--out", tmp_path, "--plot")
    assert result.exit_code == 0, result.output
    png = tmp_path / "clip.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(png).shape
    assert width > 600 and height > 400


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda d: d / "missing.wav", "no such file"),
        (
            lambda d: (d / "notes.wav").write_text("hello\n" * 50) and d / "notes.wav",
            "not an audio",
        ),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no .wav files"),
    ],
    ids=["missing", "text-as-wav", "folder-without-wavs"],
)
def test_cli_bad_input_is_one_line(tmp_path, make, words):
    target = make(tmp_path)
    result = run_cli(target, "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert str(target) in result.stderr and words in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def assert_one_line_error(result, *needles):
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_cli_nan_samples_are_one_line_and_write_nothing(tmp_path):
    audio = speechlike(1.0).astype(np.float32)
    audio[[8160, 8161, 12000]] = np.nan
    wav = tmp_path / "x.wav"
    soundfile.write(wav, audio, RATE, subtype="FLOAT")
    result = run_cli(wav, "--out", tmp_path / "out")
    assert_one_line_error(result, f"{wav}: 3 NaN/infinite samples (first at 0.51 s)", "corrupt")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    # in a folder: the .npz is not written either
    write_clip(tmp_path / "corpus" / "yes" / "good.wav")
    (tmp_path / "corpus" / "yes" / "z.wav").write_bytes(wav.read_bytes())
    result = run_cli(tmp_path / "corpus", "--out", tmp_path / "out")
    assert_one_line_error(result, "z.wav", "NaN/infinite")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_cli_plot_never_replaces_a_file_that_is_not_a_png(tmp_path):
    wav = write_clip(tmp_path / "clip.wav", 1.0)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "clip.png").write_text("my notes, not an image")
    result = run_cli(wav, "--out", tmp_path / "out", "--plot")
    assert_one_line_error(result, str(tmp_path / "out" / "clip.png"), "not a PNG")
    assert (tmp_path / "out" / "clip.png").read_text() == "my notes, not an image"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["clip.png"]  # no .npy


def test_cli_out_below_a_file_is_one_line(tmp_path):
    wav = write_clip(tmp_path / "clip.wav", 1.0)
    (tmp_path / "meeting.wav").write_bytes(wav.read_bytes())
    result = run_cli(wav, "--out", tmp_path / "meeting.wav" / "feats")
    assert_one_line_error(result, "meeting.wav is a file, not a folder")
    assert (tmp_path / "meeting.wav").read_bytes() == wav.read_bytes()


def test_cli_output_that_is_the_input_is_refused(tmp_path):
    """``x.npy`` holding audio (a misnamed file) would be replaced by its own features."""
    wav = write_clip(tmp_path / "x.wav", 1.0).rename(tmp_path / "x.npy")
    audio = wav.read_bytes()
    result = run_cli(wav, "--out", tmp_path)
    assert_one_line_error(result, "same file as the input", str(wav))
    assert wav.read_bytes() == audio
