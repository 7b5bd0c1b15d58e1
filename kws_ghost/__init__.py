"""kws-ghost: keyword spotting with GhostRNN.

The package is organised one module per pipeline stage: ``audio`` (loading), ``features``
(MFCC / log-mel front-end), ``download`` and ``data`` (Speech Commands), ``synth`` (offline speech),
``layers`` and ``models`` (GhostRNN and baselines), ``train``, ``evaluate``, ``stream`` (detection),
``export`` (ONNX) and ``analyze`` (state redundancy). ``cli`` is a thin Click layer over them.

The Python API is ``Detector`` (``kws_ghost.detector``): ``from kws_ghost import Detector``.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Detector", "Event", "load_model"]

_API = {
    "Detector": "kws_ghost.detector",
    "Event": "kws_ghost.stream",
    "load_model": "kws_ghost.runtime",
}


def __getattr__(name: str) -> Any:
    # imported on first use, so `import kws_ghost` (and `kws-ghost --help`) stays instant
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'kws_ghost' has no attribute {name!r}")
