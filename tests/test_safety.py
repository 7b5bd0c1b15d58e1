"""Nothing lost, nothing silent: the shared rules of kws_ghost.fileio and kws_ghost.progress, and
the commands that apply them (export's inputs, --plot paths, one-line usage errors)."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import tempfile

import pytest
from click.testing import CliRunner

from kws_ghost import fileio
from kws_ghost.cli import main
from kws_ghost.errors import KwsError
from kws_ghost.progress import progress_enabled

MARKER = ".kws-ghost-test"
PNG = fileio.PNG_SIGNATURE + b"rest of an image"


def assert_one_line_error(result, *needles: str, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in message, message
    return message


# ------------------------------------------------------------------------- atomic writes


def test_atomic_path_below_a_file_is_one_line(tmp_path):
    (tmp_path / "meeting.wav").write_bytes(b"RIFF audio")
    for target in (tmp_path / "meeting.wav" / "c.png", tmp_path / "meeting.wav" / "a" / "b.png"):
        with pytest.raises(KwsError, match="meeting.wav is a file, not a folder"):
            with fileio.atomic_path(target):
                pass
    assert (tmp_path / "meeting.wav").read_bytes() == b"RIFF audio"


def test_full_disk_names_the_path_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(KwsError) as caught:
        with fileio.atomic_open(target) as handle:
            handle.write("new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(caught.value).startswith(f"no space left on device writing {target}")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]


def test_full_disk_when_making_the_temporary_file(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(KwsError, match=f"no space left on device writing {tmp_path / 'x.json'}"):
        fileio.write_json(tmp_path / "x.json", {"a": 1})


def test_other_exceptions_pass_through_unchanged(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(ValueError, match="not mine"):
        with fileio.atomic_path(target):
            raise ValueError("not mine")
    with pytest.raises(PermissionError):  # an OSError that is not a full disk: unchanged
        with fileio.atomic_path(target):
            raise PermissionError(errno.EACCES, "denied")
    assert os.listdir(tmp_path) == []


def test_writing_over_a_folder_is_one_line(tmp_path):
    (tmp_path / "x.json").mkdir()
    with pytest.raises(KwsError, match="x.json: it is a folder"):
        fileio.write_json(tmp_path / "x.json", {})


# ---------------------------------------------------------------------- inputs and outputs


def test_refuse_overwriting_inputs(tmp_path):
    source = tmp_path / "m.pt"
    source.write_bytes(b"weights")
    os.link(source, tmp_path / "hard.pt")
    (tmp_path / "soft.pt").symlink_to(source)
    (tmp_path / "sub").mkdir()
    for same in (
        source,
        tmp_path / "hard.pt",
        tmp_path / "soft.pt",
        tmp_path / "sub" / ".." / "m.pt",
    ):
        with pytest.raises(KwsError, match=f"same file as the input {source}"):
            fileio.refuse_overwriting_inputs([tmp_path / "new.onnx", same], [source])
    fileio.refuse_overwriting_inputs([tmp_path / "m.onnx", tmp_path / "m.json"], [source])


def test_check_png_output(tmp_path):
    with pytest.raises(KwsError, match=r"--plot .*notes.txt: .* ending in \.png"):
        fileio.check_png_output(tmp_path / "notes.txt")
    (tmp_path / "notes.png").write_text("my notes")
    with pytest.raises(KwsError, match="notes.png exists and is not a PNG image"):
        fileio.check_png_output(tmp_path / "notes.png", "--plot")
    (tmp_path / "photo.png").write_bytes(PNG)  # a PNG, but not a plot of ours
    with pytest.raises(KwsError, match="photo.png exists and is not a plot kws-ghost wrote"):
        fileio.check_png_output(tmp_path / "photo.png")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    Figure().savefig(tmp_path / "old.png", format="png", metadata=fileio.PNG_METADATA)
    assert fileio.check_png_output(tmp_path / "old.png") == tmp_path / "old.png"  # ours: replace
    assert fileio.check_png_output(tmp_path / "new" / "x.PNG") == tmp_path / "new" / "x.PNG"
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(KwsError, match="dir.png is a folder"):
        fileio.check_png_output(tmp_path / "dir.png")
    (tmp_path / "meeting.wav").write_bytes(b"RIFF")
    with pytest.raises(KwsError, match="meeting.wav is a file, not a folder"):
        fileio.check_png_output(tmp_path / "meeting.wav" / "c.png")


# ------------------------------------------------------------------------- owned folders


def test_check_replaceable_allows_only_our_own_folders(tmp_path, monkeypatch):
    assert fileio.check_replaceable(tmp_path / "absent", MARKER) is False
    (tmp_path / "empty").mkdir()
    assert fileio.check_replaceable(tmp_path / "empty", MARKER) is False
    ours = tmp_path / "ours"
    ours.mkdir()
    fileio.write_marker(ours, MARKER, {"seed": 1})
    (ours / "data.txt").write_text("x")
    assert fileio.owned_by(ours, MARKER) and fileio.check_replaceable(ours, MARKER) is True
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("precious")
    with pytest.raises(KwsError, match=f"--out {theirs} is not empty and holds no {MARKER}"):
        fileio.check_replaceable(theirs, MARKER)
    (theirs / MARKER).symlink_to(ours / MARKER)  # a link to a marker does not make it ours
    with pytest.raises(KwsError, match="kws-ghost did not write it"):
        fileio.check_replaceable(theirs, MARKER, "--run-dir")
    (tmp_path / "file").write_text("x")
    with pytest.raises(KwsError, match="is a file, not a folder"):
        fileio.check_replaceable(tmp_path / "file", MARKER)
    (tmp_path / "link").symlink_to(ours)
    with pytest.raises(KwsError, match="is a symbolic link"):
        fileio.check_replaceable(tmp_path / "link", MARKER)
    monkeypatch.chdir(ours)
    with pytest.raises(KwsError, match="is the current folder"):
        fileio.check_replaceable(ours, MARKER)
    with pytest.raises(KwsError, match="is a folder above the current one"):
        fileio.check_replaceable(tmp_path, MARKER)


def test_replace_folder_swaps_in_the_new_one(tmp_path):
    dest = tmp_path / "corpus"
    first = fileio.make_work_folder(dest, "build", MARKER)
    (first / "a.txt").write_text("first")
    fileio.replace_folder(first, dest, MARKER)
    second = fileio.make_work_folder(dest, "build", MARKER)
    assert second.name.startswith(".corpus.build-") and fileio.owned_by(second, MARKER)
    (second / "b.txt").write_text("second")
    fileio.replace_folder(second, dest, MARKER)
    assert sorted(p.name for p in dest.iterdir()) == [MARKER, "b.txt"]
    assert os.listdir(tmp_path) == ["corpus"]
    # a folder that is not ours is never replaced, and the new one stays where it was
    (dest / MARKER).unlink()
    third = fileio.make_work_folder(dest, "build", MARKER)
    with pytest.raises(KwsError, match="did not write it"):
        fileio.replace_folder(third, dest, MARKER)
    assert (dest / "b.txt").read_text() == "second" and third.is_dir()


# ------------------------------------------------------------------------------- progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal_and_never_with_json(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file or a pipe
    assert progress_enabled() is False and progress_enabled(None, as_json=True) is False
    assert progress_enabled(True) is True  # asked for explicitly
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert progress_enabled() is True
    assert progress_enabled(None, as_json=True) is False
    assert progress_enabled(True, as_json=True) is False
    assert progress_enabled(False) is False
    monkeypatch.setattr(sys, "stderr", None)  # pythonw, or closed
    assert progress_enabled() is False


# ------------------------------------------------------------------------ export, analyze


@pytest.fixture
def checkpoint(tmp_path):
    import torch

    from kws_ghost.checkpoint import save_checkpoint
    from kws_ghost.config import FrontendConfig, ModelConfig
    from kws_ghost.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="gru", input_dim=10, hidden=8, layers=1, num_classes=3))
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, FrontendConfig(n_mfcc=10), ["yes", "no", "_unknown_"])
    return path


def test_export_never_writes_over_its_checkpoint(checkpoint, tmp_path):
    original = checkpoint.read_bytes()
    result = CliRunner().invoke(main, ["export", str(checkpoint), "-o", str(checkpoint)])
    assert_one_line_error(result, "same file as the input", str(checkpoint))
    os.link(checkpoint, tmp_path / "hard.pt")
    result = CliRunner().invoke(main, ["export", str(checkpoint), "-o", str(tmp_path / "hard.pt")])
    assert_one_line_error(result, "same file as the input")
    assert checkpoint.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["hard.pt", "m.pt"]


def test_export_replaces_only_its_own_models(checkpoint, tmp_path):
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"a user's file")
    result = CliRunner().invoke(main, ["export", str(checkpoint), "-o", str(mine)])
    assert_one_line_error(result, "is not a kws-ghost ONNX model", str(mine))
    assert mine.read_bytes() == b"a user's file"
    ours = tmp_path / "ours.onnx"
    inodes = []
    for _ in range(2):  # the second export replaces the first (a new file, renamed into place)
        result = CliRunner().invoke(main, ["export", str(checkpoint), "-o", str(ours)])
        assert result.exit_code == 0, result.output
        inodes.append(ours.stat().st_ino)
    assert inodes[0] != inodes[1]


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("notes.txt", b"my notes", "ending in .png"),
        ("notes.png", b"my notes", "not a PNG image"),
        ("meeting.wav/c.png", None, "meeting.wav is a file, not a folder"),
        ("m.pt", None, "ending in .png"),
    ],
)
def test_analyze_plot_path_is_checked_first(checkpoint, tmp_path, name, content, needle):
    (tmp_path / "meeting.wav").write_bytes(b"RIFF audio")
    target = tmp_path / name
    if content is not None:
        target.write_bytes(content)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    result = CliRunner().invoke(
        main,
        ["analyze", str(checkpoint), "--data", str(tmp_path / "nowhere"), "--plot", str(target)],
    )
    assert_one_line_error(result, "--plot", needle)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    "args, needle",
    [
        (["synth", "--words", "yes", "--out", "x", "--voices", "0"], "'--voices'"),
        (["synth", "--out", "x"], "Missing option '--words'"),
        (["features"], "Missing argument"),
        (["nosuch"], "No such command 'nosuch'"),
        (["--bogus"], "No such option"),
        (["download", "--version", "v9"], "'v9'"),
    ],
)
def test_bad_options_are_one_lower_case_line(tmp_path, args, needle):
    result = subprocess.run(
        [sys.executable, "-m", "kws_ghost", *args], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip()
    assert message.startswith("error: ") and "\n" not in message, message
    assert needle in message and "--help" in message, message
    assert "Error:" not in message and "Usage:" not in message
    assert os.listdir(tmp_path) == []


def test_plain_command_still_shows_the_help():
    result = subprocess.run([sys.executable, "-m", "kws_ghost"], capture_output=True, text=True)
    assert "Commands:" in result.stdout + result.stderr and "synth" in result.stdout + result.stderr
