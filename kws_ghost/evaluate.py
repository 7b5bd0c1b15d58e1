"""Evaluation of a checkpoint on a corpus split: accuracy, per-class P/R/F1, confusion matrix."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from kws_ghost.errors import KwsError


def predict(
    logits_of: Callable[[Any], Any], frontend: Any, loader: Any, device: Any, progress: bool = False
) -> tuple:
    """Logits [N, C] and targets [N] (CPU tensors) for every batch of ``loader``;
    ``logits_of(features)`` is the model (a PyTorch module's logits or an ONNX session's)."""
    import torch
    from tqdm import tqdm

    all_logits, all_targets = [], []
    with torch.inference_mode():
        for audio, target in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
            logits = logits_of(frontend(audio.to(device)))
            all_logits.append(torch.as_tensor(logits).float().cpu())
            all_targets.append(target)
    if not all_logits:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(all_logits), torch.cat(all_targets)


def model_for_evaluation(path: str | os.PathLike[str], device: Any) -> tuple:
    """(logits function, labels, front-end config, train config, parameter count) of a
    checkpoint, or of an exported ``.onnx`` model (run with onnxruntime on the CPU)."""
    if str(path).endswith(".onnx"):
        import torch

        from kws_ghost.export import OnnxKeywordModel

        onnx_model = OnnxKeywordModel(path)

        def onnx_logits(features: Any) -> Any:
            return torch.from_numpy(onnx_model.clip_logits(features.cpu().numpy()))

        from kws_ghost.models import build_model

        params = build_model(onnx_model.model_config).num_params()
        return onnx_logits, onnx_model.labels, onnx_model.frontend_config, {}, params

    from kws_ghost.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    model = checkpoint.build_model(device)
    train_config = checkpoint.extra.get("train_config", {})

    def torch_logits(features: Any) -> Any:
        return model(features)[0]

    return (
        torch_logits,
        checkpoint.labels,
        checkpoint.frontend_config,
        train_config,
        model.num_params(),
    )


def confusion_matrix(predicted: np.ndarray, target: np.ndarray, classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(target), np.asarray(predicted)), 1)
    return matrix


def classification_report(confusion: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy (a fraction), per-class precision/recall/F1/support, macro F1."""
    confusion = np.asarray(confusion)
    true_positive = np.diag(confusion).astype(float)
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    per_class = {}
    for i, label in enumerate(labels):
        precision = true_positive[i] / predicted[i] if predicted[i] else 0.0
        recall = true_positive[i] / support[i] if support[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": round(precision, 6),
            "recall": round(recall, 6),
            "f1": round(f1, 6),
            "support": int(support[i]),
        }
    total = int(confusion.sum())
    present = [c for c in per_class.values() if c["support"]]
    return {
        "accuracy": float(true_positive.sum() / total) if total else 0.0,
        "count": total,
        "macro_f1": float(np.mean([c["f1"] for c in present])) if present else 0.0,
        "per_class": per_class,
        "labels": list(labels),
        "confusion": confusion.tolist(),
    }


def evaluate_checkpoint(
    checkpoint_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    split: str = "testing",
    batch_size: int = 256,
    device: str = "auto",
    workers: int = -1,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a checkpoint on a split of a corpus, with the split built as in training."""
    import torch

    from kws_ghost.data import ClipDataset, EpochSampler, build_items, canonical_split, scan_corpus
    from kws_ghost.features import Frontend
    from kws_ghost.train import _worker_init, pick_device

    split = canonical_split(split)
    torch_device = pick_device(device)
    logits_of, labels, fe, train_config, params = model_for_evaluation(
        checkpoint_path, torch_device
    )
    frontend = Frontend(fe).to(torch_device)
    corpus = scan_corpus(data_dir)
    items = build_items(
        corpus,
        labels,
        split,
        seed=int(train_config.get("seed", 0)),
        fraction=float(train_config.get("extra_fraction", 0.1)),
    )
    if not items:
        raise KwsError(f"{data_dir}: no {split} clips for this model's labels")
    dataset = ClipDataset(corpus, items, fe.clip_samples, fe.sample_rate, None)
    if workers < 0:
        workers = max(0, min(4, (os.cpu_count() or 1) - 1))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), shuffle=False, even=False),
        num_workers=workers,
        worker_init_fn=_worker_init,
    )
    logits, targets = predict(logits_of, frontend, loader, torch_device, progress)
    confusion = confusion_matrix(logits.argmax(1).numpy(), targets.numpy(), len(labels))
    report = classification_report(confusion, labels)
    report.update(
        {
            "checkpoint": str(checkpoint_path),
            "data": str(data_dir),
            "split": split,
            "model": Path(checkpoint_path).name,
            "params": params,
        }
    )
    return report


def format_report(report: dict[str, Any]) -> str:
    """Plain-text summary: headline, per-class table, confusion matrix."""
    labels = report["labels"]
    lines = [
        f"{report.get('model', 'model')} on {report.get('split', '?')} split of "
        f"{report.get('data', '?')}: accuracy {report['accuracy']:.4f} "
        f"({report['count']} clips), macro F1 {report['macro_f1']:.4f}, "
        f"{report.get('params', 0):,} parameters",
        "",
        f"{'class':<12} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}",
    ]
    for label in labels:
        c = report["per_class"][label]
        lines.append(
            f"{label:<12} {c['precision']:>9.3f} {c['recall']:>7.3f} {c['f1']:>7.3f} "
            f"{c['support']:>8d}"
        )
    lines += ["", "confusion (rows: true, columns: predicted)"]
    short = [label[:6] for label in labels]
    width = max(6, max(len(str(v)) for row in report["confusion"] for v in row))
    lines.append(" " * 12 + " ".join(s.rjust(width) for s in short))
    for label, row in zip(labels, report["confusion"]):
        lines.append(f"{label:<12}" + " ".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


def plot_confusion(
    report: dict[str, Any], path: str | os.PathLike[str], title: Optional[str] = None
) -> None:
    """Save the confusion matrix (row-normalised colours, counts written in) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kws_ghost.fileio import atomic_path

    labels = report["labels"]
    confusion = np.asarray(report["confusion"], dtype=float)
    rows = confusion.sum(1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    size = max(4.0, 0.55 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            if confusion[i, j]:
                colour = "white" if normalised[i, j] > 0.5 else "black"
                ax.text(
                    j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7, color=colour
                )
    ax.set_title(title or f"accuracy {report['accuracy']:.3f} ({report['count']} clips)")
    fig.tight_layout()
    target = Path(path)
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
