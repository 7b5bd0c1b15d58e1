"""Load on `kws-ghost serve`: how many concurrent real-time Wyoming streams one server process
keeps up with on one core, and the latency of each chunk (median, 99th percentile).

    python benchmarks/bench_serve.py [--model m.onnx] [--seconds 12] [--budget 240]
                                     [--out benchmarks/results/serve.json]

The server (the ONNX model; default: the default GhostGRU with random weights, exported here:
the cost of a frame does not depend on the weights) runs pinned to CPU 0; the clients, in this
process, on CPU 1, over 127.0.0.1. Each client streams 16 kHz 16-bit mono in 64 ms chunks at
real time, each chunk followed by a Wyoming `ping`: the server answers it after the chunk, so the
time from sending a chunk to its `pong` is the chunk's latency, queueing behind the other
streams included. Levels of 10, 20, 40, ... clients run for --seconds each until one falls
behind (99th percentile over 100 ms) or the time budget is spent. Nothing else should run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from kws_ghost.fileio import write_json

CHUNK = 1024  # samples: 64 ms at 16 kHz (Home Assistant's satellites send 1024-sample chunks)
RATE = 16000
LIMIT_P99 = 0.100
LEVELS = [10, 20, 40, 60, 80, 100, 120, 160, 200, 240, 320]


def default_model(root: Path) -> Path:
    import torch

    from kws_ghost.checkpoint import save_checkpoint
    from kws_ghost.config import FrontendConfig, ModelConfig
    from kws_ghost.export import export_checkpoint
    from kws_ghost.models import build_model

    labels = ["_silence_", "_unknown_", "yes", "no", "up", "down", "left", "right", "on", "off"]
    labels += ["stop", "go"]
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=len(labels)))
    save_checkpoint(root / "m.pt", model, FrontendConfig(), labels)
    export_checkpoint(root / "m.pt", root / "m.onnx")
    return root / "m.onnx"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def client(host: str, port: int, audio: bytes, seconds: float, offset: float) -> list[float]:
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.ping import Ping, Pong

    latencies: list[float] = []
    sent: dict[str, float] = {}
    async with AsyncTcpClient(host, port) as connection:

        async def read() -> None:
            while True:
                event = await connection.read_event()
                if event is None:
                    return
                if Pong.is_type(event.type):
                    text = Pong.from_event(event).text or ""
                    latencies.append(time.perf_counter() - sent.pop(text))
                    if text == "end":
                        return

        reader = asyncio.create_task(read())
        await asyncio.sleep(offset)  # spread the clients over a chunk's period
        await connection.write_event(AudioStart(RATE, 2, 1).event())
        start = time.perf_counter()
        chunks = int(seconds * RATE / CHUNK)
        for k in range(chunks):
            await asyncio.sleep(max(0.0, start + k * CHUNK / RATE - time.perf_counter()))
            piece = audio[(k * CHUNK * 2) % (len(audio) - CHUNK * 2) :][: CHUNK * 2]
            await connection.write_event(AudioChunk(RATE, 2, 1, piece).event())
            sent[str(k)] = time.perf_counter()
            await connection.write_event(Ping(text=str(k)).event())
        await connection.write_event(AudioStop().event())
        sent["end"] = time.perf_counter()
        await connection.write_event(Ping(text="end").event())
        await asyncio.wait_for(reader, timeout=120)
    return latencies[:-1]  # the chunks' own


async def level(host: str, port: int, clients: int, seconds: float, audio: bytes) -> list[float]:
    period = CHUNK / RATE
    runs = [client(host, port, audio, seconds, period * i / clients) for i in range(clients)]
    return [x for latencies in await asyncio.gather(*runs) for x in latencies]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=12.0, help="Per level.")
    parser.add_argument("--budget", type=float, default=240.0, help="Seconds for all levels.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve.json"))
    args = parser.parse_args()
    speech_like = np.random.default_rng(0).standard_normal(RATE * 10) * 0.05
    audio = np.clip(np.round(speech_like * 32768), -32768, 32767).astype("<i2").tobytes()
    with tempfile.TemporaryDirectory(prefix="kws-serve-") as tmp:
        model = args.model or default_model(Path(tmp))
        cores = sorted(os.sched_getaffinity(0))
        server_core, client_cores = cores[0], cores[1:] or cores
        server = subprocess.Popen(
            ["taskset", "-c", str(server_core), sys.executable, "-m", "kws_ghost", "serve"]
            + ["--uri", "tcp://127.0.0.1:0", "--model", str(model), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        try:
            uri = json.loads(server.stdout.readline())["uri"]
            host, port = uri.removeprefix("tcp://").rsplit(":", 1)
            os.sched_setaffinity(0, client_cores)
            results, began = [], time.perf_counter()
            for clients in LEVELS:
                if time.perf_counter() - began + args.seconds * 1.5 > args.budget:
                    break
                cpu, wall = cpu_seconds(server.pid), time.perf_counter()
                latencies = asyncio.run(level(host, int(port), clients, args.seconds, audio))
                cpu, wall = cpu_seconds(server.pid) - cpu, time.perf_counter() - wall
                p50, p99 = (float(np.percentile(latencies, q)) for q in (50, 99))
                row = {
                    "clients": clients,
                    "chunks": len(latencies),
                    "latency_p50_ms": round(1000 * p50, 2),
                    "latency_p99_ms": round(1000 * p99, 2),
                    "latency_max_ms": round(1000 * max(latencies), 2),
                    "server_cpu_share": round(cpu / wall, 3),
                    "keeps_up": p99 < LIMIT_P99,
                }
                results.append(row)
                print(json.dumps(row), flush=True)
                if not row["keeps_up"]:
                    break
        finally:
            server.terminate()
            server.wait(timeout=30)
    kept = [r["clients"] for r in results if r["keeps_up"]]
    record = {
        "benchmark": "serve",
        "what": "concurrent real-time Wyoming streams one `kws-ghost serve` process keeps up "
        "with on one core (ONNX model), chunk latency = chunk sent -> pong after it",
        "model": str(args.model or "default GhostGRU (random weights), exported to ONNX"),
        "chunk_samples": CHUNK,
        "seconds_per_level": args.seconds,
        "latency_limit_p99_ms": 1000 * LIMIT_P99,
        "levels": results,
        "max_clients_kept_up": max(kept) if kept else 0,
        "floor_clients": 20,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
    }
    write_json(args.out, record)
    print(f"{record['max_clients_kept_up']} real-time streams on one core; wrote {args.out}")


if __name__ == "__main__":
    main()
