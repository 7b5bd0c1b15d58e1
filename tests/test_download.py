"""``kws-ghost download`` against a generated archive served from 127.0.0.1 (no internet)."""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from kws_ghost import download as dl
from kws_ghost.cli import main
from kws_ghost.errors import KwsError

WAVS = ["yes/aa11_nohash_0.wav", "yes/bb22_nohash_0.wav", "no/aa11_nohash_0.wav"]
NOISE = "_background_noise_/white_noise.wav"


def _wav_bytes(seed: int, samples: int = 1600) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    sf.write(
        buffer,
        (rng.standard_normal(samples) * 0.1).astype(np.float32),
        16000,
        "PCM_16",
        format="WAV",
    )
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def make_archive(extra=None) -> bytes:
    """A small .tar.gz in the Speech Commands layout ("./word/..." members, like the real one)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        _add(tar, ".", type=tarfile.DIRTYPE, mode=0o755)
        for seed, name in enumerate(WAVS):
            _add(tar, "./" + name, _wav_bytes(seed))
        _add(tar, "./" + NOISE, _wav_bytes(99, samples=8000))
        _add(tar, "./validation_list.txt", (WAVS[1] + "\n").encode())
        _add(tar, "./testing_list.txt", (WAVS[2] + "\n").encode())
        for name, data, fields in extra or []:
            _add(tar, name, data, **fields)
    return buffer.getvalue()


ARCHIVE = make_archive()
ARCHIVE_SHA = hashlib.sha256(ARCHIVE).hexdigest()
FILES = len(WAVS) + 3
UNPACKED = sum(len(_wav_bytes(seed)) for seed in range(len(WAVS))) + len(_wav_bytes(99, 8000))
UNPACKED += len(WAVS[1]) + 1 + len(WAVS[2]) + 1  # the two split lists


class _State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before the first answer breaks
        self.ignore_range = False
        self.status: dict[str, int] = {}
        self.release = threading.Event()


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        state: _State = self.server.state
        state.requests.append((self.path, self.headers.get("Range")))
        if self.path == "/hang":
            state.release.wait(5)
            return
        if self.path in state.status:
            self.send_error(state.status[self.path])
            return
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"archive-1"')
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        cut = state.drop_after.pop(self.path, None)
        if cut is not None:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = _State()
    httpd.state.files["/speech_commands_v0.02.tar.gz"] = ARCHIVE
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.state.release.set()
    httpd.shutdown()
    httpd.server_close()


def run_cli(*args: str):
    return CliRunner().invoke(main, ["download", *args])


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    message = result.output.strip()  # only the error line (stderr) is printed
    assert message.startswith("error: ") and "\n" not in message, message
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in message, message


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_good_download_extracts_and_verifies(server, tmp_path):
    dest = tmp_path / "data" / "gsc"
    url = server.base + "/speech_commands_v0.02.tar.gz"
    result = run_cli("--url", url, "--dest", str(dest), "--sha256", ARCHIVE_SHA.upper(), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["verified"] is True and report["sha256"] == ARCHIVE_SHA
    assert report["files"] == FILES and report["bytes"] == len(ARCHIVE)
    assert report["unpacked_bytes"] == UNPACKED
    assert report["already_present"] is False and report["dest"] == str(dest)
    audio, rate = sf.read(dest / WAVS[0])
    assert rate == 16000 and len(audio) == 1600
    assert (dest / "validation_list.txt").read_text().strip() == WAVS[1]
    assert (dest / NOISE).is_file()
    marker = json.loads((dest / dl.MARKER_NAME).read_text())
    assert marker["url"] == url and marker["sha256"] == ARCHIVE_SHA
    # nothing left beside it: no .part, no notes, no temporary folder, no lock
    assert sorted(p.name for p in dest.parent.iterdir()) == ["gsc"]


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.state.drop_after["/speech_commands_v0.02.tar.gz"] = 5000
    dest = tmp_path / "gsc"
    result = dl.download_dataset(
        server.base + "/speech_commands_v0.02.tar.gz",
        dest,
        sha256=ARCHIVE_SHA,
        progress=False,
        retry_wait=0,
    )
    assert result.resumed and result.verified and result.sha256 == ARCHIVE_SHA
    assert [r for _, r in server.state.requests] == [None, "bytes=5000-"]
    assert (dest / WAVS[2]).read_bytes() == _wav_bytes(2)


def test_interrupted_download_keeps_part_and_next_run_resumes(server, tmp_path):
    server.state.drop_after["/speech_commands_v0.02.tar.gz"] = 3000
    dest = tmp_path / "gsc"
    url = server.base + "/speech_commands_v0.02.tar.gz"
    with pytest.raises(KwsError, match="interrupted after 3,000 of .* run the same command again"):
        dl.download_dataset(url, dest, sha256=ARCHIVE_SHA, progress=False, retries=0)
    assert not dest.exists()
    assert (tmp_path / "gsc.part").read_bytes() == ARCHIVE[:3000]
    result = run_cli("--url", url, "--dest", str(dest), "--sha256", ARCHIVE_SHA)
    assert result.exit_code == 0, result.output
    assert "resumed" in result.stdout and "sha256 verified" in result.stdout
    assert server.state.requests[-1][1] == "bytes=3000-"
    assert not (tmp_path / "gsc.part").exists()


def test_existing_part_file_is_resumed(server, tmp_path):
    (tmp_path / "gsc.part").write_bytes(ARCHIVE[:1234])
    url = server.base + "/speech_commands_v0.02.tar.gz"
    result = dl.download_dataset(url, tmp_path / "gsc", sha256=ARCHIVE_SHA, progress=False)
    assert result.resumed and result.sha256 == ARCHIVE_SHA
    assert server.state.requests == [("/speech_commands_v0.02.tar.gz", "bytes=1234-")]


def test_complete_part_file_is_not_downloaded_again(server, tmp_path):
    """A crash after the download but before the rename: the server answers 416, we go on."""
    (tmp_path / "gsc.part").write_bytes(ARCHIVE)
    url = server.base + "/speech_commands_v0.02.tar.gz"
    result = dl.download_dataset(url, tmp_path / "gsc", sha256=ARCHIVE_SHA, progress=False)
    assert result.files == FILES and result.sha256 == ARCHIVE_SHA
    assert len(server.state.requests) == 1


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.state.ignore_range = True
    (tmp_path / "gsc.part").write_bytes(b"stale bytes from some other file" * 10)
    url = server.base + "/speech_commands_v0.02.tar.gz"
    result = dl.download_dataset(url, tmp_path / "gsc", sha256=ARCHIVE_SHA, progress=False)
    assert result.sha256 == ARCHIVE_SHA and not result.resumed
    assert server.state.requests[0][1] == "bytes=320-"  # asked, got a 200, started over


def test_part_file_from_another_url_is_not_continued(server, tmp_path):
    (tmp_path / "gsc.part").write_bytes(ARCHIVE[:100])
    (tmp_path / "gsc.part.json").write_text(json.dumps({"url": "http://elsewhere/x.tar.gz"}))
    url = server.base + "/speech_commands_v0.02.tar.gz"
    result = dl.download_dataset(url, tmp_path / "gsc", sha256=ARCHIVE_SHA, progress=False)
    assert result.sha256 == ARCHIVE_SHA
    assert server.state.requests[0][1] is None


def test_wrong_checksum_fails_and_leaves_no_dataset(server, tmp_path):
    dest = tmp_path / "gsc"
    url = server.base + "/speech_commands_v0.02.tar.gz"
    result = run_cli("--url", url, "--dest", str(dest), "--sha256", "0" * 64)
    assert_one_line_error(result, "checksum mismatch", "0" * 64, ARCHIVE_SHA, "deleted")
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []  # the bad archive is deleted too


def _evil_members(tmp_path):
    outside = str(tmp_path / "pwned.txt")
    return {
        "dotdot": [("./yes/../../pwned.txt", b"x", {})],
        "absolute": [(outside, b"x", {})],
        "symlink_out": [("./yes/link", b"", {"type": tarfile.SYMTYPE, "linkname": "../../.."})],
        "symlink_abs": [("./yes/link", b"", {"type": tarfile.SYMTYPE, "linkname": outside})],
        "hardlink_out": [("./yes/hl", b"", {"type": tarfile.LNKTYPE, "linkname": "../pwned.txt"})],
        "fifo": [("./yes/fifo", b"", {"type": tarfile.FIFOTYPE})],
        "device": [("./yes/dev", b"", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3})],
        # a link that stays inside, then a file written through it
        "through_link": [
            ("./alias", b"", {"type": tarfile.SYMTYPE, "linkname": "yes"}),
            ("./alias/new.wav", b"x", {}),
        ],
    }


@pytest.mark.parametrize(
    "kind",
    [
        "dotdot",
        "absolute",
        "symlink_out",
        "symlink_abs",
        "hardlink_out",
        "fifo",
        "device",
        "through_link",
    ],
)
def test_unsafe_archive_is_refused(tmp_path, kind):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(make_archive(_evil_members(tmp_path)[kind]))  # bad member comes last
    dest = tmp_path / "out" / "gsc"
    result = run_cli("--url", archive.as_uri(), "--dest", str(dest))
    assert_one_line_error(result, "refused", str(archive))
    assert not dest.exists() and not (tmp_path / "pwned.txt").exists()
    assert list((tmp_path / "out").iterdir()) == []  # the half-extracted temp folder is gone
    assert archive.exists()  # the user's own file is never deleted


@pytest.mark.parametrize(
    "kind",
    [
        "dotdot",
        "absolute",
        "symlink_out",
        "symlink_abs",
        "hardlink_out",
        "fifo",
        "device",
        "through_link",
    ],
)
def test_own_checks_refuse_without_the_tar_filter(tmp_path, kind, monkeypatch):
    """Python 3.11.4+ has tar filters; our checks must hold on their own (older Pythons)."""
    monkeypatch.setattr(dl, "_TAR_FILTER", None)
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(make_archive(_evil_members(tmp_path)[kind]))
    with pytest.raises(KwsError, match="refused .* member"):
        dl.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "pwned.txt").exists()
    assert not (tmp_path / "out" / "yes" / "new.wav").exists()


def test_symlink_inside_the_dataset_is_allowed(tmp_path):
    extra = [("./yes/alias.wav", b"", {"type": tarfile.SYMTYPE, "linkname": "aa11_nohash_0.wav"})]
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(make_archive(extra))
    dl.safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "yes" / "alias.wav").read_bytes() == _wav_bytes(0)


def test_rerun_is_a_noop(server, tmp_path):
    dest = tmp_path / "gsc"
    url = server.base + "/speech_commands_v0.02.tar.gz"
    assert run_cli("--url", url, "--dest", str(dest)).exit_code == 0
    seen = len(server.state.requests)
    again = run_cli("--url", url, "--dest", str(dest))
    assert again.exit_code == 0 and "nothing to do" in again.stdout
    as_json = json.loads(run_cli("--url", url, "--dest", str(dest), "--json").stdout)
    assert as_json["already_present"] is True and as_json["files"] == FILES
    assert len(server.state.requests) == seen  # not even a request


def test_leftovers_of_a_crash_are_cleaned_and_foreign_folder_is_kept(server, tmp_path):
    stale = tmp_path / ".gsc.extract-deadbeef"
    (stale / "yes").mkdir(parents=True)
    (stale / dl.PARTIAL_MARKER).write_text("{}")  # what an interrupted run of ours leaves
    look_alike = tmp_path / ".gsc.extract-mine"  # the same kind of name, but not ours
    (look_alike / "keep.txt").parent.mkdir()
    (look_alike / "keep.txt").write_text("precious")
    url = server.base + "/speech_commands_v0.02.tar.gz"
    dl.download_dataset(url, tmp_path / "gsc", progress=False)
    assert not stale.exists()
    assert (look_alike / "keep.txt").read_text() == "precious"
    # a folder that is not a finished download is never overwritten
    (tmp_path / "mine" / "keep.txt").parent.mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("precious")
    result = run_cli("--url", url, "--dest", str(tmp_path / "mine"))
    assert_one_line_error(result, "is not a finished kws-ghost download")
    assert (tmp_path / "mine" / "keep.txt").read_text() == "precious"


def test_corrupt_archive_is_one_line_error(server, tmp_path):
    server.state.files["/broken.tar.gz"] = b"\x1f\x8b this is not really gzip" * 50
    result = run_cli("--url", server.base + "/broken.tar.gz", "--dest", str(tmp_path / "d"))
    assert_one_line_error(result, "not a readable tar archive", "deleted")
    assert list(tmp_path.iterdir()) == []
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(ARCHIVE[: len(ARCHIVE) // 2])
    result = run_cli("--url", str(truncated), "--dest", str(tmp_path / "d"))
    assert_one_line_error(result, "not a readable tar archive")
    assert not (tmp_path / "d").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_is_one_line_error(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}/speech_commands_v0.02.tar.gz"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kws_ghost",
            "download",
            "--url",
            url,
            "--dest",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "connection refused" in result.stderr and url in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path, needle", [("/missing.tar.gz", "HTTP 404"), ("/oops", "HTTP 500")])
def test_http_errors_are_one_line(server, tmp_path, path, needle):
    server.state.status["/oops"] = 500
    result = run_cli("--url", server.base + path, "--dest", str(tmp_path / "d"))
    assert_one_line_error(result, needle)
    assert not (tmp_path / "d").exists()


def test_timeout_is_one_line(server, tmp_path):
    result = run_cli(
        "--url", server.base + "/hang", "--dest", str(tmp_path / "d"), "--timeout", "0.3"
    )
    assert_one_line_error(result, "timed out")


def test_file_url_and_plain_path(tmp_path, monkeypatch):
    archive = tmp_path / "speech_commands_v0.02.tar.gz"
    archive.write_bytes(ARCHIVE)
    result = run_cli(
        "--url", archive.as_uri(), "--dest", str(tmp_path / "a"), "--sha256", ARCHIVE_SHA
    )
    assert result.exit_code == 0 and "sha256 verified" in result.stdout, result.output
    assert (tmp_path / "a" / WAVS[0]).read_bytes() == _wav_bytes(0)
    monkeypatch.chdir(tmp_path)
    result = run_cli("--url", archive.name, "--json")  # a plain path; default dest from its name
    report = json.loads(result.stdout)
    assert report["dest"] == "data/speech_commands_v0.02" and report["verified"] is False
    assert report["url"] == archive.as_uri()
    text = run_cli("--url", archive.name, "--dest", "b")
    assert text.exit_code == 0 and "NOT verified" in text.stdout, text.output
    assert_one_line_error(run_cli("--url", "missing.tar.gz"), "no such archive")


def test_official_archives_and_defaults():
    v2 = dl.known_archive("v2")
    assert v2.url == "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"
    assert dl.known_sha256(v2.url) == v2.sha256 and v2.folder == "speech_commands_v0.02"
    assert dl.known_archive("v1").sha256.startswith("743935421bb5")
    test_set = dl.known_archive("v1", test_set=True)
    assert test_set.sha256 is None and test_set.folder == "speech_commands_v0.01_test"
    assert test_set.url.endswith("/speech_commands_test_set_v0.01.tar.gz")
    assert dl.archive_stem("http://x/y/speech_commands_v0.02.tar.gz") == "speech_commands_v0.02"
    result = run_cli("--sha256", "not-a-checksum", "--url", "x.tar.gz")
    assert_one_line_error(result, "not a sha256")


def test_text_report_gives_the_unpacked_bytes(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(ARCHIVE)
    result = run_cli("--url", str(archive), "--dest", str(tmp_path / "gsc"))
    assert result.exit_code == 0, result.output
    assert f"unpacked {FILES} files ({UNPACKED:,} bytes)" in result.stdout, result.stdout
    assert f"({len(ARCHIVE):,} bytes) into" in result.stdout  # the archive's own size, named so
    marker = json.loads((tmp_path / "gsc" / dl.MARKER_NAME).read_text())
    assert marker["unpacked_bytes"] == UNPACKED and marker["bytes"] == len(ARCHIVE)


def _disk(free):
    """A stand-in for shutil.disk_usage: ``free`` is a number or a function of the call count."""
    calls = []

    def usage(path):
        calls.append(str(path))
        value = free(len(calls)) if callable(free) else free
        return shutil._ntuple_diskusage(10**12, 10**12 - value, value)

    usage.calls = calls
    return usage


def test_too_little_space_is_found_before_unpacking(server, tmp_path, monkeypatch):
    url = server.base + "/speech_commands_v0.02.tar.gz"
    dest = tmp_path / "gsc"
    # room for the archive (the download goes through), not for what it unpacks to
    monkeypatch.setattr(dl.shutil, "disk_usage", _disk(len(ARCHIVE) + 1))
    result = run_cli("--url", url, "--dest", str(dest), "--sha256", ARCHIVE_SHA)
    assert_one_line_error(result, "not enough disk space", str(tmp_path), "needs", "free")
    assert dl.unpacked_size(tmp_path / "gsc.part") > UNPACKED > len(ARCHIVE)
    assert not dest.exists()
    # nothing half-unpacked beside it; the verified archive is kept for the next run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gsc.part", "gsc.part.json"]
    monkeypatch.undo()
    again = run_cli("--url", url, "--dest", str(dest), "--sha256", ARCHIVE_SHA)
    assert again.exit_code == 0, again.output
    assert (dest / WAVS[0]).read_bytes() == _wav_bytes(0)


def test_space_running_out_while_unpacking_stops_cleanly(tmp_path, monkeypatch):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(ARCHIVE)
    # enough at the start; then another program fills the disk
    monkeypatch.setattr(dl.shutil, "disk_usage", _disk(lambda n: 10**9 if n == 1 else 100))
    monkeypatch.setattr(dl, "_SPACE_CHECK_BYTES", 1)
    result = run_cli("--url", str(archive), "--dest", str(tmp_path / "out" / "gsc"))
    assert_one_line_error(result, "not enough disk space", str(tmp_path / "out"), "more")
    assert list((tmp_path / "out").iterdir()) == []  # the half-unpacked folder is gone
    assert archive.read_bytes() == ARCHIVE


def test_full_disk_while_unpacking_says_so(tmp_path, monkeypatch):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(ARCHIVE)
    real = tarfile.TarFile.extract
    count = []

    def extract(self, member, *args, **kwargs):
        count.append(member.name)
        if len(count) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, member, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extract", extract)
    result = run_cli("--url", str(archive), "--dest", str(tmp_path / "out" / "gsc"))
    assert_one_line_error(result, "no space left on device", str(tmp_path / "out" / "gsc"))
    assert list((tmp_path / "out").iterdir()) == []


def test_a_second_download_into_the_same_folder_waits_its_turn(tmp_path):
    import filelock

    dest = tmp_path / "gsc"
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(ARCHIVE)
    held = filelock.FileLock(str(tmp_path / ".gsc.lock"))
    with held:
        result = subprocess.run(
            [sys.executable, "-m", "kws_ghost", "download", "--url", str(archive)]
            + ["--dest", str(dest)],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 1 and "another kws-ghost download" in result.stderr
        assert result.stderr.count("\n") == 1 and not dest.exists()
    assert run_cli("--url", str(archive), "--dest", str(dest)).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz", "gsc"]  # lock removed


@pytest.mark.parametrize("where", ["cwd", "dot"])
def test_dest_that_is_the_current_folder_is_refused(tmp_path, monkeypatch, where):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(ARCHIVE)
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    dest = str(here) if where == "cwd" else "."
    result = run_cli("--url", str(archive), "--dest", dest)
    assert_one_line_error(result, "--dest")
    assert here.is_dir() and list(here.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz", "empty"]


def test_no_progress_bars_in_a_log_or_with_json(tmp_path, monkeypatch):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(ARCHIVE)
    seen = []
    real = dl._progress_bar

    def spy(total, desc, enabled, initial=0):
        seen.append(enabled)
        return real(total, desc, enabled, initial)

    monkeypatch.setattr(dl, "_progress_bar", spy)
    for dest, extra in (("a", ["--json"]), ("b", [])):
        result = run_cli("--url", str(archive), "--dest", str(tmp_path / dest), *extra)
        assert result.exit_code == 0 and "\r" not in result.output, result.output
    assert len(seen) >= 4 and seen.count(False) == len(seen)  # the CLI decided: off
