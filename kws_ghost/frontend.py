"""The feature front-end in numpy: what the detector and a device run (no torch, no librosa).

    frame i  = samples [i*hop, i*hop + n_fft), times a periodic Hann window of win_length
               centred in n_fft (torch.stft(center=False)'s framing: no look-ahead)
    power    = |rfft(frame)|^2
    mel      = power @ M^T   M: Slaney mel filter bank (librosa.filters.mel, htk=False,
                             norm="slaney"), built here in numpy: importing librosa takes 2.5 s
    logmel   = 10 log10(max(mel, log_floor))
    mfcc     = logmel @ D^T  D: orthonormal DCT-II rows (scipy.fft.dct(type=2, norm="ortho"))

``kws_ghost.features.Frontend`` is the same computation in torch, batched, for training; tests
hold the two (and librosa) to the same frames. ``StreamingFrontend`` gives the same frames for
audio pushed in chunks of any size, keeping fewer than n_fft samples between pushes.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from kws_ghost.config import FrontendConfig

# Frames per FFT call: small enough to stay in cache (512 measured fastest here, 2 MB of scratch).
CHUNK_FRAMES = 512


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, linear)


# VTLP's upper boundary frequency at 16 kHz (Jaitly & Hinton 2013): below it frequencies scale by
# the warp factor, above it a second linear piece keeps the Nyquist frequency where it is.
VTLP_BOUNDARY_HZ = 4800.0


def vtlp_frequencies(hz: np.ndarray, factor: float, nyquist: float) -> np.ndarray:
    """Frequencies warped as a vocal tract ``factor`` times shorter would put them (VTLP):
    ``factor * f`` up to a boundary, then linear to ``nyquist``, which stays fixed."""
    hz = np.asarray(hz, dtype=np.float64)
    boundary = VTLP_BOUNDARY_HZ * min(factor, 1.0) / factor
    upper = nyquist - (nyquist - factor * boundary) / (nyquist - boundary) * (nyquist - hz)
    return np.where(hz <= boundary, factor * hz, upper)


@functools.lru_cache(maxsize=64)
def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    fmin: float,
    fmax: float | None,
    warp: float = 1.0,
) -> np.ndarray:
    """Slaney-normalised triangular mel filters [n_mels, n_fft // 2 + 1] float32, equal to
    ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax, htk=False, norm="slaney")`` (tested).
    ``warp`` other than 1: the filters read the spectrum at VTLP-warped frequencies
    (``vtlp_frequencies``), as a speaker with a vocal tract ``warp`` times shorter would fill
    them; training draws it per sequence (``--vtlp``)."""
    fmax = sample_rate / 2.0 if fmax is None else fmax
    bins = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    if warp != 1.0:
        bins = vtlp_frequencies(bins, warp, sample_rate / 2.0)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # equal area per filter
    bank = weights.astype(np.float32)
    bank.setflags(write=False)
    return bank


@functools.lru_cache(maxsize=32)
def dct_matrix(n_mels: int, n_mfcc: int) -> np.ndarray:
    """Orthonormal DCT-II rows [n_mfcc, n_mels]: ``dct_matrix(n, k) @ x`` equals
    ``scipy.fft.dct(x, type=2, norm="ortho")[:k]``, the transform librosa.feature.mfcc applies."""
    n = np.arange(n_mels, dtype=np.float64)
    k = np.arange(n_mfcc, dtype=np.float64)[:, None]
    basis = np.cos(np.pi * k * (2.0 * n + 1.0) / (2.0 * n_mels)) * math.sqrt(2.0 / n_mels)
    basis[0] /= math.sqrt(2.0)
    matrix = basis.astype(np.float32)
    matrix.setflags(write=False)
    return matrix


@functools.lru_cache(maxsize=32)
def frame_window(win_length: int, n_fft: int) -> np.ndarray:
    """Periodic Hann window of ``win_length`` centred in ``n_fft`` zeros (torch.stft's padding)."""
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win_length) / win_length)
    window = np.zeros(n_fft, np.float32)
    left = (n_fft - win_length) // 2
    window[left : left + win_length] = hann
    window.setflags(write=False)
    return window


def power_spectrogram(audio: np.ndarray, config: FrontendConfig) -> np.ndarray:
    """``|rfft|^2`` of each frame, [frames, n_fft // 2 + 1] float32."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    frames = config.num_frames(len(audio))
    out = np.empty((frames, config.n_fft // 2 + 1), np.float32)
    if frames == 0:
        return out
    # float64 frames: numpy's float64 rfft measured 1.7x faster than its float32 one here
    window = frame_window(config.win_length, config.n_fft).astype(np.float64)
    strided = np.lib.stride_tricks.sliding_window_view(audio, config.n_fft)[:: config.hop_length]
    for first in range(0, frames, CHUNK_FRAMES):
        spectrum = np.fft.rfft(strided[first : first + CHUNK_FRAMES] * window, axis=1)
        out[first : first + len(spectrum)] = np.square(spectrum.real) + np.square(spectrum.imag)
    return out


def per_frame_product(rows: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``rows @ matrix.T`` computed as one small product per row, so that a frame's result does
    not depend on how many frames share the call: BLAS rounds a row of a large product
    differently by its position in the blocking (3e-5 dB measured), and a stream pushed in
    different chunk sizes must give the same frames bit for bit."""
    return np.matmul(rows[:, None, :], np.ascontiguousarray(matrix.T))[:, 0]


