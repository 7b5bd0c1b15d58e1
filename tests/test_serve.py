"""`kws-ghost serve`: the Wyoming wake-word server, driven by the real `wyoming` client over TCP
on 127.0.0.1: the events of `detect`, many clients at once, misbehaving clients, SIGTERM."""

import asyncio
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.wake import Detection, NotDetected


def start_server(model, *options):
    process = subprocess.Popen(
        [sys.executable, "-m", "kws_ghost", "serve", "--uri", "tcp://127.0.0.1:0"]
        + ["--model", str(model), "--json", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    assert line, process.stderr.read()
    uri = json.loads(line)["uri"]
    host, port = uri.removeprefix("tcp://").rsplit(":", 1)
    return process, host, int(port)


@pytest.fixture(scope="module")
def server(exported):
    process, host, port = start_server(exported, "--threshold", "0.3")
    yield host, port
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)


def detect_events(wav, model):
    result = subprocess.run(
        [sys.executable, "-m", "kws_ghost", "detect", str(wav), "--model", str(model)]
        + ["--format", "json", "--scorer", "stream", "--threshold", "0.3"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return [
        {k: v for k, v in json.loads(line).items() if k != "file"}
        for line in result.stdout.splitlines()
    ]


def without_score(event: dict) -> dict:
    return {k: v for k, v in event.items() if k != "score"}


async def stream_audio(host, port, pcm, rate=16000, channels=1, width=2, chunk=1024):
    """Send one stream; the detections (as detect's records) and whether not-detected came."""
    async with AsyncTcpClient(host, port) as client:
        await client.write_event(AudioStart(rate, width, channels).event())
        step = chunk * channels * width
        for start in range(0, len(pcm), step):
            piece = pcm[start : start + step]
            await client.write_event(AudioChunk(rate, width, channels, piece).event())
        await client.write_event(AudioStop().event())
        await client.write_event(Ping(text="end").event())  # answered after all the above
        found, not_detected = [], False
        while True:
            event = await asyncio.wait_for(client.read_event(), timeout=60)
            assert event is not None, "the server closed the connection"
            if Detection.is_type(event.type):
                detection = Detection.from_event(event)
                found.append({"keyword": detection.name, **detection.context})
                assert detection.timestamp == round(detection.context["end"] * 1000)
            elif NotDetected.is_type(event.type):
                not_detected = True
            elif Pong.is_type(event.type):
                return found, not_detected


def pcm16(audio):
    return np.clip(np.round(audio * 32768), -32768, 32767).astype("<i2").tobytes()


def test_describe_lists_the_models_keywords(server):
    async def describe():
        async with AsyncTcpClient(*server) as client:
            await client.write_event(Describe().event())
            return Info.from_event(await asyncio.wait_for(client.read_event(), timeout=30))

    info = asyncio.run(describe())
    assert [model.name for model in info.wake[0].models] == ["yes", "no", "up", "down"]


def test_clients_at_once_each_get_the_events_of_detect(server, exported, test_recording, tmp_path):
    import soxr

    wav, _ = test_recording
    audio = soundfile.read(wav, dtype="float32")[0]
    expected = detect_events(wav, exported)
    assert len(expected) >= 5
    stereo = tmp_path / "stereo48k.wav"
    at48k = soxr.resample(audio, 16000, 48000)
    soundfile.write(stereo, np.stack([at48k, 0.5 * at48k], 1), 48000, subtype="PCM_16")
    expected_stereo = detect_events(stereo, exported)
    stereo_pcm = soundfile.read(stereo, dtype="int16")[0].astype("<i2").tobytes()
    quiet = pcm16(0.01 * np.random.default_rng(0).standard_normal(16000 * 5))

    async def together():
        return await asyncio.gather(
            stream_audio(*server, pcm16(audio), chunk=1024),
            stream_audio(*server, pcm16(audio), chunk=37),
            stream_audio(*server, stereo_pcm, rate=48000, channels=2, chunk=4800),
            stream_audio(*server, quiet),
        )

    whole, small_chunks, stereo_48k, silence = asyncio.run(together())
    assert whole == (expected, False)
    assert small_chunks == (expected, False)
    # the resampled audio is the file's to the bit (test_audio), but it reaches the model in other
    # chunks, whose frames batch and round differently (about 1e-6): the same events, a score may
    # differ in its last rounded digit
    found, not_detected = stereo_48k
    assert not not_detected and len(expected_stereo) >= 5
    assert [without_score(e) for e in found] == [without_score(e) for e in expected_stereo]
    scores = [e["score"] for e in found], [e["score"] for e in expected_stereo]
    assert np.allclose(*scores, atol=3e-4)
    assert silence == ([], True)


def test_bad_clients_disturb_neither_the_others_nor_the_server(server, exported, test_recording):
    wav, _ = test_recording
    audio = soundfile.read(wav, dtype="float32")[0]
    expected = detect_events(wav, exported)

    async def vanishes():
        reader, writer = await asyncio.open_connection(*server)
        writer.write(
            b'{"type": "audio-start", "data": {"rate": 16000, "width": 2, "channels": 1}}\n'
        )
        writer.write(b'{"type": "audio-chunk", "payload_length": 64000}\n' + bytes(1000))
        await writer.drain()
        writer.close()  # gone in the middle of a chunk
        return "gone"

    async def garbage():
        reader, writer = await asyncio.open_connection(*server)
        writer.write(b"\x00\xffthis is not a wyoming event\n" * 10)
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), timeout=30)  # the server hangs up
        writer.close()
        return rest

    async def other_format():
        async with AsyncTcpClient(*server) as client:
            await client.write_event(AudioStart(16000, 2, 1).event())
            await client.write_event(AudioChunk(22050, 4, 2, bytes(8 * 100)).event())
            event = await asyncio.wait_for(client.read_event(), timeout=30)
            return Error.from_event(event).text if Error.is_type(event.type) else event.type

    async def together():
        return await asyncio.gather(
            stream_audio(*server, pcm16(audio), chunk=512), vanishes(), garbage(), other_format()
        )

    good, gone, rest, error = asyncio.run(together())
    assert good == (expected, False)
    assert gone == "gone" and rest == b""
    assert "stream started as" in error
    again = asyncio.run(stream_audio(*server, pcm16(audio[: 16000 * 20])))  # still serving
    assert again[0] == [e for e in expected if e["end"] < 19.5][: len(again[0])] and again[0]


def test_the_server_stops_cleanly_on_sigterm(exported):
    process, host, port = start_server(exported)

    async def connect_and_hold():
        client = AsyncTcpClient(host, port)
        await client.connect()
        await client.write_event(AudioStart(16000, 2, 1).event())
        await client.write_event(AudioChunk(16000, 2, 1, bytes(3200)).event())
        await client.write_event(Ping(text="x").event())
        assert Pong.is_type((await asyncio.wait_for(client.read_event(), timeout=30)).type)
        process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(client.read_event(), timeout=30)  # closed: None

    assert asyncio.run(connect_and_hold()) is None
    started = time.monotonic()
    assert process.wait(timeout=20) == 0
    assert time.monotonic() - started < 10
    stderr = process.stderr.read()
    assert "Traceback" not in stderr and "serving yes, no, up, down" in stderr
