"""Small file helpers shared by every stage: atomic writes, JSON lines, and the rules that keep the
user's files safe.

The rules (design notes, section 5): nothing on disk is lost or half-written (write a temporary
file, then rename); no command writes over one of its own inputs; no command deletes or replaces a
folder it did not write itself, which a marker file inside the folder tells; a full disk says so
and names the path. Every failure here is a one-line ``KwsError``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Optional

from kws_ghost.errors import KwsError

_FULL_DISK = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Plots carry this in their PNG "Software" text chunk: --plot replaces only a PNG that says so.
PNG_METADATA = {"Software": "kws-ghost"}


# ------------------------------------------------------------------------------------- errors


def disk_error(path: str | os.PathLike[str], exc: OSError) -> KwsError:
    """The one-line error for an OSError met while writing ``path`` (a full disk says so)."""
    if exc.errno in _FULL_DISK:
        return KwsError(f"no space left on device writing {path}; free some space and run again")
    return KwsError(f"cannot write {path}: {exc.strerror or exc}")


def check_output_parent(path: str | os.PathLike[str], option: Optional[str] = None) -> None:
    """Refuse ``path`` when a folder on the way to it is a file (``meeting.wav/c.png``)."""
    ancestor = Path(path).parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        what = f"{option} {path}" if option else f"cannot write {path}"
        raise KwsError(f"{what}: {ancestor} is a file, not a folder")


# ------------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    A crash or an exception leaves ``path`` as it was (old content or absent), never half-written.
    OSErrors of its own steps, and a full disk met while the caller writes, become a one-line
    ``KwsError`` naming ``path``; other exceptions pass through unchanged.
    """
    target = Path(path)
    if target.is_dir():
        raise KwsError(f"cannot write {target}: it is a folder")
    check_output_parent(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent
        )
        os.close(fd)
    except OSError as exc:
        raise disk_error(target, exc) from None
    tmp = Path(tmp_name)
    try:
        # mkstemp makes the file owner-only; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        try:
            os.chmod(tmp, 0o666 & ~umask)
        except OSError as exc:
            raise disk_error(target, exc) from None
        try:
            yield tmp
        except OSError as exc:
            if exc.errno in _FULL_DISK:
                raise disk_error(target, exc) from None
            raise
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise disk_error(target, exc) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; rename it over ``path`` on success."""
    with atomic_path(path) as tmp:
        try:
            handle = open(tmp, mode)
        except OSError as exc:
            raise disk_error(path, exc) from None
        with handle:
            yield handle
            try:
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:
                raise disk_error(path, exc) from None


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")


# ------------------------------------------------------------------------- inputs and outputs


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def refuse_overwriting_inputs(
    outputs: Iterable[str | os.PathLike[str]], inputs: Iterable[str | os.PathLike[str]]
) -> None:
    """Raise a one-line ``KwsError`` when any output is the same file as any input.

    Compares with ``os.path.samefile`` when both exist (hard links, symbolic links, ``./x``),
    else by resolved path. Call it before any work starts.
    """
    input_paths = [Path(p) for p in inputs]
    for output in map(Path, outputs):
        for source in input_paths:
            if _same_file(output, source):
                raise KwsError(
                    f"output {output} is the same file as the input {source}; writing it would "
                    "destroy the input: choose another output path"
                )


def module_available(name: str) -> bool:
    """Whether ``name`` can be imported (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_png_output(path: str | os.PathLike[str], option: str = "--plot") -> Path:
    """Check a PNG output path before any work: a ``.png`` name, not a folder, no file in the way.

    An existing file is replaced only if it is a PNG image itself. Returns the path.
    """
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise KwsError(
            f"{option} {target}: the plot is a PNG image; give a file name ending in .png"
        )
    if not module_available("matplotlib"):  # before any work, so nothing is half done
        raise KwsError(
            f"{option} needs matplotlib, which is not installed: pip install 'kws-ghost[plot]'"
        )
    if target.is_dir():
        raise KwsError(f"{option} {target} is a folder; give a file name such as {target}/plot.png")
    if target.exists():
        try:
            data = target.read_bytes()
        except OSError as exc:
            raise KwsError(f"{option} {target}: cannot read it ({exc.strerror or exc})") from None
        if data[: len(PNG_SIGNATURE)] != PNG_SIGNATURE:
            raise KwsError(
                f"{option} {target} exists and is not a PNG image; it is left as it is: "
                "choose another file name"
            )
        if _png_software(data) != PNG_METADATA["Software"]:
            raise KwsError(
                f"{option} {target} exists and is not a plot kws-ghost wrote; it is left as it "
                "is: choose another file name"
            )
    check_output_parent(target, option)
    return target


def _png_software(data: bytes) -> Optional[str]:
    """The "Software" tEXt chunk of PNG bytes (None when there is none)."""
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"tEXt" and body.startswith(b"Software\x00"):
            return body[len(b"Software\x00") :].decode("latin-1")
        if kind == b"IEND":
            break
        position += 12 + length
    return None


# ------------------------------------------------------------------ folders this tool wrote


def write_marker(
    folder: str | os.PathLike[str], marker: str, info: Optional[Mapping[str, Any]] = None
) -> Path:
    """Write the marker file ``folder/marker`` (a small JSON object) that tells our own folders."""
    from kws_ghost import __version__

    path = Path(folder) / marker
    record = {"tool": f"kws-ghost {__version__}", **(info or {})}
    try:
        path.write_text(json.dumps(record, indent=2) + "\n")
    except OSError as exc:
        raise disk_error(path, exc) from None
    return path


def owned_by(folder: str | os.PathLike[str], marker: str) -> bool:
    """Whether ``folder`` holds the marker file ``marker`` (a regular file, not a link)."""
    path = Path(folder) / marker
    return path.is_file() and not path.is_symlink()


def check_not_cwd(folder: str | os.PathLike[str], option: str = "--out") -> None:
    """Refuse ``folder`` when it is the current folder or one above it."""
    target = Path(folder)
    if not target.exists():
        return
    here = Path.cwd().resolve()
    resolved = target.resolve()
    if resolved == here or resolved in here.parents:
        where = "the current folder" if resolved == here else "a folder above the current one"
        raise KwsError(
            f"{option} {folder} is {where}; it cannot be replaced: choose another folder"
        )


def check_replaceable(folder: str | os.PathLike[str], marker: str, option: str = "--out") -> bool:
    """Check that ``folder`` may be deleted and replaced; True when it exists and is not empty.

    Allowed: no folder, an empty folder, or one holding ``marker`` (an earlier run of ours wrote
    it). Refused with one line: a file or a link in its place, the current folder or one above it,
    and a non-empty folder without the marker, which is never touched.
    """
    target = Path(folder)
    if target.is_symlink():
        raise KwsError(f"{option} {folder} is a symbolic link; give the folder itself")
    if not target.exists():
        return False
    if not target.is_dir():
        raise KwsError(f"{option} {folder} is a file, not a folder")
    check_not_cwd(target, option)
    try:
        empty = not any(target.iterdir())
    except OSError as exc:
        raise KwsError(f"{option} {folder}: cannot list it ({exc.strerror or exc})") from None
    if empty:
        return False
    if not owned_by(target, marker):
        raise KwsError(
            f"{option} {folder} is not empty and holds no {marker}, so kws-ghost did not write "
            "it; it is left as it is: choose another folder or move it away yourself"
        )
    return True


def make_work_folder(dest: str | os.PathLike[str], tag: str, marker: Optional[str] = None) -> Path:
    """A fresh hidden folder ``.NAME.TAG-XXXXXXXX`` beside ``dest`` to build it in.

    Made with the umask's permissions (unlike ``mkdtemp``); with ``marker``, it holds that marker
    from the start, so a leftover of a crashed run can be told from a user's folder.
    """
    target = Path(dest)
    check_output_parent(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            work = target.with_name(f".{target.name}.{tag}-{secrets.token_hex(4)}")
            try:
                work.mkdir()
                break
            except FileExistsError:
                continue
        else:
            raise KwsError(f"cannot create a temporary folder in {target.parent}")
    except OSError as exc:
        raise disk_error(target.parent, exc) from None
    if marker is not None:
        try:
            write_marker(work, marker)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return work


def replace_folder(
    new: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    marker: str,
    keep: Collection[str] = (),
) -> None:
    """Rename the finished folder ``new`` to ``dest``, replacing a ``dest`` we wrote earlier.

    ``dest`` is checked again with ``check_replaceable``; an old one is renamed aside and deleted
    only once ``new`` is in place (put back if the rename fails). ``keep``: paths in the old
    ``dest`` (relative to it) that we did not write: they are moved into the new folder at the
    same place before the old one is deleted (the caller checks they collide with nothing).
    """
    new, target = Path(new), Path(dest)
    old: Optional[Path] = None
    try:
        if check_replaceable(target, marker):
            old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
            target.rename(old)
        elif target.is_dir():
            target.rmdir()
        try:
            new.rename(target)
        except OSError:
            if old is not None:
                old.rename(target)
            raise
    except OSError as exc:
        raise KwsError(f"cannot move {new} into place as {target}: {exc.strerror or exc}") from None
    if old is None:
        return
    for relative in keep:
        try:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            (old / relative).rename(target / relative)
        except OSError as exc:
            raise KwsError(
                f"cannot move your file {relative} into the new {target} "
                f"({exc.strerror or exc}); it is in {old}, left there"
            ) from None
    shutil.rmtree(old, ignore_errors=True)


def files_under(folder: str | os.PathLike[str]) -> set[str]:
    """Every file (and link) below ``folder``, as paths relative to it with "/" separators."""
    root = Path(folder)
    found = set()
    for base, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if (Path(base) / d).is_symlink()]:
            found.add((Path(base) / name).relative_to(root).as_posix())
    return found
