"""Front-end throughput: the batched torch MFCC front-end vs librosa one clip at a time.

Both compute the same features (16 kHz, 30 ms Hann window, 10 ms hop, n_fft 512, 40 Slaney mel bands
20-7600 Hz, 10 log10 with a 1e-6 floor, 40 orthonormal DCT-II coefficients) from the same one-second
clips, in the same process. Rounds alternate torch and librosa so that load from other processes
hits both alike; the speedup is the median over rounds of the per-round ratio, and the ratio of
the best rounds is reported too (other processes only ever slow a round down), as is the ratio of
CPU time per clip, which other processes barely disturb. With more than one CPU a second phase
repeats the comparison with torch and numpy's BLAS both on one thread: that CPU-time ratio is the
steadiest number.

    .venv/bin/python benchmarks/bench_frontend.py [--batch 256] [--rounds 7] [--out PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kws_ghost.config import FrontendConfig  # noqa: E402
from kws_ghost.fileio import write_json  # noqa: E402
from kws_ghost.frontend import librosa_features  # noqa: E402


def threadpool_limits(threads: int) -> Any:
    """Limit numpy's BLAS (librosa's mel product) to ``threads``, as torch is limited."""
    try:
        import threadpoolctl
    except ImportError:  # librosa pulls it in via scikit-learn; without it, leave BLAS alone
        return contextlib.nullcontext()
    return threadpoolctl.threadpool_limits(limits=threads, user_api="blas")


def librosa_mfcc(clip: np.ndarray, config: FrontendConfig) -> np.ndarray:
    """librosa.feature.mfcc with the front-end's settings, as a user would call it per clip."""
    return librosa_features(clip, config)


def _timed(func: Callable[[], Any]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process, all its threads) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    func()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="clips per torch batch")
    parser.add_argument("--librosa-clips", type=int, default=64, help="clips per librosa round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--torch-repeats", type=int, default=4, help="batches per torch round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "frontend.json"))
    args = parser.parse_args(argv)

    import torch

    from kws_ghost.features import Frontend

    config = FrontendConfig()
    rng = np.random.default_rng(args.seed)
    # Noise with a tone: content does not change the cost of an FFT, but keeps values realistic.
    t = np.arange(config.clip_samples) / config.sample_rate
    clips = (0.1 * rng.standard_normal((args.batch, config.clip_samples))).astype(np.float32)
    clips += (0.3 * np.sin(2 * np.pi * rng.uniform(100, 3000, (args.batch, 1)) * t)).astype(
        np.float32
    )
    batch = torch.from_numpy(clips)
    frontend = Frontend(config).eval()
    default_threads = torch.get_num_threads()
    n_librosa = min(args.librosa_clips, args.batch)

    def run_torch() -> None:
        with torch.inference_mode():
            for _ in range(args.torch_repeats):
                frontend(batch)

    def run_librosa() -> None:
        for clip in clips[:n_librosa]:
            librosa_mfcc(clip, config)

    # Warm-up (imports, first-call allocations, librosa's lazy loading) and an agreement check.
    with torch.inference_mode():
        ours = frontend(batch[:4]).numpy()
    theirs = np.stack([librosa_mfcc(clip, config) for clip in clips[:4]])
    max_abs_diff = float(np.abs(ours - theirs).max())
    run_librosa()

    def phase(threads: int) -> dict[str, Any]:
        """Alternate torch and librosa rounds; torch and numpy's BLAS on ``threads`` threads."""
        with threadpool_limits(threads):
            return timed_rounds(threads)

    def timed_rounds(threads: int) -> dict[str, Any]:
        torch.set_num_threads(threads)
        run_torch()  # (re)build the thread pool outside the timed rounds
        run_librosa()
        rounds = []
        torch_clips = args.batch * args.torch_repeats
        for _ in range(args.rounds):
            torch_s, torch_cpu = _timed(run_torch)
            librosa_s, librosa_cpu = _timed(run_librosa)
            rounds.append(
                {
                    "torch_clips_per_s": torch_clips / torch_s,
                    "librosa_clips_per_s": n_librosa / librosa_s,
                    "torch_clips_per_cpu_s": torch_clips / torch_cpu,
                    "librosa_clips_per_cpu_s": n_librosa / librosa_cpu,
                }
            )
        ratios = [r["torch_clips_per_s"] / r["librosa_clips_per_s"] for r in rounds]
        cpu_ratios = [r["torch_clips_per_cpu_s"] / r["librosa_clips_per_cpu_s"] for r in rounds]
        torch_best = max(r["torch_clips_per_s"] for r in rounds)
        librosa_best = max(r["librosa_clips_per_s"] for r in rounds)
        return {
            "torch_threads": threads,
            "torch_clips_per_s": statistics.median(r["torch_clips_per_s"] for r in rounds),
            "librosa_clips_per_s": statistics.median(r["librosa_clips_per_s"] for r in rounds),
            # median of the per-round ratios: both sides of a ratio saw about the same load
            "speedup": statistics.median(ratios),
            "speedup_min": min(ratios),
            "speedup_max": max(ratios),
            # best round of each (timeit's convention: other processes only slow a run down)
            "best_torch_clips_per_s": torch_best,
            "best_librosa_clips_per_s": librosa_best,
            "speedup_best": torch_best / librosa_best,
            # Work per clip in CPU seconds: other processes barely change it, unlike wall time.
            # With several torch threads it counts every thread (and OpenMP's spin-waiting).
            "cpu_speedup": statistics.median(cpu_ratios),
            "per_round": rounds,
        }

    load_before = os.getloadavg()
    phases = [phase(default_threads)]
    if default_threads > 1:
        phases.append(phase(1))
    torch.set_num_threads(default_threads)
    load_after = os.getloadavg()

    main_phase = phases[0]
    result = {
        "benchmark": "frontend",
        "what": "MFCC of 1 s clips at 16 kHz: batched torch Frontend vs librosa one clip at a time",
        "frontend_config": config.__dict__,
        "batch": args.batch,
        "torch_repeats_per_round": args.torch_repeats,
        "librosa_clips_per_round": n_librosa,
        "rounds": args.rounds,
        "torch_clips_per_s": main_phase["torch_clips_per_s"],
        "librosa_clips_per_s": main_phase["librosa_clips_per_s"],
        "speedup": main_phase["speedup"],
        "speedup_best": main_phase["speedup_best"],
        "cpu_speedup": main_phase["cpu_speedup"],
        "speedup_1thread": phases[-1]["speedup"],
        "cpu_speedup_1thread": phases[-1]["cpu_speedup"],
        "target_speedup": 20.0,
        "max_abs_diff_vs_librosa_db": max_abs_diff,
        "phases": phases,
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(),
            "torch_threads": default_threads,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "librosa": __import__("librosa").__version__,
        },
    }
    write_json(args.out, result)
    for item in phases:
        print(
            f"torch batched ({args.batch} clips, {item['torch_threads']} thread(s)): "
            f"{item['torch_clips_per_s']:,.0f} clips/s; librosa one clip at a time: "
            f"{item['librosa_clips_per_s']:,.0f} clips/s; speedup {item['speedup']:.1f}x "
            f"(rounds {item['speedup_min']:.1f}-{item['speedup_max']:.1f}x, best rounds "
            f"{item['speedup_best']:.1f}x); CPU time per clip: {item['cpu_speedup']:.1f}x less"
        )
    print(
        f"max |torch - librosa| {max_abs_diff:.2g} dB; load average {load_before[0]:.1f} -> "
        f"{load_after[0]:.1f} on {os.cpu_count()} CPUs; wrote {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
