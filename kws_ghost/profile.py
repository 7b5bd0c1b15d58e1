"""Model cost in numbers: parameters, MACs, recurrent state and size, with baselines beside it."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from kws_ghost.config import FrontendConfig, ModelConfig

PLAIN_ARCH = {"ghost-gru": "gru", "gru": "gru", "ghost-lstm": "lstm", "lstm": "lstm"}


def profile_config(
    config: ModelConfig, frontend: Optional[FrontendConfig] = None, name: Optional[str] = None
) -> dict[str, Any]:
    """Cost figures for one model. MACs per second assume one classification per second."""
    from kws_ghost.models import build_model

    frontend = frontend or FrontendConfig()
    model = build_model(config)
    params = model.num_params()
    macs_frame = model.macs_per_frame()
    tensors = sum(1 for _ in model.parameters())
    return {
        "name": name or describe(config),
        "arch": config.arch,
        "hidden": config.hidden,
        "layers": config.layers,
        "ratio": config.effective_ratio,
        "intrinsic": config.intrinsic,
        "cheap_op": config.cheap_op if config.arch.startswith("ghost-") else None,
        "params": params,
        "macs_per_frame": macs_frame,
        "macs_per_second": int(round(macs_frame * frontend.frames_per_second)) + model.head_macs(),
        "state_bytes": model.rnn.state_bytes(4),
        "size_fp32_bytes": params * 4,
        # int8 weights plus one fp32 scale per tensor (per-tensor quantisation)
        "size_int8_bytes": params + 4 * tensors,
    }


def describe(config: ModelConfig) -> str:
    if config.arch.startswith("ghost-"):
        return f"{config.arch} H{config.hidden} s{config.ratio:g} x{config.layers}"
    return f"{config.arch} H{config.hidden} x{config.layers}"


def same_params_width(config: ModelConfig) -> int:
    """Width of the plain cell whose parameter count is closest to ``config``'s."""
    from kws_ghost.models import build_model

    target = build_model(config).num_params()
    plain = dataclasses.replace(config, arch=PLAIN_ARCH[config.arch])

    def count(width: int) -> int:
        return build_model(dataclasses.replace(plain, hidden=width)).num_params()

    low, high = 1, config.hidden
    while low < high:  # parameters grow with width: binary search for the first width >= target
        mid = (low + high) // 2
        if count(mid) < target:
            low = mid + 1
        else:
            high = mid
    candidates = [w for w in (low - 1, low) if w >= 1]
    return min(candidates, key=lambda w: abs(count(w) - target))


def baselines(config: ModelConfig) -> list[ModelConfig]:
    """The plain cell of the same width, and the one with about the same parameter count."""
    plain = dataclasses.replace(config, arch=PLAIN_ARCH[config.arch])
    return [plain, dataclasses.replace(plain, hidden=same_params_width(config))]


def compare(config: ModelConfig, frontend: Optional[FrontendConfig] = None) -> dict[str, Any]:
    """``profile_config`` of ``config`` plus a ``baselines`` list and ratios against the first."""
    result = profile_config(config, frontend)
    same_width, same_params = baselines(config)
    result["baselines"] = [
        profile_config(same_width, frontend, f"{describe(same_width)} (same width)"),
        profile_config(same_params, frontend, f"{describe(same_params)} (same parameters)"),
    ]
    reference = result["baselines"][0]
    result["vs_same_width"] = {
        key: result[key] / reference[key] for key in ("params", "macs_per_frame", "state_bytes")
    }
    return result
