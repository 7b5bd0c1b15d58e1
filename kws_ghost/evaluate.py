"""Clip evaluation of a model on a corpus split: accuracy, per-class P/R/F1, confusion matrix.

The model is whatever ``kws_ghost.runtime.load_model`` loads (a checkpoint, or an exported ONNX
step model, which then runs without torch); clip scores come from its frame logits by its
pooling (``clip_scores``). The split is built exactly as in training (same seed, same unknown and
silence sampling); an unreadable clip is skipped with a warning that names it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from kws_ghost.errors import KwsError, print_stderr


def clip_predictions(
    runtime: Any, batches: Iterable[Any], frontend: Any = None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(clip scores [N, C], targets [N], indices of unreadable items) over ``batches`` of
    ``(audio [B, samples], label [B], failed [B])``, as ``ClipDataset`` yields them. Features
    come from ``frontend`` (the torch ``Frontend``, batched) or the numpy front-end."""
    from kws_ghost.frontend import compute_features

    scores, targets, failed = [], [], []
    for audio, label, bad in batches:
        bad, label = np.asarray(bad), np.asarray(label)
        failed += [int(i) for i in bad if i >= 0]
        keep = bad < 0
        if frontend is not None:
            import torch

            with torch.inference_mode():
                features = frontend(torch.as_tensor(audio)[torch.as_tensor(keep)]).cpu().numpy()
        else:
            fe = runtime.frontend_config
            features = np.stack([compute_features(a, fe) for a in np.asarray(audio)[keep]])
        if len(features):
            scores.append(runtime.clip_logits(features))
            targets.append(label[keep])
    if not scores:
        return np.zeros((0, len(runtime.labels)), np.float32), np.zeros(0, np.int64), failed
    return np.concatenate(scores), np.concatenate(targets).astype(np.int64), failed


def classification_report(
    predicted: np.ndarray, target: np.ndarray, labels: Sequence[str]
) -> dict[str, Any]:
    """Accuracy (a fraction), per-class precision/recall/F1/support, macro F1 and the confusion
    matrix (rows: true class, columns: predicted), by scikit-learn."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    classes = list(range(len(labels)))
    confusion = confusion_matrix(target, predicted, labels=classes)
    precision, recall, f1, support = precision_recall_fscore_support(
        target, predicted, labels=classes, zero_division=0
    )
    per_class = {
        label: {
            "precision": round(float(precision[i]), 6),
            "recall": round(float(recall[i]), 6),
            "f1": round(float(f1[i]), 6),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    total = int(confusion.sum())
    present = [c["f1"] for c in per_class.values() if c["support"]]
    return {
        "accuracy": float(np.trace(confusion) / total) if total else 0.0,
        "count": total,
        "macro_f1": float(np.mean(present)) if present else 0.0,
        "per_class": per_class,
        "labels": list(labels),
        "confusion": confusion.tolist(),
    }


def evaluate_model(
    model_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    data_dir: Optional[str | os.PathLike[str]] = None,
    split: str = "testing",
    batch_size: int = 256,
    progress: bool = False,
    warn: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """Score a model file (``.pt`` or ``.onnx``) on a split of a corpus (default: the corpus it
    was trained on, where it still is). Several files score as one ensemble, the mean of their
    frame logits, on the split built as for the first."""
    from tqdm import tqdm

    from kws_ghost.data import (
        ClipDataset,
        UnreadableClips,
        build_items,
        canonical_split,
        scan_corpus,
    )
    from kws_ghost.runtime import load_models

    warn = warn or print_stderr
    split = canonical_split(split)
    paths = [model_path] if isinstance(model_path, (str, os.PathLike)) else list(model_path)
    runtime = load_models(paths)
    if data_dir is None:
        data_dir = runtime.corpus()
        if data_dir is None:
            raise KwsError(
                f"--data is required: {paths[0]} does not record a corpus that exists here "
                "(give the Speech Commands-layout folder to score it on)"
            )
    fe = runtime.frontend_config
    train = runtime.train_config
    corpus = scan_corpus(data_dir)
    items = build_items(
        corpus,
        runtime.labels,
        split,
        seed=int(train.get("seed", 0)),
        fraction=float(train.get("extra_fraction", 0.1)),
    )
    if not items:
        raise KwsError(f"{data_dir}: no {split} clips for this model's labels")
    dataset = ClipDataset(corpus, items, fe.clip_samples, fe.sample_rate, None)
    unreadable = UnreadableClips(dataset, warn)

    def batches() -> Iterable[Any]:
        bar = tqdm(total=len(dataset), desc="evaluating", unit="clip", disable=not progress)
        with bar:
            for start in range(0, len(dataset), batch_size):
                rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
                unreadable.add(r[2] for r in rows)
                bar.update(len(rows))
                yield tuple(np.stack([r[k] for r in rows]) for k in range(3))

    scores, targets, _ = clip_predictions(runtime, batches())
    report = classification_report(scores.argmax(1), targets, runtime.labels)
    report.update(
        {
            "model": " + ".join(str(path) for path in paths),
            "models": [str(path) for path in paths],
            "data": str(data_dir),
            "split": split,
            "params": runtime.params,
            "skipped_unreadable": len(unreadable.failed),
        }
    )
    return report


def format_report(report: dict[str, Any]) -> str:
    """Plain-text summary: headline, per-class table, confusion matrix."""
    labels = report["labels"]
    names = " + ".join(Path(m).name for m in report.get("models") or [report.get("model", "model")])
    lines = [
        f"{names} on {report.get('split', '?')} split of {report.get('data', '?')}: "
        f"accuracy {report['accuracy']:.4f} ({report['count']} clips), "
        f"macro F1 {report['macro_f1']:.4f}, {report.get('params', 0):,} parameters",
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

    from kws_ghost.fileio import PNG_METADATA, atomic_path

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
    with atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png", metadata=PNG_METADATA)
    plt.close(fig)
