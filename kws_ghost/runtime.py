"""Running a trained model: one object for a checkpoint (``.pt``, PyTorch) or an exported step
model (``.onnx``, onnxruntime, no torch), with what every consumer needs.

``load_model(path)`` returns a ``KeywordRuntime``: ``labels``, ``frontend_config``,
``model_config``, ``detection`` (the validation DET the checkpoint carries, or None), and

* ``run(frames [B, T, F], state [L, B, S]) -> (frame logits [B, T, C], new state)``, the
  recurrent step applied frame after frame with the state carried: the streaming model itself;
* ``clip_logits(features [N, T, F])``: clip scores from the zero state by the model's pooling.

``load_models(paths)`` loads several as one ``EnsembleRuntime``: the mean of their frame
logits, what ``train --teacher A --teacher B`` distils from.

The scorers that turn a stream of frames into posteriors with a runtime are
``kws_ghost.scorers``. Only numpy is imported at module level.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from kws_ghost.config import FrontendConfig, ModelConfig, from_dict
from kws_ghost.errors import KwsError

ONNX_FORMAT = "kws-ghost-onnx"
ONNX_FORMAT_VERSION = 2
INSTALL_HINT = "pip install kws-ghost[export]"
SILENCE = "_silence_"  # kws_ghost.data's names, repeated so this module needs nothing else
UNKNOWN = "_unknown_"


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


KEYWORD_THRESHOLD = 0.5  # the streaming clip rule: a keyword is in the clip if it reaches this


def clip_scores(frame_logits: np.ndarray, labels: list[str], pooling: str) -> np.ndarray:
    """Clip decision scores [N, C] of frame logits [N, T, C]: the argmax is the clip's class.

    ``max``, the streaming rule, decides as the detector does: the clip holds a keyword when some
    keyword's posterior reaches ``KEYWORD_THRESHOLD`` on some frame (then the keyword whose peak
    is highest); otherwise it is ``_unknown_`` when that posterior peaks above 0.5, else
    ``_silence_``. The scores are the peak posteriors, with the classes the rule excludes pushed
    below zero. ``mean`` / ``last``: the mean or last frame's logits (clip-trained models).
    """
    if pooling == "mean":
        return frame_logits.mean(axis=1)
    if pooling == "last":
        return frame_logits[:, -1]
    peaks = softmax(frame_logits.astype(np.float32)).max(axis=1)
    keyword = np.array([label not in (SILENCE, UNKNOWN) for label in labels])
    fired = (peaks[:, keyword].max(axis=1) >= KEYWORD_THRESHOLD)[:, None]
    scores = np.where(keyword, np.where(fired, peaks, peaks - 1.0), np.where(fired, -1.0, peaks))
    if SILENCE in labels:
        silence = labels.index(SILENCE)
        unknown = peaks[:, labels.index(UNKNOWN)] if UNKNOWN in labels else np.zeros(len(peaks))
        scores[:, silence] = np.where(fired[:, 0], -1.0, 1.0 - unknown)
    return scores.astype(np.float32)


class KeywordRuntime:
    """What ``load_model`` returns; subclasses implement ``run`` and ``initial_state``."""

    path: Path
    labels: list[str]
    frontend_config: FrontendConfig
    model_config: ModelConfig
    detection: Optional[dict[str, Any]]
    train_config: dict[str, Any]  # how it was trained (seed and shares build the same splits)
    params: int

    @property
    def keyword_labels(self) -> list[str]:
        return [label for label in self.labels if label not in (SILENCE, UNKNOWN)]

    @property
    def streaming(self) -> bool:
        """True for models trained on streams (per-frame targets), whose state may be carried
        forever; clip-trained models only score windows from a zero state."""
        return self.model_config.streams

    def corpus(self) -> Optional[Path]:
        """The corpus the model was trained on, where it still is (None: unknown or gone)."""
        from kws_ghost.checkpoint import stored_data_path

        return stored_data_path(self.train_config, self.path)

    def initial_state(self, batch: int = 1) -> np.ndarray:
        raise NotImplementedError

    def run(self, frames: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def clip_logits(self, features: np.ndarray, batch: int = 512) -> np.ndarray:
        """Clip scores [N, C] of N clips' raw features [N, T, F], each from the zero state."""
        features = np.asarray(features, dtype=np.float32)
        parts = []
        for start in range(0, len(features), batch):
            chunk = features[start : start + batch]
            logits, _ = self.run(chunk, self.initial_state(len(chunk)))
            parts.append(clip_scores(logits, self.labels, self.model_config.pooling))
        if not parts:
            return np.zeros((0, len(self.labels)), np.float32)
        return np.concatenate(parts)


