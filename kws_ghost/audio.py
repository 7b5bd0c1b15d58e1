"""Audio in and out: any file libsndfile reads -> mono float32 at the front-end's rate.

Every failure a user can cause (missing file, folder, empty or truncated file, not audio, NaN or
infinite samples) becomes a one-line ``KwsError`` naming the file. Long files are read in blocks
(``iter_audio_blocks``) with a streaming resampler, so memory stays bounded whatever the length;
audio from a pipe is ``kws_ghost.pipe_audio``.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

import numpy as np

from kws_ghost.errors import KwsError
from kws_ghost.fileio import atomic_path

PathLike = Union[str, "os.PathLike[str]"]

# soxr quality: "HQ" (20-bit, ~0.1 dB passband) is the library default and far beyond what 16 kHz
# keyword features can resolve.
RESAMPLE_QUALITY = "HQ"
# A RIFF data-chunk size of 0 or 0xFFFFFFFF means "length unknown" (recorders streaming a WAV
# that was never finalised); libsndfile then reads to the end of the file, and so do we.
_UNKNOWN_DATA_SIZES = (0, 0xFFFFFFFF)


def _check_path(path: Path) -> None:
    if not path.exists():
        raise KwsError(f"{path}: no such file")
    if path.is_dir():
        raise KwsError(f"{path} is a folder, not an audio file")
    if not os.access(path, os.R_OK):
        raise KwsError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise KwsError(f"{path}: empty file (0 bytes), not audio")


def _open(path: Path) -> Any:
    """Open ``path`` with soundfile; every failure becomes a one-line KwsError."""
    import soundfile

    _check_path(path)
    try:
        handle = soundfile.SoundFile(str(path))
    except soundfile.LibsndfileError as exc:
        reason = _reason(exc)
        if "not recognised" in reason.lower() or "unknown format" in reason.lower():
            raise KwsError(
                f"{path}: not an audio file this tool can read ({reason}); "
                "convert it to WAV or FLAC"
            ) from exc
        raise KwsError(f"{path}: unreadable audio ({reason})") from exc
    except (RuntimeError, OSError) as exc:
        raise KwsError(f"{path}: unreadable audio ({exc})") from exc
    try:
        _check_riff_complete(path, handle)
        if handle.frames == 0:
            raise KwsError(f"{path}: holds no audio samples (0 frames; empty or truncated?)")
        if handle.samplerate <= 0 or handle.channels <= 0:
            raise KwsError(
                f"{path}: header gives {handle.samplerate} Hz, {handle.channels} channels"
            )
    except BaseException:
        handle.close()
        raise
    return handle


def _reason(exc: BaseException) -> str:
    """libsndfile's own words for a failure, without the file name it repeats."""
    text = str(getattr(exc, "error_string", None) or str(exc) or type(exc).__name__).strip()
    return re.sub(r"^Error\s*:\s*", "", text).rstrip(".")


def _check_riff_complete(path: Path, handle: Any) -> None:
    """Refuse a WAV whose header promises more data than the file holds.

    libsndfile silently shortens such a file to the frames present (a 1 s clip cut in half reads as
    0.5 s), which would hide a broken download or copy; so read the RIFF chunk list ourselves.
    """
    if handle.format not in ("WAV", "WAVEX"):
        return
    size = path.stat().st_size
    with open(path, "rb") as raw:
        header = raw.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return
        offset = 12
        while offset + 8 <= size:
            raw.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", raw.read(8))
            if chunk_id == b"data":
                available = size - (offset + 8)
                if chunk_size not in _UNKNOWN_DATA_SIZES and chunk_size > available:
                    frame_bytes = max(1, handle.channels * _sample_bytes(handle.subtype))
                    raise KwsError(
                        f"{path}: truncated WAV (header promises {chunk_size // frame_bytes} "
                        f"frames, the file holds {available // frame_bytes}); "
                        "re-download or re-copy it"
                    )
                return
            offset += 8 + chunk_size + (chunk_size & 1)


def _sample_bytes(subtype: str) -> int:
    return {
        "PCM_U8": 1,
        "PCM_S8": 1,
        "PCM_16": 2,
        "PCM_24": 3,
        "PCM_32": 4,
        "FLOAT": 4,
        "DOUBLE": 8,
        "ULAW": 1,
        "ALAW": 1,
    }.get(subtype, 2)


def to_mono(block: np.ndarray) -> np.ndarray:
    """[frames, channels] -> [frames] float32 (mean of the channels)."""
    if block.ndim == 2:
        block = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(block, dtype=np.float32)


