"""Fetch, verify and safely unpack a Speech Commands archive into a folder, atomically.

The steps, and why each exists:

1. ``DEST/.kws-ghost-complete`` present -> nothing to do (a rerun is a no-op).
2. Download to ``DEST.part`` beside the destination, resuming with an HTTP ``Range`` request when a
   partial file is there (a 2.3 GB download should survive a dropped connection). A small
   ``DEST.part.json`` remembers the URL and the server's validators so a partial file from another
   URL is never continued, and ``If-Range`` makes a changed file restart from zero.
3. Check the sha256 *before* extracting: a wrong checksum deletes the downloaded archive and leaves
   no dataset folder.
4. Sum the members' sizes from the tar headers and check the free space before unpacking (and
   again as the files go out): a full disk stops the run cleanly, with the archive kept.
5. Extract into a hidden temporary folder beside the destination, refusing absolute paths, ``..``,
   links that lead outside, writes through links, and device files / fifos (our own checks; the
   ``data`` tar filter is used as well where Python has it).
6. Write the done marker inside the temporary folder, then rename the folder into place: the
   dataset appears whole or not at all, and leftovers of a crashed run (which hold
   ``.kws-ghost-partial``) are removed by the next run. A folder without our markers is never
   deleted or replaced.

The standard library (urllib, tarfile, hashlib), tqdm and filelock (the lock against two runs
into one folder) are used.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import gzip
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Optional, Union

from kws_ghost import __version__
from kws_ghost.errors import KwsError
from kws_ghost.fileio import (
    check_not_cwd,
    disk_error,
    make_work_folder,
    owned_by,
    replace_folder,
    write_marker,
)
from kws_ghost.progress import progress_enabled

PathLike = Union[str, "os.PathLike[str]"]

BASE_URL = "http://download.tensorflow.org/data/"
MARKER_NAME = ".kws-ghost-complete"  # in a finished download: it is ours, and whole
PARTIAL_MARKER = ".kws-ghost-partial"  # in a folder being unpacked (a crashed run's leftover)
CHUNK_BYTES = 1 << 20
DEFAULT_TIMEOUT_S = 30.0
# the `data` filter (Python >= 3.12, backported to 3.8.17+, 3.9.17+, 3.10.12+ and 3.11.4+) as a
# second line of defence behind our own checks
_TAR_FILTER: Optional[str] = "data" if hasattr(tarfile, "data_filter") else None
_FILTER_ERRORS: Any = getattr(tarfile, "FilterError", ())
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class ArchiveInfo:
    """One official archive: where it is, its checksum when known, and its default folder."""

    url: str
    sha256: Optional[str]
    folder: str


# sha256 values from the design notes (section 3). The separate test-set archives have no checksum
# there, so they are downloaded unverified unless the user passes one.
KNOWN_ARCHIVES: dict[str, ArchiveInfo] = {
    "v2": ArchiveInfo(
        BASE_URL + "speech_commands_v0.02.tar.gz",
        "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
        "speech_commands_v0.02",
    ),
    "v1": ArchiveInfo(
        BASE_URL + "speech_commands_v0.01.tar.gz",
        "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d",
        "speech_commands_v0.01",
    ),
    "v2-test": ArchiveInfo(
        BASE_URL + "speech_commands_test_set_v0.02.tar.gz", None, "speech_commands_v0.02_test"
    ),
    "v1-test": ArchiveInfo(
        BASE_URL + "speech_commands_test_set_v0.01.tar.gz", None, "speech_commands_v0.01_test"
    ),
}


def known_archive(version: str = "v2", test_set: bool = False) -> ArchiveInfo:
    """The official archive for ``version`` ('v2' or 'v1'), or its separate test set."""
    key = version + ("-test" if test_set else "")
    if key not in KNOWN_ARCHIVES:
        raise KwsError(f"unknown Speech Commands version {version!r}; use v2 or v1")
    return KNOWN_ARCHIVES[key]


def known_sha256(url: str) -> Optional[str]:
    """The published checksum of ``url`` when it is one of the official archives."""
    for info in KNOWN_ARCHIVES.values():
        if info.url == url:
            return info.sha256
    return None


def archive_stem(url: str) -> str:
    """``.../speech_commands_v0.02.tar.gz`` -> ``speech_commands_v0.02`` (default folder name)."""
    name = os.path.basename(urllib.parse.urlparse(url).path.rstrip("/")) or "dataset"
    for suffix in (".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tar"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


@dataclasses.dataclass
class DownloadResult:
    """What ``download_dataset`` did; ``to_dict`` is the CLI's ``--json`` object."""

    dest: Path
    url: str
    sha256: Optional[str]  # of the archive as received
    expected_sha256: Optional[str]
    verified: bool  # sha256 compared with a known or given checksum, and equal
    bytes: int  # of the archive
    files: int
    unpacked_bytes: Optional[int] = None  # of the files unpacked (None: an older marker)
    already_present: bool = False
    resumed: bool = False  # continued a partial download with an HTTP Range request
    completed_at: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["dest"] = str(self.dest)
        return out