class TorchRuntime(KeywordRuntime):
    """A kws-ghost checkpoint (or a model in memory) run by PyTorch on the CPU."""

    def __init__(
        self,
        model: Any,
        labels: list[str],
        frontend_config: FrontendConfig,
        path: Optional[Path] = None,
        detection: Optional[dict[str, Any]] = None,
        train_config: Optional[dict[str, Any]] = None,
    ) -> None:
        self.model = model.eval()
        self.labels = list(labels)
        self.frontend_config = frontend_config
        self.model_config = model.config
        self.detection = detection
        self.train_config = train_config or {}
        self.path = path or Path("<memory>")
        self.params = model.num_params()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str]) -> TorchRuntime:
        from kws_ghost.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(path)
        return cls(
            checkpoint.build_model(),
            checkpoint.labels,
            checkpoint.frontend_config,
            checkpoint.path,
            checkpoint.extra.get("detection"),
            checkpoint.extra.get("train_config"),
        )

    def initial_state(self, batch: int = 1) -> np.ndarray:
        return self.model.initial_state(batch).cpu().numpy()

    def run(self, frames: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        device = self.model.feature_mean.device  # where the model lives (a GPU in training)
        with torch.inference_mode():
            logits, new_state = self.model(
                torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).to(device),
                torch.from_numpy(np.ascontiguousarray(state, dtype=np.float32)).to(device),
            )
        return logits.float().cpu().numpy(), new_state.float().cpu().numpy()