def _check_finite(path: Path, handle: Any, block: np.ndarray, start_frame: int) -> None:
    """Refuse NaN or infinite samples (a corrupt float file): they would poison every feature.

    On the first bad block the rest of the file is read too, so the message can say how many.
    """
    bad = ~np.isfinite(block)
    if not bad.any():
        return
    first = start_frame + int(np.flatnonzero(bad.any(axis=1))[0])
    count = int(bad.sum())
    while True:
        try:
            rest = handle.read(1 << 16, dtype="float32", always_2d=True)
        except RuntimeError:
            break
        if not len(rest):
            break
        count += int((~np.isfinite(rest)).sum())
    raise KwsError(
        f"{path}: {count:,} NaN/infinite samples (first at {first / handle.samplerate:.2f} s); "
        "the file is corrupt"
    )


def finish_block(block: np.ndarray) -> np.ndarray:
    # Float files may hold values past full scale and resampling can overshoot by a hair: clip so
    # every caller gets audio in [-1, 1].
    return np.clip(block, -1.0, 1.0, out=block)


class MonoConverter:
    """[frames, channels] at ``in_rate`` -> mono float32 in [-1, 1] at ``out_rate`` (channel
    mean, soxr's streaming resampler), a chunk at a time: how files and pipes are converted."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.resampler = None
        if in_rate != out_rate:
            import soxr

            self.resampler = soxr.ResampleStream(
                in_rate, out_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY
            )

    def push(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        mono = to_mono(samples)
        if self.resampler is not None:
            mono = self.resampler.resample_chunk(mono, last=last)
        return finish_block(mono)

    def finish(self) -> np.ndarray:
        if self.resampler is None:
            return np.zeros(0, np.float32)
        return self.push(np.zeros((0, 1), np.float32), last=True)


def iter_audio_blocks(
    path: PathLike, sample_rate: int = 16000, block_seconds: float = 10.0
) -> Iterator[np.ndarray]:
    """The audio of ``path`` as mono float32 blocks at ``sample_rate``, memory bounded by a block.

    Concatenated, the blocks equal ``load_audio(path, sample_rate)`` exactly (same reads, same
    channel mean, and soxr's streaming resampler gives the same samples as its one-shot call).
    Blocks hold about ``block_seconds`` of output audio; the last one may be shorter.
    """
    import soundfile

    path = Path(path)
    handle = _open(path)
    with handle:
        in_rate = handle.samplerate
        block_frames = max(1, int(round(block_seconds * in_rate)))
        converter = MonoConverter(in_rate, sample_rate)
        total = 0
        while True:
            try:
                block = handle.read(block_frames, dtype="float32", always_2d=True)
            except (soundfile.LibsndfileError, RuntimeError) as exc:
                reason = _reason(exc)
                raise KwsError(
                    f"{path}: unreadable after {total} frames ({reason}); truncated or corrupt?"
                ) from exc
            _check_finite(path, handle, block, total)
            total += len(block)
            last = len(block) < block_frames
            mono = converter.push(block, last=last)
            if len(mono):
                yield mono
            if last:
                break
        if total == 0:
            raise KwsError(f"{path}: holds no audio samples (0 frames)")
        # MP3 frame counts are estimates unless the encoder wrote a Xing/LAME header: don't
        # call a short MP3 truncated.
        if handle.format != "MP3" and handle.seekable() and total < handle.frames:
            raise KwsError(
                f"{path}: truncated (header promises {handle.frames} frames, "
                f"only {total} could be decoded)"
            )


def load_audio(path: PathLike, sample_rate: int = 16000) -> np.ndarray:
    """The whole file as mono float32 in [-1, 1] at ``sample_rate`` (resampled with soxr)."""
    blocks = list(iter_audio_blocks(path, sample_rate, block_seconds=3600.0))
    if len(blocks) == 1:
        return blocks[0]
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def audio_info(path: PathLike) -> dict[str, Any]:
    """Header facts of an audio file: sample_rate, channels, frames, duration, format, subtype."""
    path = Path(path)
    with _open(path) as handle:
        return {
            "path": str(path),
            "sample_rate": int(handle.samplerate),
            "channels": int(handle.channels),
            "frames": int(handle.frames),
            "duration": handle.frames / handle.samplerate,
            "format": handle.format,
            "subtype": handle.subtype,
        }


def write_wav(path: PathLike, audio: np.ndarray, sample_rate: int = 16000) -> None:
    """Write mono (or [frames, channels]) float audio as a PCM16 WAV, atomically.

    Samples are clipped to [-1, 1] and scaled by 32768 (clamped to 32767), the inverse of the
    reader's scaling, so a clip that came from a PCM16 file is written back bit for bit.
    """
    import soundfile

    samples = np.asarray(audio, dtype=np.float64)
    if samples.ndim not in (1, 2):
        raise ValueError(f"audio must be 1-D or [frames, channels], not shape {samples.shape}")
    pcm = np.clip(np.round(np.clip(samples, -1.0, 1.0) * 32768.0), -32768, 32767).astype(np.int16)
    with atomic_path(path) as tmp:
        soundfile.write(str(tmp), pcm, int(sample_rate), subtype="PCM_16", format="WAV")
