"""The classifier factory and the cost profile."""

import json

import pytest
import torch
from click.testing import CliRunner

from kws_ghost.cli import main
from kws_ghost.config import ModelConfig
from kws_ghost.models import build_model
from kws_ghost.profile import compare, profile_config


@pytest.mark.parametrize("arch", ["ghost-gru", "gru", "ghost-lstm", "lstm"])
@pytest.mark.parametrize("pooling", ["max", "mean", "last"])
def test_factory_builds_each_architecture(arch, pooling):
    config = ModelConfig(
        arch=arch, input_dim=20, hidden=32, layers=2, num_classes=5, pooling=pooling
    )
    model = build_model(config).eval()
    features = torch.randn(3, 30, 20)
    logits, state = model(features)
    assert logits.shape == (3, 30, 5)  # per-frame logits, whatever the pooling
    assert state.shape == (2, 3, model.rnn.state_size)
    # Frame by frame with the step API gives the same per-frame logits and state.
    s = model.initial_state(3)
    for t in range(features.shape[1]):
        step_logits, s = model.step(features[:, t], s)
        assert torch.allclose(step_logits, logits[:, t], atol=1e-5)
    assert torch.allclose(s, state, atol=1e-5)
    # Chunks with the state carried give the one-pass result.
    first, carried = model(features[:, :11])
    second, _ = model(features[:, 11:], carried)
    assert torch.allclose(torch.cat([first, second], 1), logits, atol=1e-5)


def test_normalisation_is_applied_inside_the_model():
    model = build_model(ModelConfig(input_dim=4, hidden=8, layers=1, num_classes=2)).eval()
    x = torch.randn(2, 5, 4)
    base, _ = model(x)
    model.set_normalization(torch.full((4,), 3.0), torch.full((4,), 2.0))
    shifted, _ = model(x * 2 + 3)
    assert torch.allclose(base, shifted, atol=1e-5)


def test_ghost_gru_profile_meets_the_efficiency_claim():
    result = compare(ModelConfig(arch="ghost-gru", hidden=128, ratio=2))
    same_width, same_params = result["baselines"]
    assert result["params"] <= 0.6 * same_width["params"]
    assert result["macs_per_frame"] <= 0.6 * same_width["macs_per_frame"]
    assert result["state_bytes"] <= 0.5 * same_width["state_bytes"]
    assert abs(same_params["params"] - result["params"]) / result["params"] < 0.03
    assert same_width["arch"] == "gru" and same_width["hidden"] == 128


def test_profile_macs_count_matmuls():
    config = ModelConfig(arch="gru", input_dim=40, hidden=128, layers=1, num_classes=12)
    result = profile_config(config)
    assert result["macs_per_frame"] == 3 * 128 * (40 + 128) + 3 * 128
    assert result["macs_per_second"] == result["macs_per_frame"] * 100 + 128 * 12


def test_profile_cli_json_compare():
    result = CliRunner().invoke(
        main,
        [
            "profile",
            "--model",
            "ghost-gru",
            "--hidden",
            "128",
            "--ratio",
            "2",
            "--compare",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert {"params", "macs_per_frame", "state_bytes", "baselines"} <= set(data)
    assert [b["name"].split()[0] for b in data["baselines"]] == ["gru", "gru"]
    assert data["params"] <= 0.6 * data["baselines"][0]["params"]


def test_profile_cli_text_and_bad_option():
    runner = CliRunner()
    ok = runner.invoke(main, ["profile", "--model", "ghost-lstm", "--compare"])
    assert ok.exit_code == 0 and "lstm H112 x2 (same width)" in ok.output
    bad = runner.invoke(main, ["profile", "--model", "transformer"])
    assert bad.exit_code == 2 and "transformer" in bad.output