def features_from_power(power: np.ndarray, config: FrontendConfig) -> np.ndarray:
    """The configured features [frames, num_features] from a power spectrogram."""
    mel = mel_filterbank(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax)
    mel_power = per_frame_product(power, mel)
    log_mel = np.log10(np.maximum(mel_power, config.log_floor)) * np.float32(10.0)
    if config.kind == "logmel":
        return log_mel.astype(np.float32, copy=False)
    mfcc = per_frame_product(log_mel, dct_matrix(config.n_mels, config.n_mfcc))
    return mfcc.astype(np.float32, copy=False)


def compute_features(audio: np.ndarray, config: FrontendConfig) -> np.ndarray:
    """Features [frames, num_features] float32 of mono audio (frames: ``config.num_frames``),
    computed in pieces of ``CHUNK_FRAMES`` so the scratch arrays stay small."""
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    frames = config.num_frames(len(audio))
    out = np.empty((frames, config.num_features), np.float32)
    span = (CHUNK_FRAMES - 1) * config.hop_length + config.n_fft
    for first in range(0, frames, CHUNK_FRAMES):
        start = first * config.hop_length
        piece = power_spectrogram(audio[start : start + span], config)
        out[first : first + len(piece)] = features_from_power(piece, config)
    return out


def frame_times(num_frames: int, config: FrontendConfig) -> np.ndarray:
    """Centre time in seconds of each frame (frame i spans [i*hop, i*hop + n_fft) samples)."""
    starts = np.arange(num_frames, dtype=np.float64) * config.hop_length
    return (starts + config.n_fft / 2.0) / config.sample_rate


def frame_levels(frames: np.ndarray, config: FrontendConfig) -> np.ndarray:
    """Mean log-mel level (dB) of each frame ``[..., frames, features]``: MFCC c0 is that level
    times sqrt(n_mels) under the orthonormal DCT."""
    if config.kind == "mfcc":
        return frames[..., 0] / math.sqrt(config.n_mels)
    return frames.mean(axis=-1)


class StreamingFrontend:
    """``compute_features``'s frames from audio arriving in chunks of any size: ``push`` returns
    the frames the new samples complete; concatenated over pushes they are the frames of the whole
    audio. Between pushes it keeps fewer than n_fft samples."""

    def __init__(self, config: FrontendConfig) -> None:
        config.validate()
        self.config = config
        self.frames_emitted = 0
        self._pending = np.zeros(0, np.float32)

    @property
    def pending_samples(self) -> int:
        return len(self._pending)

    def reset(self) -> None:
        self.frames_emitted = 0
        self._pending = np.zeros(0, np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Add mono samples; return the ``[new_frames, num_features]`` frames they complete."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.ndim != 1:
            if samples.size != max(samples.shape, default=0):
                raise ValueError(f"push takes mono samples (1-D), not shape {samples.shape}")
            samples = samples.reshape(-1)
        audio = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        cfg = self.config
        total = cfg.num_frames(len(audio))
        self._pending = audio[total * cfg.hop_length :].copy()
        self.frames_emitted += total
        if total == 0:
            return np.zeros((0, cfg.num_features), np.float32)
        return compute_features(audio[: (total - 1) * cfg.hop_length + cfg.n_fft], cfg)


def librosa_features(audio: np.ndarray, config: FrontendConfig) -> np.ndarray:
    """The same features computed by librosa, ``[frames, num_features]``: the reference the
    front-ends are tested and benchmarked against (librosa is a development dependency).

    ``librosa.feature.mfcc(y=...)`` would apply power_to_db's defaults (amin 1e-10, top_db 80),
    so the log-mel is passed in as ``S`` with the front-end's floor and no top_db clipping.
    """
    import librosa

    mel = librosa.feature.melspectrogram(
        y=np.asarray(audio, dtype=np.float32),
        sr=config.sample_rate,
        n_fft=config.n_fft,
        hop_length=config.hop_length,
        win_length=config.win_length,
        window="hann",
        center=False,
        power=2.0,
        n_mels=config.n_mels,
        fmin=config.fmin,
        fmax=config.fmax,
        htk=False,
        norm="slaney",
    )
    log_mel = librosa.power_to_db(mel, ref=1.0, amin=config.log_floor, top_db=None)
    if config.kind == "logmel":
        return log_mel.T
    return librosa.feature.mfcc(S=log_mel, n_mfcc=config.n_mfcc, dct_type=2, norm="ortho").T
