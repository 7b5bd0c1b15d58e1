"""Where a default training run's time goes, per training sequence, one thread, run alone.

    python benchmarks/bench_train_time.py --data /tmp/rd/real-dev

Measures, on the default GhostGRU and 3 s training sequences of ``--data``: building a sequence
(reading clips, laying words over noise: the data worker's share), the front-end's features
(also with VTLP's warped mel filters, one per sequence), and one optimiser step (forward,
backward, AdamW) at batch 16, 32 and 64, split into the recurrent scan's forward and backward
and the rest by torch's profiler. Validation's time is in
every run's ``metrics.jsonl`` (``val_seconds``). Writes ``benchmarks/results/train_time.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def best_of(function, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/real-dev"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train_time.json"))
    args = parser.parse_args()

    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    from kws_ghost.build import build_data, build_network
    from kws_ghost.config import FrontendConfig, ModelConfig, TrainConfig
    from kws_ghost.features import Frontend

    torch.set_num_threads(1)
    config = TrainConfig(data=str(args.data.resolve()), workers=0)
    frontend_config = FrontendConfig()
    data = build_data(config, frontend_config, None, lambda message: None, True)
    sequences = data.train_set
    count = 64
    started = time.perf_counter()
    batch = [sequences[(0, i)] for i in range(count)]
    data_ms = (time.perf_counter() - started) / count * 1000
    audio = torch.as_tensor(np.stack([b[0] for b in batch]))
    frontend = Frontend(frontend_config)
    warp = 1 + config.augment.vtlp * (2 * torch.rand(count) - 1)  # as training draws them
    with torch.no_grad():
        features_ms = best_of(lambda: frontend(audio)) / count * 1000
        vtlp_ms = best_of(lambda: frontend(audio, warp)) / count * 1000
        features = frontend(audio)

    model = build_network(ModelConfig(hidden=128, ratio=2), frontend_config, data, config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)

    def step(rows: int) -> None:
        logits, _ = model(features[:rows])
        loss = logits.logsumexp(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    steps = {}
    for rows in (16, 32, 64):
        step(rows)  # warm-up
        steps[rows] = best_of(lambda rows=rows: step(rows)) / rows * 1000
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        step(64)
    events = {e.key: e for e in profiler.key_averages()}
    total = sum(e.self_cpu_time_total for e in events.values())
    scan_forward = sum(e.cpu_time_total for k, e in events.items() if k == "GhostGRUScan")
    scan_backward = sum(e.cpu_time_total for k, e in events.items() if k == "GhostGRUScanBackward")

    per_epoch = len(sequences)
    result = {
        "sequences_per_epoch": per_epoch,
        "data_ms_per_sequence": round(data_ms, 2),
        "features_ms_per_sequence": round(features_ms, 2),
        "features_ms_per_sequence_vtlp": round(vtlp_ms, 2),
        "step_ms_per_sequence": {str(k): round(v, 2) for k, v in steps.items()},
        "batch64_step_share": {
            "scan_forward": round(scan_forward / total, 3),
            "scan_backward": round(scan_backward / total, 3),
            "rest": round(1 - (scan_forward + scan_backward) / total, 3),
        },
        "epoch_seconds_estimate": {
            str(k): round(per_epoch * (v + features_ms) / 1000, 1) for k, v in steps.items()
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
