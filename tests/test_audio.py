"""Audio loading: formats, channels and rates in; one clear error per kind of bad file."""

import io

import numpy as np
import pytest
import soundfile

from kws_ghost.audio import (
    RESAMPLE_QUALITY,
    audio_info,
    iter_audio_blocks,
    load_audio,
    write_wav,
)
from kws_ghost.errors import KwsError
from kws_ghost.pipe_audio import iter_pcm16

RATE = 16000


def tone(seconds, rate, freq=440.0, amp=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(audio, rate):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.argmax(spectrum) * rate / len(audio)


@pytest.mark.parametrize("rate", [44100, 48000])
def test_stereo_file_is_mixed_to_mono_and_resampled(tmp_path, rate):
    left, right = tone(0.5, rate, 440, 0.6), tone(0.5, rate, 440, 0.2)
    path = tmp_path / f"stereo{rate}.wav"
    soundfile.write(path, np.stack([left, right], axis=1), rate, subtype="PCM_16")

    audio = load_audio(path)

    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 0.5 * RATE) <= 1
    assert abs(dominant_frequency(audio, RATE) - 440) < 5
    # mean of channels: amplitude (0.6 + 0.2) / 2; RMS of a sine is amplitude / sqrt(2)
    rms = np.sqrt(np.mean(audio[800:-800] ** 2))
    assert rms == pytest.approx(0.4 / np.sqrt(2), rel=0.01)


@pytest.mark.parametrize(
    "subtype, tolerance", [("PCM_U8", 1 / 64), ("PCM_24", 1e-6), ("PCM_32", 1e-7), ("FLOAT", 0)]
)
def test_wav_sample_formats(tmp_path, subtype, tolerance):
    source = tone(0.25, RATE, 300, 0.7)
    path = tmp_path / f"{subtype}.wav"
    soundfile.write(path, source, RATE, subtype=subtype)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and len(audio) == len(source)
    assert np.abs(audio - source).max() <= tolerance + 1e-7


def test_float_wav_beyond_full_scale_is_clipped(tmp_path):
    path = tmp_path / "loud.wav"
    soundfile.write(path, np.array([0.5, 1.5, -2.0] * 400, np.float32), RATE, subtype="FLOAT")
    audio = load_audio(path)
    assert audio.max() == 1.0 and audio.min() == -1.0


