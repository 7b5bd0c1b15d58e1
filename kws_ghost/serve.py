"""``kws-ghost serve``: a Wyoming wake-word server (the protocol of Home Assistant's wake-word
services, through the ``wyoming`` package).

One model is loaded once and shared; each connection gets its own ``Detector`` (model state,
front-end samples, open events), so streams never mix. Per connection:

* ``describe`` -> ``info``: one wake model per keyword;
* ``detect`` (optional): only these keywords fire for the next stream;
* ``audio-start`` starts a stream in the format it names (any rate, 8-32 bit, any channels:
  mixed down and resampled as files are); ``audio-chunk`` in that format; ``audio-stop`` ends it;
* out: a ``detection`` for every event ``kws-ghost detect`` would give on that audio, as it is
  decided (name: the keyword; timestamp: the event's end, ms from the stream's start; context:
  start, end and score), and ``not-detected`` at the end of a stream that had none;
* ``ping`` -> ``pong``, after everything sent before it was processed (a latency probe).

A client that sends garbage, audio in a format other than its stream's, or vanishes mid-stream
gets an ``error`` event (where it can still read one) and loses its connection; the others and
the server go on. SIGTERM or SIGINT stops the server cleanly (open connections are closed).
Frames are computed in the event loop: one core serves many streams (``benchmarks/bench_serve.py``).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any, Callable, Optional
from urllib.parse import urlparse

import numpy as np

from kws_ghost.audio import MonoConverter
from kws_ghost.config import DetectorConfig
from kws_ghost.detector import Detector
from kws_ghost.errors import KwsError
from kws_ghost.pipe_audio import PCM_KINDS, decode_pcm
from kws_ghost.runtime import KeywordRuntime

PROGRAM = "kws-ghost"
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_uri(uri: str) -> tuple[str, Any]:
    """``tcp://HOST:PORT`` -> ("tcp", (host, port)); ``unix://PATH`` -> ("unix", path)."""
    parsed = urlparse(uri)
    if parsed.scheme == "tcp":
        try:
            port = parsed.port
        except ValueError:
            port = None
        if not parsed.hostname or port is None:
            raise KwsError(f"{uri}: give tcp://HOST:PORT (PORT 0: any free port)")
        return "tcp", (parsed.hostname, port)
    if parsed.scheme == "unix" and parsed.path:
        return "unix", parsed.path
    raise KwsError(f"{uri}: the server listens on tcp://HOST:PORT or unix://PATH")


class StreamFormat:
    """The audio format an ``audio-start`` names, and its conversion to the model's input."""

    def __init__(self, rate: Any, width: Any, channels: Any, model_rate: int) -> None:
        if not all(isinstance(v, int) and v > 0 for v in (rate, width, channels)):
            raise KwsError(f"audio format {rate} Hz, {width} bytes, {channels} channels")
        if width not in PCM_KINDS:
            raise KwsError(f"{width}-byte samples: send 1, 2, 3 or 4-byte PCM")
        self.key = (rate, width, channels)
        self.kind = {"kind": PCM_KINDS[width]}
        self.converter = MonoConverter(rate, model_rate)

    def samples(self, chunk: Any) -> np.ndarray:
        key = (chunk.rate, chunk.width, chunk.channels)
        if key != self.key:
            raise KwsError(f"a chunk of {key} in a stream started as {self.key} (rate, width, ch)")
        frame_bytes = self.key[1] * self.key[2]
        if len(chunk.audio) % frame_bytes:
            raise KwsError(
                f"a chunk of {len(chunk.audio)} bytes: not whole {frame_bytes}-byte frames"
            )
        samples = decode_pcm(chunk.audio, self.kind).reshape(-1, self.key[2])
        return self.converter.push(samples)

    def finish(self) -> np.ndarray:
        return self.converter.finish()


