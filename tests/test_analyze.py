"""State-redundancy analysis."""

import json

import numpy as np
import torch
from click.testing import CliRunner

from kws_ghost.analyze import analyze_checkpoint, state_redundancy
from kws_ghost.checkpoint import save_checkpoint
from kws_ghost.cli import main
from kws_ghost.config import FrontendConfig, ModelConfig
from kws_ghost.models import build_model

LABELS = ["_silence_", "_unknown_", "yes", "no"]


def paired_gru(hidden: int = 16) -> torch.nn.Module:
    """A 2-layer GRU classifier whose hidden units are exact copies in pairs (2i, 2i + 1)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="gru", hidden=hidden, layers=2, num_classes=4))
    with torch.no_grad():
        for layer in model.rnn.layers:
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                weight = getattr(layer, name)
                for gate in range(3):
                    rows = weight[gate * hidden : (gate + 1) * hidden]
                    rows[1::2] = rows[0::2]
    return model


def test_exact_pairs_need_at_most_half_the_components(tiny_corpus, tmp_path):
    path = tmp_path / "paired.pt"
    save_checkpoint(path, paired_gru(16), FrontendConfig(), LABELS)
    report = analyze_checkpoint(path, tiny_corpus, "training", max_clips=20)
    assert len(report["layers"]) == 2
    for layer in report["layers"]:
        assert layer["k99"] <= 8  # half of H = 16
        assert layer["suggested_ratio"] >= 2.0
        assert layer["similarity"][0, 1] > 0.999  # a pair is a copy


def test_independent_states_need_every_component():
    rng = np.random.default_rng(0)
    report = state_redundancy(rng.standard_normal((2000, 12)))
    assert report["k99"] >= 11 and report["k90"] >= 9
    assert report["mean_abs_cosine"] < 0.1
    energy = report["cumulative_energy"]
    assert energy == sorted(energy) and abs(energy[-1] - 1) < 1e-9


def test_rank_two_states():
    rng = np.random.default_rng(1)
    basis = rng.standard_normal((2, 10))
    report = state_redundancy(rng.standard_normal((500, 2)) @ basis)
    assert report["k99"] == 2 and report["suggested_ratio"] == 5.0


def test_analyze_cli_json_and_plot(trained_run, tmp_path):
    png = tmp_path / "analysis.png"
    result = CliRunner().invoke(
        main,
        ["analyze", str(trained_run["best"]), "--max-clips", "30", "--plot", str(png), "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["model"] == "ghost-gru" and report["clips"] == 30
    layer = report["layers"][0]
    assert {"k90", "k95", "k99", "mean_abs_cosine", "suggested_ratio"} <= set(layer)
    assert layer["k90"] <= layer["k95"] <= layer["k99"] <= layer["width"]
    assert png.read_bytes()[:4] == b"\x89PNG"