def normalize_sha256(value: Optional[str]) -> Optional[str]:
    """Lower-case a hex sha256, or raise a KwsError saying what a valid one looks like."""
    if value is None:
        return None
    cleaned = value.strip().lower()
    if not _SHA256_RE.match(cleaned):
        raise KwsError(f"--sha256 {value!r} is not a sha256 (64 hexadecimal characters)")
    return cleaned


def download_dataset(
    url: str,
    dest: PathLike,
    sha256: Optional[str] = None,
    progress: Optional[bool] = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = 3,
    retry_wait: float = 2.0,
) -> DownloadResult:
    """Download ``url`` (http, https, file:// or a local path) and unpack it as folder ``dest``.

    ``sha256``: expected checksum; when None the published one is used for official URLs, otherwise
    the archive is unpacked unverified (``result.verified`` is False). ``retries``: how many times
    a transfer that was making progress and then broke is resumed before giving up.
    ``progress``: draw progress bars (None: only on a terminal). Raises ``KwsError`` with one line
    for every failure; ``dest`` then does not exist (or is untouched). ``dest`` must be absent, an
    empty folder, or an earlier download of the same archive (then nothing is done).
    """
    dest = Path(dest).expanduser()
    if not dest.name or dest.name in (".", ".."):
        raise KwsError(f"--dest {str(dest)!r} must name a folder to create (e.g. data/gsc)")
    expected = normalize_sha256(sha256) if sha256 else known_sha256(url)
    source = _local_source(url)
    if source is not None:
        url = source.resolve().as_uri()  # the same archive, whatever the working directory
    present = _already_present(dest, url, expected)
    if present is not None:
        return present
    check_not_cwd(dest, "--dest")  # an empty current folder would be replaced
    _make_parent(dest)
    with _lock(dest):
        present = _already_present(dest, url, expected)
        if present is not None:
            return present
        _clean_leftovers(dest)
        if source is not None:
            return _from_local(source, url, dest, expected, progress)
        part, meta = _part_paths(dest)
        fetch = _fetch(url, part, meta, progress, timeout, retries, retry_wait)
        actual = fetch.hasher.hexdigest()
        if expected is not None and actual != expected:
            _remove_quietly(part, meta)
            raise KwsError(
                f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}; "
                f"deleted the downloaded archive, run again to download it afresh "
                f"(or check --url / --sha256)"
            )
        try:
            files, unpacked = _extract_into_place(
                part, dest, url, actual, expected, fetch.total, progress
            )
        except _BadArchive as exc:
            _remove_quietly(part, meta)
            raise KwsError(f"{exc}; deleted the downloaded archive {part}") from None
        _remove_quietly(part, meta)
        return DownloadResult(
            dest=dest,
            url=url,
            sha256=actual,
            expected_sha256=expected,
            verified=expected is not None,
            bytes=fetch.total,
            files=files,
            unpacked_bytes=unpacked,
            resumed=fetch.resumed,
            completed_at=_read_marker(dest).get("completed_at"),
        )


# -------------------------------------------------------------------------------------------------
# done marker, lock, leftovers


def _marker_path(dest: Path) -> Path:
    return dest / MARKER_NAME


def _read_marker(dest: Path) -> dict[str, Any]:
    try:
        data = json.loads(_marker_path(dest).read_text())
    except (OSError, ValueError) as exc:
        raise KwsError(
            f"{_marker_path(dest)} is unreadable ({exc}); remove {dest} to download again"
        ) from None
    return data if isinstance(data, dict) else {}


