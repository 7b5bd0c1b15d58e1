"""State redundancy of a trained recurrent model, the observation GhostRNN rests on.

For each recurrent layer, the outputs over every time step of a split's clips form a matrix
[frames, H]. Its singular values say how many directions carry the states' energy (sum of squared
singular values; the matrix is not centred, as in the paper's SVD of hidden states): if k99
components carry 99%, a GhostRNN of ratio about H / k99 can represent the same states. The mean
absolute cosine similarity between hidden dimensions (columns) says how alike the units are.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np

from kws_ghost.errors import KwsError

ENERGY_LEVELS = (0.90, 0.95, 0.99)


def components_for(energy: np.ndarray, level: float) -> int:
    """Smallest k whose first k components carry ``level`` of the cumulative ``energy``."""
    return int(np.searchsorted(energy, level - 1e-12) + 1)


def state_redundancy(states: np.ndarray) -> dict[str, Any]:
    """Spectrum figures of one layer's states [frames, H]."""
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or states.shape[0] < 2:
        raise KwsError("need a [frames, H] matrix with at least two frames")
    width = states.shape[1]
    singular = np.linalg.svd(states, compute_uv=False)
    power = singular**2
    energy = np.cumsum(power) / power.sum() if power.sum() > 0 else np.ones_like(power)
    counts = {f"k{int(level * 100)}": components_for(energy, level) for level in ENERGY_LEVELS}
    norms = np.linalg.norm(states, axis=0)
    unit = states / np.where(norms > 0, norms, 1.0)
    similarity = np.abs(unit.T @ unit)
    off_diagonal = similarity[~np.eye(width, dtype=bool)]
    return {
        "width": width,
        "frames": int(states.shape[0]),
        **counts,
        "suggested_ratio": round(width / counts["k99"], 2),
        "mean_abs_cosine": float(off_diagonal.mean()) if width > 1 else 1.0,
        "singular_values": [float(s) for s in singular],
        "cumulative_energy": [float(e) for e in energy],
        "similarity": similarity.astype(np.float32),
    }


def collect_states(model: Any, features: Any, batch_size: int = 128) -> list[np.ndarray]:
    """Each recurrent layer's outputs over all frames of ``features`` [N, T, F]: [N*T, H] each."""
    import torch

    model.eval()
    per_layer: list[list[np.ndarray]] = [[] for _ in model.rnn.layers]
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            x = model.normalize(features[start : start + batch_size])
            for i, layer in enumerate(model.rnn.layers):
                x, _ = layer(x)
                per_layer[i].append(x.reshape(-1, x.shape[-1]).numpy())
    return [np.concatenate(chunks) for chunks in per_layer]


def analyze_checkpoint(
    checkpoint_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    split: str = "validation",
    max_clips: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Redundancy figures per recurrent layer of a checkpoint, over up to ``max_clips`` clips."""
    import torch

    from kws_ghost.checkpoint import load_checkpoint
    from kws_ghost.data import ClipDataset, build_items, canonical_split, scan_corpus
    from kws_ghost.features import Frontend

    split = canonical_split(split)
    checkpoint = load_checkpoint(checkpoint_path)
    model = checkpoint.build_model()
    corpus = scan_corpus(data_dir)
    items = build_items(corpus, checkpoint.labels, split, seed)
    if not items:
        raise KwsError(f"{data_dir}: no {split} clips for this model's labels")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(items), size=min(max_clips, len(items)), replace=False))
    fe = checkpoint.frontend_config
    dataset = ClipDataset(corpus, [items[i] for i in chosen], fe.clip_samples, fe.sample_rate)
    audio = torch.from_numpy(np.stack([dataset[i][0] for i in range(len(dataset))]))
    with torch.inference_mode():
        features = Frontend(fe)(audio)
    layers = [state_redundancy(s) for s in collect_states(model, features)]
    return {
        "checkpoint": str(checkpoint_path),
        "model": checkpoint.model_config.arch,
        "hidden": checkpoint.model_config.hidden,
        "intrinsic": checkpoint.model_config.intrinsic,
        "split": split,
        "clips": len(dataset),
        "layers": layers,
    }


def public_report(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the similarity matrices (for JSON)."""
    return {
        **report,
        "layers": [
            {k: v for k, v in layer.items() if k != "similarity"} for layer in report["layers"]
        ],
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{report['model']} (H {report['hidden']}) on {report['clips']} {report['split']} clips:",
        f"{'layer':>5} {'frames':>8} {'k90':>5} {'k95':>5} {'k99':>5} {'|cos|':>6} {'H/k99':>6}",
    ]
    for i, layer in enumerate(report["layers"], 1):
        lines.append(
            f"{i:>5} {layer['frames']:>8} {layer['k90']:>5} {layer['k95']:>5} {layer['k99']:>5} "
            f"{layer['mean_abs_cosine']:>6.3f} {layer['suggested_ratio']:>6.2f}"
        )
    return "\n".join(lines)


def plot_report(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Cumulative energy per layer (left) and each layer's |cosine| similarity matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kws_ghost.fileio import PNG_METADATA, atomic_path, check_png_output

    check_png_output(path)
    layers: Sequence[dict[str, Any]] = report["layers"]
    fig, axes = plt.subplots(1, 1 + len(layers), figsize=(4.2 * (1 + len(layers)), 4))
    curve = axes[0]
    for i, layer in enumerate(layers, 1):
        energy = layer["cumulative_energy"]
        curve.plot(range(1, len(energy) + 1), energy, label=f"layer {i} (k99 {layer['k99']})")
    for level in ENERGY_LEVELS:
        curve.axhline(level, color="grey", lw=0.6, ls="--")
    curve.set_xlabel("components")
    curve.set_ylabel("cumulative energy")
    curve.set_ylim(0, 1.01)
    curve.legend(loc="lower right")
    curve.set_title(f"{report['model']} H {report['hidden']}")
    image: Optional[Any] = None
    for ax, (i, layer) in zip(axes[1:], enumerate(layers, 1)):
        image = ax.imshow(layer["similarity"], cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"layer {i}: |cos| between units (mean {layer['mean_abs_cosine']:.2f})")
        ax.set_xlabel("unit")
        ax.set_ylabel("unit")
    if image is not None:
        fig.colorbar(image, ax=axes[-1], fraction=0.046)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png", metadata=PNG_METADATA)
    plt.close(fig)