class WakeHandler:
    """One connection: Wyoming events in, detections out."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        runtime: KeywordRuntime,
        config: DetectorConfig,
        log: Log,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.runtime, self.config, self.log = runtime, config, log
        self.peer = _peer(writer)
        self.names: Optional[list[str]] = None  # from a `detect` event: the next stream's
        self.detector: Optional[Detector] = None
        self.format: Optional[StreamFormat] = None
        self.detections = 0

    async def run(self) -> None:
        from wyoming.event import async_read_event

        try:
            while True:
                event = await async_read_event(self.reader)
                if event is None:  # the end, or a line that is not a Wyoming event
                    break
                if not await self.handle(event):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            self.log(f"{PROGRAM} serve: {self.peer} went away mid-event")
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # whatever one client sends, the server and the others go on
            reason = str(exc) if isinstance(exc, KwsError) else f"bad event ({exc!r})"
            self.log(f"{PROGRAM} serve: {self.peer}: {reason}")
            await self._send_error(reason)
        finally:
            self.writer.close()

    async def handle(self, event: Any) -> bool:
        from wyoming.audio import AudioChunk, AudioStart, AudioStop
        from wyoming.info import Describe
        from wyoming.ping import Ping, Pong
        from wyoming.wake import Detect

        if Describe.is_type(event.type):
            await self._send(self.info().event())
        elif Ping.is_type(event.type):
            await self._send(Pong(text=Ping.from_event(event).text).event())
        elif Detect.is_type(event.type):
            self.names = Detect.from_event(event).names or None
        elif AudioStart.is_type(event.type):
            start = AudioStart.from_event(event)
            rate = self.runtime.frontend_config.sample_rate
            self.format = StreamFormat(start.rate, start.width, start.channels, rate)
            self.detector = Detector(
                self.runtime,
                self.config.false_alarms_per_hour,
                self.config.threshold,
                self._keywords(),
                self.config.smoothing,
                self.config.patience,
                self.config.refractory,
            )
            self.detections = 0
        elif AudioChunk.is_type(event.type):
            if self.detector is None or self.format is None:
                raise KwsError("audio-chunk before audio-start")
            await self._report(
                self.detector.process(self.format.samples(AudioChunk.from_event(event)))
            )
        elif AudioStop.is_type(event.type):
            if self.detector is None or self.format is None:
                raise KwsError("audio-stop before audio-start")
            events = self.detector.process(self.format.finish()) + self.detector.flush()
            await self._report(events)
            if not self.detections:
                from wyoming.wake import NotDetected

                await self._send(NotDetected().event())
            self.detector = self.format = None
            self.names = None
        return True

    def _keywords(self) -> Optional[list[str]]:
        wanted = self.names if self.names is not None else self.config.keywords
        if wanted is None:
            return None
        unknown = [name for name in wanted if name not in self.runtime.keyword_labels]
        if unknown:
            raise KwsError(
                f"no wake word {', '.join(unknown)} here; this model has "
                f"{', '.join(self.runtime.keyword_labels)}"
            )
        return list(wanted)

    async def _report(self, events: list[Any]) -> None:
        from wyoming.wake import Detection

        for found in events:
            self.detections += 1
            context = {"start": round(found.start, 3), "end": round(found.end, 3)}
            context["score"] = round(found.score, 4)
            detection = Detection(found.keyword, int(round(found.end * 1000)), context=context)
            await self._send(detection.event())

    def info(self) -> Any:
        from wyoming.info import Attribution, Info, WakeModel, WakeProgram

        from kws_ghost import __version__

        attribution = Attribution(name=PROGRAM, url="https://github.com/kws-ghost/kws-ghost")
        source = f"{self.runtime.model_config.arch}, {self.runtime.path.name}"
        models = [
            WakeModel(
                name=keyword,
                attribution=attribution,
                installed=True,
                description=f"{keyword} ({source})",
                version=__version__,
                languages=["en"],
                phrase=keyword,
            )
            for keyword in self.runtime.keyword_labels
        ]
        program = WakeProgram(
            name=PROGRAM,
            attribution=attribution,
            installed=True,
            description="GhostRNN keyword spotting",
            version=__version__,
            models=models,
        )
        return Info(wake=[program])

    async def _send(self, event: Any) -> None:
        from wyoming.event import async_write_event

        await async_write_event(event, self.writer)

    async def _send_error(self, text: str) -> None:
        from wyoming.error import Error

        try:
            await self._send(Error(text=text, code="kws-ghost").event())
        except (ConnectionError, RuntimeError):
            pass


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "a client"


async def serve(
    uri: str,
    runtime: KeywordRuntime,
    config: DetectorConfig,
    ready: Optional[Callable[[str], None]] = None,
    log: Log = _stderr,
) -> None:
    """Serve until SIGTERM or SIGINT. ``ready(address)`` is called once listening (with the
    port the OS chose for ``tcp://HOST:0``)."""
    kind, where = parse_uri(uri)
    handlers: set[asyncio.Task] = set()

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await WakeHandler(reader, writer, runtime, config, log).run()
        finally:
            handlers.discard(task)

    try:
        if kind == "tcp":
            server = await asyncio.start_server(connected, *where)
            host, port = server.sockets[0].getsockname()[:2]
            address = f"tcp://{host}:{port}"
        else:
            server = await asyncio.start_unix_server(connected, where)
            address = f"unix://{where}"
    except OSError as exc:
        raise KwsError(f"{uri}: cannot listen ({exc.strerror or exc})") from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if ready is not None:
            ready(address)
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        server.close()
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