def _already_present(dest: Path, url: str, expected: Optional[str]) -> Optional[DownloadResult]:
    """The result of an earlier complete download into ``dest``; None if there is none yet."""
    if not dest.exists():
        return None
    if not dest.is_dir():
        raise KwsError(f"{dest} exists and is not a folder; choose another --dest")
    if not owned_by(dest, MARKER_NAME):
        with contextlib.suppress(OSError):
            if not any(dest.iterdir()):
                return None  # an empty folder: ours to fill
        raise KwsError(
            f"{dest} exists but is not a finished kws-ghost download (no {MARKER_NAME}); "
            f"move it away or choose another --dest"
        )
    marker = _read_marker(dest)
    same = marker.get("sha256") == expected if expected else marker.get("url") == url
    if not same:
        raise KwsError(
            f"{dest} already holds another download ({marker.get('url')}, sha256 "
            f"{marker.get('sha256')}); choose another --dest or remove it"
        )
    return DownloadResult(
        dest=dest,
        url=str(marker.get("url", url)),
        sha256=marker.get("sha256"),
        expected_sha256=marker.get("expected_sha256"),
        verified=bool(marker.get("verified", False)),
        bytes=int(marker.get("bytes", 0)),
        files=int(marker.get("files", 0)),
        unpacked_bytes=marker.get("unpacked_bytes"),
        already_present=True,
        completed_at=marker.get("completed_at"),
    )


