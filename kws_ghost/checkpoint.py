"""Checkpoints: one ``torch.save`` dict of plain data, loaded with ``weights_only=True`` so a model
file cannot run code. It carries everything needed to rebuild the model and its front-end."""

from __future__ import annotations

import dataclasses
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Optional

from kws_ghost import __version__
from kws_ghost.config import FrontendConfig, ModelConfig, from_dict, to_dict
from kws_ghost.errors import KwsError
from kws_ghost.fileio import atomic_path

FORMAT = "kws-ghost-checkpoint"
FORMAT_VERSION = 1


@dataclasses.dataclass
class Checkpoint:
    """A loaded checkpoint. ``extra`` holds training state, metrics and anything else saved."""

    path: Path
    model_config: ModelConfig
    frontend_config: FrontendConfig
    labels: list[str]
    model_state: dict[str, Any]
    extra: dict[str, Any]

    def build_model(self, device: Any = "cpu") -> Any:
        """The model with its weights loaded, in eval mode."""
        from kws_ghost.models import build_model

        model = build_model(self.model_config)
        try:
            model.load_state_dict(self.model_state, strict=True)
        except RuntimeError as exc:
            mismatch = _summarize_mismatch(model.state_dict(), self.model_state)
            raise KwsError(
                f"{self.path}: its weights do not fit the {self.model_config.arch} model "
                f"its config describes ({mismatch}); was it written by another model or edited?"
            ) from exc
        return model.to(device).eval()


def _summarize_mismatch(expected: dict[str, Any], found: dict[str, Any]) -> str:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(
        k for k in set(expected) & set(found) if tuple(expected[k].shape) != tuple(found[k].shape)
    )
    parts = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if names:
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            parts.append(f"{label}: {', '.join(names[:3])}{more}")
    return "; ".join(parts) or "shapes or names differ"


def save_checkpoint(
    path: str | os.PathLike[str],
    model: Any,
    frontend_config: FrontendConfig,
    labels: list[str],
    **extra: Any,
) -> None:
    """Write a checkpoint atomically (temporary file, then rename).

    The checkpoint is serialised in memory first and then written as plain bytes: torch.save
    straight to a file reports a full disk as "[enforce fail at inline_container.cc] unexpected
    pos", while a plain write raises ENOSPC, which ``atomic_path`` names in one line; either way
    the previous file stays as it was.
    """
    import io

    import torch

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "model_config": to_dict(model.config),
        "frontend_config": to_dict(frontend_config),
        "labels": list(labels),
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(buffer.getbuffer())
        handle.flush()
        os.fsync(handle.fileno())


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load and validate a checkpoint; every failure is a one-line ``KwsError``."""
    import torch

    path = Path(path)
    if not path.exists():
        raise KwsError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise KwsError(f"{path} is a folder; give a checkpoint file such as {path / 'best.pt'}")
    if path.suffix == ".onnx":
        raise KwsError(f"{path} is an ONNX model; this command needs a kws-ghost .pt checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols of foreign files
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower():
            raise KwsError(
                f"{path}: holds Python objects other than plain weights; refusing to load it"
            ) from exc
        raise KwsError(
            f"{path}: not a readable checkpoint (corrupt, or not a PyTorch file)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on foreign bytes
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise KwsError(
            f"{path}: not a readable checkpoint (corrupt or truncated: {first})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise KwsError(f"{path}: not a kws-ghost checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise KwsError(
            f"{path}: written by a newer kws-ghost ({payload.get('package_version')}); upgrade"
        )
    try:
        model_config = from_dict(ModelConfig, payload["model_config"], f"{path}: model config")
        frontend_config = from_dict(
            FrontendConfig, payload["frontend_config"], f"{path}: front-end config"
        )
        labels = [str(label) for label in payload["labels"]]
        state = payload["model_state"]
    except KeyError as exc:
        raise KwsError(f"{path}: checkpoint lacks {exc.args[0]!r}") from exc
    if len(labels) != model_config.num_classes:
        raise KwsError(
            f"{path}: {len(labels)} labels but the model has {model_config.num_classes} outputs"
        )
    known = {"format", "format_version", "model_config", "frontend_config", "labels", "model_state"}
    extra = {k: v for k, v in payload.items() if k not in known}
    return Checkpoint(path, model_config, frontend_config, labels, state, extra)


def stored_data_path(train_config: dict[str, Any], model_path: Path) -> Optional[Path]:
    """The corpus a model (checkpoint or export) was trained on, where it can be found: the
    stored path (absolute since 0.2), else that path taken relative to the model file's folder
    and the two above it (older checkpoints stored ``--data`` as typed). None when none exists."""
    stored = (train_config or {}).get("data")
    if not stored:
        return None
    path = Path(stored)
    candidates = (
        [path]
        if path.is_absolute()
        else [
            path,
            model_path.parent / path,
            model_path.parent.parent / path,
            model_path.parent.parent.parent / path,
        ]
    )
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return None


def find_default_model(explicit: Optional[str] = None) -> Path:
    """``explicit``, else ``$KWS_GHOST_MODEL``, else ``runs/latest/best.pt``; else a clear error."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("KWS_GHOST_MODEL")
    if env:
        return Path(env)
    latest = Path("runs") / "latest" / "best.pt"
    if latest.exists():
        return latest
    raise KwsError(
        "no model given and none found: pass --model CHECKPOINT, set KWS_GHOST_MODEL, or train "
        "one with `kws-ghost train` (it records runs/latest) or `make demo`"
    )
