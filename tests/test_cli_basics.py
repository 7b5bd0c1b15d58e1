"""The command line itself: fast help, no torch at import, one-line errors."""

import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from kws_ghost.cli import main


def test_help_is_fast_and_does_not_import_torch():
    code = (
        "import sys, time; t = time.perf_counter(); "
        "from kws_ghost.cli import main; "
        "import click.testing as ct; r = ct.CliRunner().invoke(main, ['--help']); "
        "assert r.exit_code == 0, r.output; "
        "assert 'torch' not in sys.modules, 'torch imported by --help'; "
        "assert 'librosa' not in sys.modules; "
        "print(time.perf_counter() - t)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kws_ghost", "--help"], check=True, capture_output=True)
    # interpreter start-up included; the issue asks for < 0.5 s
    assert time.perf_counter() - start < 0.5


def test_every_command_has_help():
    runner = CliRunner()
    listing = runner.invoke(main, ["--help"])
    assert listing.exit_code == 0
    for name in main.list_commands(None):
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "--threads" in result.output, name  # every command lets the user set threads


def test_missing_checkpoint_is_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "kws_ghost", "profile", str(tmp_path / "nope.pt")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "no such checkpoint" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_no_import_cycles_in_the_package():
    """Every module imports on its own, and no two modules import each other at module level."""
    import ast
    from pathlib import Path

    import kws_ghost

    root = Path(kws_ghost.__file__).parent
    graph = {}
    for path in root.rglob("*.py"):
        module = "kws_ghost." + ".".join(path.relative_to(root).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        imports = set()
        for node in tree.body:  # module level only: imports inside functions are lazy on purpose
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kws_"):
                imports.add(node.module)
            elif isinstance(node, ast.Import):
                imports |= {a.name for a in node.names if a.name.startswith("kws_ghost")}
        graph[module] = imports

    def reaches(start, target, seen):
        for nxt in graph.get(start, ()):
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    cycles = [m for m in graph if reaches(m, m, {m})]
    assert not cycles, cycles
    # one fresh interpreter per module, as many at once as there are cores
    from concurrent.futures import ThreadPoolExecutor

    def imports_alone(module: str) -> int:
        return subprocess.run([sys.executable, "-c", f"import {module}"]).returncode

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        failed = [m for m, rc in zip(graph, pool.map(imports_alone, graph)) if rc != 0]
    assert not failed, failed


@pytest.mark.slow
def test_every_function_level_import_is_acyclic_too():
    """train and evaluate used to import each other; the module graph including lazy imports
    has no cycle through train, evaluate, runtime or export."""
    import ast
    from pathlib import Path

    import kws_ghost

    root = Path(kws_ghost.__file__).parent
    graph = {}
    for path in root.glob("*.py"):
        module = "kws_ghost." + path.stem
        graph[module] = {
            node.module
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kws_ghost.")
        } - {module}
    for first in ("kws_ghost.train", "kws_ghost.evaluate", "kws_ghost.runtime", "kws_ghost.export"):
        for second in graph.get(first, ()):
            assert first not in graph.get(second, set()), (first, second)


WITHOUT = """
import sys, importlib.abc
class Missing(importlib.abc.MetaPathFinder):  # as if these packages were not installed
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Missing())
from kws_ghost.cli import main
main({args!r})
"""


def run_without(packages, *args, cwd=None):
    code = WITHOUT.format(blocked=set(packages), args=[str(a) for a in args])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd)


def test_a_missing_package_is_named_with_the_extra_that_brings_it(tmp_path):
    """`eval model.onnx` runs without torch: without scikit-learn it asks for that, not torch."""
    import numpy as np
    import soundfile
    import torch

    from kws_ghost.checkpoint import save_checkpoint
    from kws_ghost.config import FrontendConfig, ModelConfig
    from kws_ghost.export import export_checkpoint
    from kws_ghost.models import build_model

    model = build_model(ModelConfig(hidden=16, layers=1, num_classes=4))
    model.set_normalization(torch.zeros(40), torch.ones(40))
    save_checkpoint(
        tmp_path / "m.pt", model.eval(), FrontendConfig(), ["_silence_", "_unknown_", "yes", "no"]
    )
    export_checkpoint(tmp_path / "m.pt", tmp_path / "m.onnx")
    corpus = tmp_path / "corpus"
    for word in ("yes", "no"):
        (corpus / word).mkdir(parents=True)
        soundfile.write(corpus / word / "a_nohash_0.wav", np.zeros(16000, np.float32), 16000)
    (corpus / "testing_list.txt").write_text("yes/a_nohash_0.wav\nno/a_nohash_0.wav\n")
    (corpus / "validation_list.txt").write_text("")
    result = run_without({"sklearn", "torch"}, "eval", tmp_path / "m.onnx", "--data", corpus)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "scikit-learn" in result.stderr and "kws-ghost[eval]" in result.stderr
    assert "torch" not in result.stderr and "[train]" not in result.stderr


def test_plot_without_matplotlib_fails_before_writing_anything(tmp_path):
    import numpy as np
    import soundfile

    wav = tmp_path / "a.wav"
    soundfile.write(wav, np.zeros(16000, np.float32), 16000)
    out = tmp_path / "out"
    result = run_without({"matplotlib"}, "features", wav, "--out", out, "--plot")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "matplotlib" in result.stderr and "kws-ghost[plot]" in result.stderr
    assert not out.exists()
    folder = run_without({"matplotlib"}, "features", tmp_path, "--out", out, "--plot")
    assert folder.returncode == 1 and "matplotlib" in folder.stderr and not out.exists()


def test_threshold_and_a_false_alarm_rate_together_are_a_usage_error(tmp_path):
    for command in ("detect", "eval-stream"):
        result = subprocess.run(
            [sys.executable, "-m", "kws_ghost", command, str(tmp_path / "x.wav")]
            + ["--threshold", "0.5", "--false-alarms-per-hour", "2"],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.count("\n") == 1 and "not both" in result.stderr