def _make_parent(dest: Path) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KwsError(f"cannot create {dest.parent}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _lock(dest: Path) -> Iterator[None]:
    """One download per destination at a time (two would write the same .part file).

    A ``filelock`` lock file beside ``dest`` (fcntl on Unix, msvcrt on Windows). It is removed
    while still held, once the work is done: a second run that opened it just before fails to
    lock it, and one that comes later makes a fresh file and finds the download complete.
    """
    import filelock

    lock_path = dest.with_name(f".{dest.name}.lock")
    lock = filelock.FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise KwsError(
            f"another kws-ghost download into {dest} is running (lock {lock_path}); "
            f"wait for it to finish"
        ) from None
    except OSError as exc:
        raise KwsError(f"cannot create {lock_path}: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):  # Windows cannot remove an open file; filelock does
            lock_path.unlink()
        lock.release()


def _clean_leftovers(dest: Path) -> None:
    """Remove unpacking folders a crashed run left beside ``dest`` (we hold the lock).

    Only folders that hold our marker: a look-alike name without one is someone else's.
    """
    for leftover in dest.parent.glob(f".{dest.name}.extract-*"):
        if leftover.is_dir() and not leftover.is_symlink():
            if owned_by(leftover, PARTIAL_MARKER) or owned_by(leftover, MARKER_NAME):
                shutil.rmtree(leftover, ignore_errors=True)


def _part_paths(dest: Path) -> tuple[Path, Path]:
    part = dest.with_name(dest.name + ".part")
    return part, dest.with_name(dest.name + ".part.json")


def _remove_quietly(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# -------------------------------------------------------------------------------------------------
# sources


def _local_source(url: str) -> Optional[Path]:
    """The file behind a file:// URL or a plain path; None for http(s); KwsError otherwise."""
    parsed = urllib.parse.urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        if not parsed.netloc:
            raise KwsError(f"{url!r} has no host name")
        return None
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise KwsError(f"{url!r}: only local file:// URLs are supported (file:///path)")
        path = Path(urllib.request.url2pathname(parsed.path))
    elif scheme == "" or (len(scheme) == 1 and os.name == "nt"):  # a path (or C:\...)
        path = Path(url).expanduser()
    else:
        raise KwsError(
            f"unsupported URL scheme {scheme!r} in {url!r}; use http://, https://, file:// "
            f"or a local path"
        )
    if not path.is_file():
        raise KwsError(f"no such archive: {path}")
    return path


def _from_local(
    source: Path, url: str, dest: Path, expected: Optional[str], progress: bool
) -> DownloadResult:
    """A local archive is verified and extracted in place: no copy, and it is never deleted."""
    size = source.stat().st_size
    try:
        actual = _hash_file(source, progress, f"checking {source.name}").hexdigest()
    except OSError as exc:
        raise KwsError(f"cannot read {source}: {exc.strerror or exc}") from None
    if expected is not None and actual != expected:
        raise KwsError(
            f"checksum mismatch for {source}: expected sha256 {expected}, got {actual}; "
            f"the file was left as it is"
        )
    files, unpacked = _extract_into_place(source, dest, url, actual, expected, size, progress)
    return DownloadResult(
        dest=dest,
        url=url,
        sha256=actual,
        expected_sha256=expected,
        verified=expected is not None,
        bytes=size,
        files=files,
        unpacked_bytes=unpacked,
        completed_at=_read_marker(dest).get("completed_at"),
    )


def _progress_bar(
    total: Optional[int], desc: str, enabled: Optional[bool], initial: int = 0
) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=not progress_enabled(enabled),
        leave=False,
    )


def _hash_file(path: Path, progress: bool, desc: str) -> Any:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle, _progress_bar(path.stat().st_size, desc, progress) as bar:
        while chunk := handle.read(CHUNK_BYTES):
            hasher.update(chunk)
            bar.update(len(chunk))
    return hasher


# -------------------------------------------------------------------------------------------------
# HTTP download with resume


@dataclasses.dataclass
class _Fetch:
    hasher: Any
    total: int
    resumed: bool


class _Interrupted(Exception):
    """The body of a response broke off; the partial file is intact and can be resumed."""


def _fetch(
    url: str,
    part: Path,
    meta: Path,
    progress: bool,
    timeout: float,
    retries: int,
    retry_wait: float,
) -> _Fetch:
    """Complete ``part`` from ``url``, resuming what is there; returns its hash and size."""
    state = _PartState(part, meta, url, progress)
    failures = 0
    while True:
        before = state.size
        try:
            return state.attempt(timeout)
        except _Interrupted as exc:
            made_progress = state.size > before
            if made_progress and failures < retries:
                failures += 1
                time.sleep(retry_wait * failures)
                continue
            total = f" of {state.total:,}" if state.total else ""
            raise KwsError(
                f"download of {url} interrupted after {state.size:,}{total} bytes ({exc}); "
                f"run the same command again to resume from {part}"
            ) from None


class _PartState:
    """The partial file, its running sha256 and what the server told us about it."""

    def __init__(self, part: Path, meta: Path, url: str, progress: bool) -> None:
        self.part, self.meta, self.url, self.progress = part, meta, url, progress
        self.hasher = hashlib.sha256()
        self.hashed = 0
        self.total: Optional[int] = None
        self.resumed = False
        self.validator: Optional[str] = None
        self.restarted_after_416 = False
        self._load_meta()

    @property
    def size(self) -> int:
        try:
            return self.part.stat().st_size
        except FileNotFoundError:
            return 0

    def _load_meta(self) -> None:
        if not self.part.exists():
            _remove_quietly(self.meta)
            return
        try:
            info = json.loads(self.meta.read_text())
        except FileNotFoundError:
            return  # a partial file without notes: resume it; the checksum has the last word
        except (OSError, ValueError):
            info = {}
        if not isinstance(info, dict) or info.get("url") != self.url:
            self._restart()  # begun from another URL (or unreadable notes): start again
            return
        self.validator = info.get("validator")

    def _save_meta(self) -> None:
        from kws_ghost.fileio import write_json

        try:
            write_json(self.meta, {"url": self.url, "validator": self.validator})
        except OSError as exc:
            raise disk_error(self.meta, exc) from None

    def _restart(self) -> None:
        _remove_quietly(self.part, self.meta)
        self.hasher, self.hashed, self.validator = hashlib.sha256(), 0, None

    def _catch_up_hash(self) -> None:
        """Hash what is already in the partial file (once), so the final check needs no re-read."""
        if self.hashed == self.size:
            return
        try:
            self.hasher = _hash_file(self.part, self.progress, "checking partial download")
        except OSError as exc:
            raise KwsError(f"cannot read {self.part}: {exc.strerror or exc}") from None
        self.hashed = self.size

    def attempt(self, timeout: float) -> _Fetch:
        offset = self.size
        headers = {"User-Agent": f"kws-ghost/{__version__}", "Accept-Encoding": "identity"}
        if offset:
            self._catch_up_hash()
            headers["Range"] = f"bytes={offset}-"
            if self.validator:
                headers["If-Range"] = self.validator
        request = urllib.request.Request(self.url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and offset:
                return self._range_not_satisfiable(exc, timeout)
            raise KwsError(_http_error_message(self.url, exc.code, exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise KwsError(
                f"cannot download {self.url}: {_describe_network_error(exc, timeout)}"
            ) from None
        with response:
            status = response.status
            if status == 206 and offset:
                start, total = _parse_content_range(response.headers.get("Content-Range"))
                if start != offset:  # an answer we cannot splice on: take it from the top
                    response.close()
                    self._restart()
                    return self.attempt(timeout)
                self.total = total or _content_length(response, offset)
                self.resumed = True
                mode = "ab"
            elif status == 200:
                if offset:
                    self._restart()  # the server ignored Range (or the file changed): from zero
                offset = 0
                self.total = _content_length(response, 0)
                mode = "wb"
            else:
                raise KwsError(_http_error_message(self.url, status, response.reason))
            self.validator = _validator(response.headers)
            self._save_meta()
            self._check_space(offset)
            self._receive(response, mode, offset)
        if self.total is not None and self.size != self.total:
            raise _Interrupted(f"got {self.size:,} of {self.total:,} bytes")
        self.total = self.size
        return _Fetch(self.hasher, self.size, self.resumed)

    def _range_not_satisfiable(self, exc: urllib.error.HTTPError, timeout: float) -> _Fetch:
        """416 to ``bytes=N-``: the partial file may already be whole (a crash after download)."""
        _, total = _parse_content_range(exc.headers.get("Content-Range") if exc.headers else None)
        if total is not None and total == self.size:
            self._catch_up_hash()
            self.total = total
            return _Fetch(self.hasher, total, self.resumed)
        if self.restarted_after_416:
            raise KwsError(_http_error_message(self.url, exc.code, exc.reason))
        self.restarted_after_416 = True
        self._restart()
        return self.attempt(timeout)

    def _check_space(self, offset: int) -> None:
        if self.total is None:
            return
        need = self.total - offset
        with contextlib.suppress(OSError):
            free = shutil.disk_usage(self.part.parent).free
            if free < need:
                raise KwsError(
                    f"not enough disk space in {self.part.parent}: the download needs "
                    f"{_human(need)} more, {_human(free)} free"
                )

    def _receive(self, response: Any, mode: str, offset: int) -> None:
        try:
            handle = open(self.part, mode)
        except OSError as exc:
            raise disk_error(self.part, exc) from None
        if mode == "wb":
            self.hasher, self.hashed = hashlib.sha256(), 0
        name = os.path.basename(urllib.parse.urlparse(self.url).path) or self.url
        with handle, _progress_bar(self.total, name, self.progress, initial=offset) as bar:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Interrupted(_describe_network_error(exc, None)) from None
                if not chunk:
                    break
                try:
                    handle.write(chunk)
                except OSError as exc:
                    raise disk_error(self.part, exc) from None
                self.hasher.update(chunk)
                self.hashed += len(chunk)
                bar.update(len(chunk))
            try:
                handle.flush()
            except OSError as exc:
                raise disk_error(self.part, exc) from None


def _content_length(response: Any, offset: int) -> Optional[int]:
    value = response.headers.get("Content-Length")
    try:
        return offset + int(value) if value is not None else None
    except ValueError:
        return None


def _parse_content_range(value: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """``bytes 100-199/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000)."""
    if not value:
        return None, None
    match = re.match(r"^\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*$", value)
    if not match:
        return None, None
    start = int(match.group(1)) if match.group(1) else None
    total = int(match.group(2)) if match.group(2) != "*" else None
    return start, total


def _validator(headers: Any) -> Optional[str]:
    """A strong ETag, else Last-Modified: what If-Range accepts to detect a changed file."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _http_error_message(url: str, code: int, reason: Any) -> str:
    hint = {404: " (no such file on the server; check --url)", 403: " (access denied)"}.get(
        code, " (a server problem; try again later)" if code >= 500 else ""
    )
    return f"cannot download {url}: HTTP {code} {reason or ''}".rstrip() + hint


def _describe_network_error(exc: BaseException, timeout: Optional[float]) -> str:
    reason: Any = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve the host name ({reason.strerror or reason}); check the URL"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the server running? check the URL)"
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"timed out after {timeout:g} s" if timeout else "timed out"
    if isinstance(reason, ssl.SSLError):
        return f"TLS error: {reason}"
    if isinstance(reason, http.client.IncompleteRead):
        return "the connection closed early"
    if isinstance(reason, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


# -------------------------------------------------------------------------------------------------
# safe extraction


class _BadArchive(KwsError):
    """The archive is unreadable or refused (so a downloaded copy is worth deleting)."""


def _extract_into_place(
    archive: Path,
    dest: Path,
    url: str,
    actual: str,
    expected: Optional[str],
    size: int,
    progress: Optional[bool],
) -> tuple[int, int]:
    """Extract beside ``dest``, add the done marker, rename into place.

    First a pass over the tar headers sums what the files will take on disk, so a disk too small
    is found before anything is written (and watched again as the files go out). Returns the
    number of files and their bytes.
    """
    need = unpacked_size(archive, progress)
    _check_room(dest.parent, need, archive)
    temp = make_work_folder(dest, "extract", PARTIAL_MARKER)
    try:
        files, unpacked = safe_extract(archive, temp, progress, need=need, shown_as=dest)
        (temp / PARTIAL_MARKER).unlink(missing_ok=True)
        completed = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        info = {
            "url": url,
            "sha256": actual,
            "expected_sha256": expected,
            "verified": expected is not None,
            "bytes": size,
            "files": files,
            "unpacked_bytes": unpacked,
            "completed_at": completed,
        }
        write_marker(temp, MARKER_NAME, info)
        replace_folder(temp, dest, MARKER_NAME)  # dest is absent or empty (checked under the lock)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
    return files, unpacked


# What a file takes on disk beyond its bytes: its last block, rounded up, and an inode.
_BLOCK_BYTES = 4096
_SPACE_CHECK_BYTES = 64 << 20  # look at the free space again after this much was unpacked


def _on_disk(member: tarfile.TarInfo) -> int:
    data = -(-member.size // _BLOCK_BYTES) * _BLOCK_BYTES if member.isreg() else 0
    return data + _BLOCK_BYTES


def _check_room(folder: Path, need: int, archive: Path) -> None:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # the space cannot be told here; a full disk is still caught when writing
    if free < need:
        raise KwsError(
            f"not enough disk space in {folder} to unpack {archive}: needs {_human(need)} more, "
            f"{_human(free)} free; nothing is left half-unpacked: free some space and run again"
        )


@contextlib.contextmanager
def _reading_tar(archive: Path, desc: str, progress: Optional[bool]) -> Iterator[tarfile.TarFile]:
    """The archive opened for one sequential pass; read errors become one-line KwsErrors."""
    try:
        handle = open(archive, "rb")
    except OSError as exc:
        raise KwsError(f"cannot read {archive}: {exc.strerror or exc}") from None
    bar = _progress_bar(archive.stat().st_size, f"{desc} {archive.name}", progress)
    try:
        with handle, bar, tarfile.open(fileobj=_CountingReader(handle, bar), mode="r|*") as tar:
            yield tar
    except KwsError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _BadArchive(
            f"{archive} is not a readable tar archive ({exc or type(exc).__name__}); "
            f"it is corrupt, truncated or not a .tar.gz"
        ) from None


def unpacked_size(archive: PathLike, progress: Optional[bool] = False) -> int:
    """Bytes the archive's members will take on disk (sizes from the tar headers, rounded up to
    4 KiB blocks, plus a block per member). One pass over the archive."""
    with _reading_tar(Path(archive), "sizing", progress) as tar:
        return sum(_on_disk(member) for member in tar)


class _CountingReader:
    """A read-only file wrapper that advances a progress bar by the compressed bytes read."""

    def __init__(self, handle: IO[bytes], bar: Any) -> None:
        self._handle, self._bar = handle, bar

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._bar.update(len(data))
        return data


def safe_extract(
    archive: PathLike,
    dest: PathLike,
    progress: Optional[bool] = False,
    need: Optional[int] = None,
    shown_as: Optional[PathLike] = None,
) -> tuple[int, int]:
    """Extract a (gzip/bzip2/xz) tar archive into folder ``dest``, refusing anything unsafe.

    Refused, with a KwsError naming the member: absolute paths, ``..`` components, links whose
    target lies outside ``dest``, members written through a link, device files and fifos. One
    sequential pass (streaming mode). ``need``: bytes the whole archive takes on disk
    (``unpacked_size``); the free space is checked against what is still to come as it goes.
    ``shown_as``: the folder that messages name (default ``dest``; a temporary folder's final
    name). Returns the number of regular files and their bytes. On refusal, what was extracted so
    far stays in ``dest``: extract into a fresh folder (as ``download_dataset`` does) to keep it
    all-or-nothing.
    """
    archive, dest = Path(archive), Path(dest)
    shown = Path(shown_as) if shown_as is not None else dest
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(dest, exc) from None
    root = os.path.realpath(dest)
    files = unpacked = on_disk = checked = 0
    try:
        with _reading_tar(archive, "unpacking", progress) as tar:
            for member in tar:
                if need is not None and on_disk - checked >= _SPACE_CHECK_BYTES:
                    _check_room(shown.parent, need - on_disk, archive)
                    checked = on_disk
                name = _checked_member(member, root, str(archive))
                if name is None:
                    continue
                clean = _sanitized(member)
                try:
                    if _TAR_FILTER is not None:
                        tar.extract(clean, root, filter=_TAR_FILTER)
                    else:
                        tar.extract(clean, root)
                except _FILTER_ERRORS as exc:
                    raise _BadArchive(f"refused {archive}: unsafe member ({exc})") from None
                files += clean.isreg()
                unpacked += clean.size if clean.isreg() else 0
                on_disk += _on_disk(clean)
    except OSError as exc:
        raise disk_error(shown, exc) from None
    if files == 0:
        raise _BadArchive(f"{archive} holds no files")
    return files, unpacked


def _checked_member(member: tarfile.TarInfo, root: str, archive: str) -> Optional[str]:
    """The member's clean relative name if it is safe to extract under ``root``; None to skip it.

    These checks do not rely on the tar filters of newer Pythons (which we use as well).
    """
    name = member.name

    def refuse(why: str) -> KwsError:
        return _BadArchive(f"refused {archive}: member {name!r} {why}")

    if "\x00" in name:
        raise refuse("has a NUL byte in its name")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise refuse("has an absolute path")
    parts = [p for p in re.split(r"[/\\]+", name) if p not in ("", ".")]
    if ".." in parts:
        raise refuse("contains '..'")
    if not parts:
        return None  # the archive's own root ("./"): nothing to create
    if member.ischr() or member.isblk() or member.isfifo():
        raise refuse("is a device file or fifo")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise refuse("has an unsupported type")
    rel = os.path.join(*parts)
    target = os.path.join(root, rel)
    parent = os.path.dirname(target)
    if os.path.realpath(parent) != os.path.normpath(parent):
        raise refuse("would be written through a symbolic link")
    if os.path.islink(target):
        raise refuse("would replace a symbolic link")
    if member.issym():
        link = member.linkname
        if not link or link.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", link):
            raise refuse(f"is a symbolic link to an absolute path ({link!r})")
        if not _inside(os.path.realpath(os.path.join(parent, link)), root):
            raise refuse(f"is a symbolic link pointing outside the destination ({link!r})")
    if member.islnk():
        link = member.linkname
        link_parts = [p for p in re.split(r"[/\\]+", link) if p not in ("", ".")]
        if link.startswith(("/", "\\")) or ".." in link_parts or not link_parts:
            raise refuse(f"is a hard link outside the destination ({link!r})")
        if not _inside(os.path.realpath(os.path.join(root, *link_parts)), root):
            raise refuse(f"is a hard link pointing outside the destination ({link!r})")
    return rel


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _sanitized(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """No set-uid/set-gid/sticky bits, owner can read/write, no ownership changes (as root)."""
    clean = copy.copy(member)
    if clean.isdir():
        clean.mode = (clean.mode & 0o755) | 0o700
    elif clean.isreg() or clean.islnk():
        clean.mode = (clean.mode & 0o755) | 0o600
    if hasattr(os, "getuid"):
        clean.uid, clean.gid = os.getuid(), os.getgid()
    clean.uname = clean.gname = ""
    return clean