@pytest.mark.parametrize("fmt, ext", [("FLAC", "flac"), ("OGG", "ogg")])
def test_compressed_formats(tmp_path, fmt, ext):
    if fmt not in soundfile.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    source = tone(0.5, 22050, 500, 0.5)
    path = tmp_path / f"clip.{ext}"
    soundfile.write(path, source, 22050, format=fmt)
    audio = load_audio(path)
    assert abs(len(audio) - 0.5 * RATE) <= 1
    assert abs(dominant_frequency(audio, RATE) - 500) < 5
    assert np.sqrt(np.mean(audio**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
    assert audio_info(path)["format"] == fmt


@pytest.mark.parametrize("rate, channels", [(RATE, 1), (44100, 2)])
def test_blocks_concatenate_to_load_audio(tmp_path, rate, channels):
    rng = np.random.default_rng(0)
    source = (0.3 * rng.standard_normal((int(2.3 * rate), channels))).astype(np.float32)
    path = tmp_path / "long.wav"
    soundfile.write(path, source, rate, subtype="PCM_16")

    blocks = list(iter_audio_blocks(path, RATE, block_seconds=0.1))

    assert len(blocks) > 10
    assert max(len(b) for b in blocks) <= 2 * 0.1 * RATE  # bounded by the block size
    # Same reads, same channel mean, soxr's stream == its one-shot call: equal bit for bit.
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(path))
    if rate != RATE:
        import soxr

        stored = soundfile.read(path, dtype="float32", always_2d=True)[0]
        mono = stored.mean(axis=1, dtype=np.float32)
        one_shot = soxr.resample(mono, rate, RATE, quality=RESAMPLE_QUALITY)
        np.testing.assert_array_equal(np.concatenate(blocks), np.clip(one_shot, -1.0, 1.0))


def test_audio_info(tmp_path):
    path = tmp_path / "info.wav"
    soundfile.write(path, np.zeros((4410, 2), np.float32), 44100, subtype="PCM_24")
    info = audio_info(path)
    assert info["sample_rate"] == 44100 and info["channels"] == 2 and info["frames"] == 4410
    assert info["duration"] == pytest.approx(0.1) and info["format"] == "WAV"


class TrickleStream:
    """A byte stream that hands out data in given piece sizes, as a pipe would."""

    def __init__(self, data, sizes):
        self.data, self.sizes, self.reads = data, list(sizes), 0

    def _next(self, limit):
        self.reads += 1
        size = min(limit, self.sizes.pop(0) if self.sizes else limit)
        piece, self.data = self.data[:size], self.data[size:]
        return piece

    def read1(self, limit=-1):  # noqa: D401 - mimics io.BufferedReader.read1
        return self._next(limit)

    def read(self, limit=-1):
        return self._next(limit)


@pytest.mark.parametrize("has_read1", [True, False])
def test_iter_pcm16_with_odd_chunking(has_read1):
    rng = np.random.default_rng(1)
    samples = rng.integers(-32768, 32768, 5000).astype("<i2")
    data = samples.tobytes() + b"\x7f"  # a dangling odd byte at the very end is dropped
    sizes = rng.choice([1, 3, 7, 100, 999, 4001], size=200).tolist()
    stream = TrickleStream(data, sizes)
    if not has_read1:
        stream.read1 = None  # a raw stream: iter_pcm16 falls back to read()
    blocks = list(iter_pcm16(stream, block_samples=320))
    assert all(0 < len(b) <= 320 for b in blocks)
    joined = np.concatenate(blocks)
    assert joined.dtype == np.float32
    np.testing.assert_array_equal(joined, samples.astype(np.float32) / 32768)


def test_iter_pcm16_yields_before_the_stream_ends():
    data = np.arange(100, dtype="<i2").tobytes()
    stream = TrickleStream(data, [21, 1000])
    blocks = iter_pcm16(stream, block_samples=1600)
    first = next(blocks)
    assert stream.reads == 1 and len(first) == 10  # 21 bytes: 10 samples now, 1 byte kept
    rest = np.concatenate(list(blocks))
    assert len(first) + len(rest) == 100 and rest[0] == np.float32(10 / 32768)


def test_iter_pcm16_matches_the_wav_reader(tmp_path):
    samples = np.random.default_rng(2).integers(-32768, 32768, 3000).astype("<i2")
    path = tmp_path / "pcm.wav"
    soundfile.write(path, samples, RATE, subtype="PCM_16")
    piped = np.concatenate(list(iter_pcm16(io.BytesIO(samples.tobytes()), 256)))
    np.testing.assert_array_equal(piped, load_audio(path))


def test_write_wav_round_trip_is_exact_and_atomic(tmp_path):
    audio = np.random.default_rng(3).integers(-32768, 32768, 8000) / 32768.0
    audio[:3] = [1.7, -1.9, 1.0]  # clipped to full scale
    path = tmp_path / "out" / "clip.wav"
    write_wav(path, audio)
    assert [p.name for p in path.parent.iterdir()] == ["clip.wav"]  # no temporary left behind
    info = soundfile.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (RATE, 1, "PCM_16")
    loaded = load_audio(path)
    expected = np.clip(audio, -1, 32767 / 32768).astype(np.float32)
    expected[:2] = [32767 / 32768, -1.0]
    np.testing.assert_array_equal(loaded, expected)


def _wav_bytes(seconds=0.5):
    buffer = io.BytesIO()
    soundfile.write(buffer, tone(seconds, RATE), RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


BAD_INPUTS = {
    "missing": (lambda p: None, "no such file"),
    "empty": (lambda p: p.write_bytes(b""), "empty file"),
    "folder": (lambda p: p.mkdir(), "is a folder"),
    "text": (lambda p: p.write_text("just some text, not audio\n" * 20), "not an audio file"),
    "truncated": (lambda p: p.write_bytes(_wav_bytes()[:8000]), "truncated"),
    "header-only": (lambda p: p.write_bytes(_wav_bytes()[:44]), "truncated"),
    "half-header": (lambda p: p.write_bytes(_wav_bytes()[:30]), "unreadable"),
    "zero-length": (
        lambda p: soundfile.write(p, np.zeros(0, np.float32), RATE, subtype="PCM_16"),
        "no audio samples",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("reader", ["load_audio", "iter_audio_blocks", "audio_info"])
def test_bad_input_is_one_line_naming_the_file(tmp_path, case, reader):
    make, words = BAD_INPUTS[case]
    path = tmp_path / f"{case}.wav"
    make(path)
    call = {
        "load_audio": load_audio,
        "iter_audio_blocks": lambda p: list(iter_audio_blocks(p)),
        "audio_info": audio_info,
    }[reader]
    with pytest.raises(KwsError) as caught:
        call(path)
    message = str(caught.value)
    assert str(path) in message and words in message and "\n" not in message


def test_truncated_flac_is_an_error(tmp_path):
    if "FLAC" not in soundfile.available_formats():
        pytest.skip("no FLAC support")
    good = tmp_path / "good.flac"
    soundfile.write(good, np.random.default_rng(4).uniform(-0.5, 0.5, RATE), RATE, format="FLAC")
    bad = tmp_path / "bad.flac"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(KwsError, match="bad.flac"):
        load_audio(bad)


def _nan_wav(path, rate=RATE, bad=(8160, 9000, 9001), channels=1, value=np.nan):
    audio = tone(1.0, rate)
    if channels == 2:
        audio = np.stack([audio, audio], axis=1)
    audio[list(bad)] = value
    soundfile.write(path, audio.astype(np.float32), rate, subtype="FLOAT")
    return path


@pytest.mark.parametrize("rate", [RATE, 44100])
@pytest.mark.parametrize("reader", ["load_audio", "iter_audio_blocks"])
def test_nan_samples_are_an_error_that_counts_them(tmp_path, rate, reader):
    path = _nan_wav(tmp_path / "x.wav", rate, bad=(int(0.51 * rate), rate - 3, rate - 2))
    call = load_audio if reader == "load_audio" else lambda p: list(iter_audio_blocks(p, RATE, 0.1))
    with pytest.raises(KwsError) as caught:
        call(path)
    message = str(caught.value)
    assert message == f"{path}: 3 NaN/infinite samples (first at 0.51 s); the file is corrupt"


def test_infinite_samples_in_a_stereo_file_are_an_error(tmp_path):
    path = _nan_wav(tmp_path / "inf.wav", bad=(100,), channels=2, value=np.inf)
    with pytest.raises(KwsError, match=r"inf\.wav: 2 NaN/infinite samples \(first at 0\.01 s\)"):
        load_audio(path)
