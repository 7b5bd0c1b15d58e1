"""kws-ghost: keyword spotting with GhostRNN.

The package is organised one module per pipeline stage: ``audio`` (loading), ``features``
(MFCC / log-mel front-end), ``download`` and ``data`` (Speech Commands), ``synth`` (offline speech),
``layers`` and ``models`` (GhostRNN and baselines), ``train``, ``evaluate``, ``stream`` (detection),
``export`` (ONNX) and ``analyze`` (state redundancy). ``cli`` is a thin Click layer over them.
"""

__version__ = "0.1.0"