class OnnxRuntime(KeywordRuntime):
    """An exported step model (``kws-ghost export``) run by onnxruntime: numpy and onnxruntime
    only. ``threads`` intra-op threads (1: lowest latency for these small graphs)."""

    def __init__(self, path: str | os.PathLike[str], threads: int = 1) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise KwsError(f"{self.path}: no such ONNX model")
        if self.path.is_dir():
            raise KwsError(f"{self.path} is a folder; give the exported .onnx file")
        self.session = open_session(self.path, threads)
        raw = self.session.get_modelmeta().custom_metadata_map
        if raw.get("format") != json.dumps(ONNX_FORMAT):
            raise KwsError(f"{self.path}: not a kws-ghost ONNX model (no kws-ghost metadata)")
        meta = {key: _json(value, self.path, key) for key, value in raw.items()}
        version = meta.get("format_version", 0)
        if version > ONNX_FORMAT_VERSION:
            raise KwsError(f"{self.path}: written by a newer kws-ghost; upgrade")
        if version < ONNX_FORMAT_VERSION:
            raise KwsError(
                f"{self.path}: exported by an older kws-ghost (format {version}); export the "
                "checkpoint again with `kws-ghost export`"
            )
        try:
            self.labels = [str(label) for label in meta["labels"]]
            self.frontend_config = from_dict(FrontendConfig, meta["frontend_config"])
            self.model_config = from_dict(ModelConfig, meta["model_config"])
            self.state_shape = tuple(
                int(v) for v in (meta["state"]["layers"], meta["state"]["size"])
            )
            self.params = int(meta["params"])
        except (KeyError, TypeError, KwsError) as exc:
            raise KwsError(f"{self.path}: incomplete kws-ghost metadata ({exc})") from exc
        self.detection = meta.get("detection")
        self.train_config = meta.get("train_config") or {}
        self.metadata = meta

    def initial_state(self, batch: int = 1) -> np.ndarray:
        layers, size = self.state_shape
        return np.zeros((layers, batch, size), np.float32)

    def run(self, frames: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames = np.ascontiguousarray(frames, dtype=np.float32)
        state = np.ascontiguousarray(state, dtype=np.float32)
        batch, steps, _ = frames.shape
        logits = np.empty((batch, steps, len(self.labels)), np.float32)
        run = self.session.run
        for t in range(steps):
            logits[:, t], state = run(None, {"frames": frames[:, t], "state": state})
        return logits, state


def open_session(path: Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads; one-line errors."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise KwsError(f"running ONNX models needs onnxruntime: {INSTALL_HINT}") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise KwsError(f"{path}: not a readable ONNX model ({first[:200]})") from exc


def is_kws_onnx(path: Path) -> bool:
    """Whether ``path`` is an ONNX model with kws-ghost's metadata (what export may replace)."""
    try:
        meta = open_session(path).get_modelmeta().custom_metadata_map
    except KwsError:
        return False
    return meta.get("format") == json.dumps(ONNX_FORMAT)


def _json(value: str, path: Path, key: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise KwsError(f"{path}: metadata {key!r} is not JSON") from exc


def load_model(path: str | os.PathLike[str], threads: int = 1) -> KeywordRuntime:
    """The one loader: ``.onnx`` through onnxruntime, anything else as a kws-ghost checkpoint."""
    if not os.path.exists(path):
        raise KwsError(f"{path}: no such model file")
    if str(path).endswith(".onnx"):
        return OnnxRuntime(path, threads)
    return TorchRuntime.from_checkpoint(path)


class EnsembleRuntime(KeywordRuntime):
    """Models of the same labels, front-end and pooling run as one: the mean of their frame
    logits (an ensemble teacher's logits in ``kws_ghost.objectives``). Its state is the members'
    states side by side, each flattened per stream: [1, B, sum of layers x size]."""

    def __init__(self, members: list[KeywordRuntime]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one model")
        first = members[0]
        for member in members[1:]:
            for what, mine, theirs in (
                ("labels", member.labels, first.labels),
                ("front-end", member.frontend_config, first.frontend_config),
                ("pooling", member.model_config.pooling, first.model_config.pooling),
            ):
                if mine != theirs:
                    raise KwsError(
                        f"{member.path}: {what} not as in {first.path}; the models of an "
                        "ensemble share labels, front-end and pooling"
                    )
        self.members = members
        self.path = first.path
        self.labels = first.labels
        self.frontend_config = first.frontend_config
        self.model_config = first.model_config
        self.detection = None  # each member's DET was measured alone
        self.train_config = first.train_config  # the split is built as for the first model
        self.params = sum(member.params for member in members)
        # each member's state shape [L, B, S] at batch 1, to split and restore the joined state
        self.shapes = [member.initial_state(1).shape for member in members]

    def initial_state(self, batch: int = 1) -> np.ndarray:
        return self._join([member.initial_state(batch) for member in self.members])

    def run(self, frames: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs = [
            member.run(frames, part) for member, part in zip(self.members, self._split(state))
        ]
        logits = np.mean([logits for logits, _ in outputs], axis=0)
        return logits.astype(np.float32), self._join([new for _, new in outputs])

    @staticmethod
    def _join(states: list[np.ndarray]) -> np.ndarray:
        flat = [s.transpose(1, 0, 2).reshape(s.shape[1], -1) for s in states]
        return np.concatenate(flat, axis=1)[None]

    def _split(self, state: np.ndarray) -> list[np.ndarray]:
        batch, parts, start = state.shape[1], [], 0
        for layers, _, size in self.shapes:
            flat = state[0, :, start : start + layers * size]
            parts.append(np.ascontiguousarray(flat.reshape(batch, layers, size).transpose(1, 0, 2)))
            start += layers * size
        return parts


def load_models(paths: list[str | os.PathLike[str]], threads: int = 1) -> KeywordRuntime:
    """One model (``load_model``), or several as an ``EnsembleRuntime``."""
    runtimes = [load_model(path, threads) for path in paths]
    return runtimes[0] if len(runtimes) == 1 else EnsembleRuntime(runtimes)
