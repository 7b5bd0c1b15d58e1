"""Audio from a pipe (``detect -``, a microphone tool's stdout): a WAV or FLAC stream when the
input starts with its header, raw 16-bit little-endian mono PCM otherwise.

A WAV stream is decoded as it arrives (its rate and channels from the header, mixed down and
resampled as files are), so ``ffmpeg -i mic -f wav - | kws-ghost detect -`` is live. A FLAC
stream is read whole first: libsndfile needs to seek in it, and FLAC is a file format, not a
live one. Raw PCM is yielded as soon as whole samples arrive.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO, Callable, Optional

import numpy as np

from kws_ghost.audio import MonoConverter
from kws_ghost.errors import KwsError

PCM16_SCALE = 32768.0  # libsndfile's scaling of PCM_16, so a pipe reads like the same file
_WAV_PCM, _WAV_FLOAT, _WAV_EXTENSIBLE = 1, 3, 0xFFFE
_UNKNOWN_DATA_SIZES = (0, 0xFFFFFFFF)  # "until the end": how streaming writers leave the size


def _reader(stream: BinaryIO) -> Callable[[int], bytes]:
    """At most one read of the pipe per call (``read1``), so blocks come as they arrive."""
    return getattr(stream, "read1", None) or stream.read


def _read_exact(read: Callable[[int], bytes], size: int) -> bytes:
    """``size`` bytes, or fewer only at the end of the stream."""
    data = b""
    while len(data) < size:
        more = read(size - len(data))
        if not more:
            break
        data += more
    return data


def iter_pcm16(
    stream: BinaryIO, block_samples: int = 1600, prefix: bytes = b""
) -> Iterator[np.ndarray]:
    """Raw 16-bit little-endian mono PCM from ``stream`` (e.g. stdin) as float32 blocks.

    Yields whatever whole samples have arrived, up to ``block_samples`` at a time, without waiting
    for a full block (``read1`` does at most one read of the underlying pipe), so a live source
    is processed with little latency. An odd trailing byte is kept for the next read; one left at
    the end of the stream is dropped. Scaling is 1/32768, the same as libsndfile's for PCM_16.
    ``prefix``: bytes already read from the stream (a header check).
    """
    if block_samples < 1:
        raise ValueError("block_samples must be positive")
    read = _reader(stream)
    want = 2 * block_samples
    pending = prefix
    while True:
        if len(pending) < 2:
            more = read(want - len(pending))
            if not more:
                return
            pending += more
        whole = min(len(pending), want) & ~1
        if whole:
            samples = np.frombuffer(pending[:whole], dtype="<i2")
            yield samples.astype(np.float32) / np.float32(PCM16_SCALE)
        pending = pending[whole:]


def iter_stdin_audio(
    stream: BinaryIO, sample_rate: int = 16000, block_samples: int = 800
) -> Iterator[np.ndarray]:
    """Mono float32 blocks at ``sample_rate`` from a pipe: WAV (decoded as it arrives), FLAC
    (read whole), or raw 16-bit PCM at ``sample_rate`` (anything without such a header)."""
    read = _reader(stream)
    head = _read_exact(read, 4)
    if head in (b"RIFF", b"RF64"):
        yield from _iter_wav(read, head, sample_rate, block_samples)
    elif head == b"RIFX":
        raise KwsError("stdin: a big-endian (RIFX) WAV stream; convert it to a little-endian WAV")
    elif head == b"fLaC":
        yield from _iter_flac(head + stream.read(), sample_rate, block_samples)
    else:
        yield from iter_pcm16(stream, block_samples, prefix=head)


def _iter_wav(
    read: Callable[[int], bytes], head: bytes, sample_rate: int, block_samples: int
) -> Iterator[np.ndarray]:
    riff = _read_exact(read, 8)
    if len(riff) < 8 or riff[4:8] != b"WAVE":
        raise KwsError("stdin: starts like a WAV stream but has no WAVE header")
    fmt: Optional[dict[str, Any]] = None
    while True:
        chunk = _read_exact(read, 8)
        if len(chunk) < 8:
            raise KwsError("stdin: the WAV stream ended before its audio data")
        chunk_id, size = struct.unpack("<4sI", chunk)
        if chunk_id == b"data":
            break
        body = _read_exact(read, size + (size & 1))
        if len(body) < size:
            raise KwsError("stdin: the WAV stream ended inside its header")
        if chunk_id == b"fmt ":
            fmt = _wav_format(body)
    if fmt is None:
        raise KwsError("stdin: the WAV stream has no fmt chunk before its data")
    # RF64 keeps the real size elsewhere; streaming writers leave it unknown: read to the end
    remaining = None if head == b"RF64" or size in _UNKNOWN_DATA_SIZES else size
    frame_bytes = fmt["channels"] * fmt["width"]
    converter = MonoConverter(fmt["rate"], sample_rate)
    carry = b""
    want = max(1, block_samples * fmt["rate"] // sample_rate) * frame_bytes
    while remaining is None or remaining > 0:
        ask = want if remaining is None else min(want, remaining)
        data = read(ask)
        if not data:
            break
        if remaining is not None:
            remaining -= len(data)
        data = carry + data
        whole = len(data) - len(data) % frame_bytes
        carry = data[whole:]
        if whole:
            try:
                samples = decode_pcm(data[:whole], fmt).reshape(-1, fmt["channels"])
            except KwsError as exc:
                raise KwsError(f"stdin: {exc}") from exc
            block = converter.push(samples)
            if len(block):
                yield block
    tail = converter.finish()
    if len(tail):
        yield tail


def _wav_format(body: bytes) -> dict[str, Any]:
    """rate, channels, sample width and kind from a fmt chunk; one line for what we can't read."""
    if len(body) < 16:
        raise KwsError("stdin: the WAV stream's fmt chunk is too short")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == _WAV_EXTENSIBLE and len(body) >= 26:
        tag = struct.unpack("<H", body[24:26])[0]  # the sub-format GUID starts with the tag
    kinds = {(_WAV_PCM, 8 * width): kind for width, kind in PCM_KINDS.items()}
    kinds.update({(_WAV_FLOAT, 32): "f32", (_WAV_FLOAT, 64): "f64"})
    kind = kinds.get((tag, bits))
    if kind is None:
        raise KwsError(
            f"stdin: a WAV stream of format {tag:#06x} with {bits}-bit samples; pipe "
            "8/16/24/32-bit PCM or 32/64-bit float WAV, or raw 16-bit PCM"
        )
    if channels < 1 or rate < 1:
        raise KwsError(f"stdin: the WAV stream's header gives {rate} Hz, {channels} channels")
    return {"kind": kind, "channels": channels, "rate": rate, "width": bits // 8}


PCM_KINDS = {1: "u8", 2: "i16", 3: "i24", 4: "i32"}  # integer PCM by sample width in bytes


def decode_pcm(data: bytes, fmt: dict[str, Any]) -> np.ndarray:
    """Interleaved samples of ``fmt["kind"]`` (u8, i16, i24, i32, f32, f64) -> float32 in
    libsndfile's scaling; NaN or infinite float samples refused."""
    kind = fmt["kind"]
    if kind == "u8":
        return (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
    if kind == "i16":
        return np.frombuffer(data, "<i2").astype(np.float32) / np.float32(PCM16_SCALE)
    if kind == "i24":
        raw = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        return value.astype(np.float32) / np.float32(1 << 23)
    if kind == "i32":
        return (np.frombuffer(data, "<i4") / float(1 << 31)).astype(np.float32)
    samples = np.frombuffer(data, "<f4" if kind == "f32" else "<f8").astype(np.float32)
    if not np.isfinite(samples).all():
        raise KwsError("NaN or infinite samples in the stream; the audio is corrupt")
    return samples


def _iter_flac(data: bytes, sample_rate: int, block_samples: int) -> Iterator[np.ndarray]:
    import soundfile

    try:
        handle = soundfile.SoundFile(io.BytesIO(data))
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise KwsError(f"stdin: an unreadable FLAC stream ({exc})") from exc
    with handle:
        converter = MonoConverter(handle.samplerate, sample_rate)
        while True:
            block = handle.read(block_samples, dtype="float32", always_2d=True)
            if not np.isfinite(block).all():
                raise KwsError("stdin: NaN or infinite samples in the FLAC stream")
            last = len(block) < block_samples
            out = converter.push(block, last=last)
            if len(out):
                yield out
            if last:
                return
