"""File paths: inputs must be regular files; outputs are written atomically (a
temporary file beside the target, fsync, rename), so a failure or Ctrl-C at any
point leaves no partial file behind. A directory output (a Hugging Face folder) is
filled under a temporary name and renamed when complete.

On Linux the temporary file is unnamed (O_TMPFILE) until it is complete, so even a
process killed outright (SIGKILL, the OOM killer) leaves nothing: the kernel frees
an unnamed file when its last descriptor closes. Elsewhere, or on file systems
without O_TMPFILE, it is a named `.qllama-*.part` file, removed on any error.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile

from ..errors import UsageError


def require_regular_file(path: str, error=UsageError) -> None:
    """Refuse a missing path, a directory, a FIFO or a device before opening it
    (opening a FIFO blocks; a device has no size to validate)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise error(f"{path}: not a regular file")


def check_output_path(path: str, force: bool = False, inputs: tuple = ()) -> None:
    """Refuse an output that would overwrite an input or an existing file; --force
    replaces regular files only (never a device, FIFO or directory)."""
    for src in inputs:
        if os.path.exists(path) and os.path.exists(src) and os.path.samefile(path, src):
            raise UsageError(f"{path}: output is the same file as the input")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory")
    if os.path.lexists(path) and not force:
        raise UsageError(f"{path}: already exists (use --force to overwrite)")
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise UsageError(f"{path}: not a regular file; refusing to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"{path}: output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{path}: output directory {parent} is not writable")


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _open_unnamed(parent: str) -> int | None:
    """An unnamed file in `parent`, or None where O_TMPFILE or /proc/self/fd (needed
    to name it at the end) is missing."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(parent, flag | os.O_RDWR, 0o666)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None  # this file system or kernel has no O_TMPFILE
        raise UsageError(f"{parent}: cannot create output: {e.strerror}") from None


def _name_unnamed(fd: int, parent: str, path: str) -> str:
    """Give the unnamed file `fd` a fresh `.qllama-*.part` name in `parent`; returns it.
    linkat(AT_SYMLINK_FOLLOW) of its /proc/self/fd entry: a dir fd makes os.link call
    linkat (link() would try to link the /proc symlink itself)."""
    name = f".qllama-{os.urandom(6).hex()}.part"
    dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dfd, follow_symlinks=True)
    except OSError as e:
        raise UsageError(f"{path}: cannot name the output: {e.strerror}") from None
    finally:
        os.close(dfd)
    return os.path.join(parent, name)


def _set_mode(fd: int) -> None:
    """The mode open() would give (0666 minus umask): mkstemp makes 0600, and kernels
    before 6.0 did not apply the umask to O_TMPFILE files. A file system that cannot
    store modes (vfat, exfat) refuses with EPERM: the file keeps the mode it has."""
    with contextlib.suppress(PermissionError):
        os.fchmod(fd, 0o666 & ~_umask())


@contextlib.contextmanager
def atomic_output(path: str, force: bool = False, inputs: tuple = ()):
    """Yield a binary file object; on success it replaces `path`, else it vanishes."""
    check_output_path(path, force, inputs)
    parent = os.path.dirname(os.path.abspath(path))
    fd = _open_unnamed(parent)
    tmp = None  # the file's name, once it has one
    if fd is None:
        try:
            fd, tmp = tempfile.mkstemp(prefix=".qllama-", suffix=".part", dir=parent)
        except OSError as e:
            raise UsageError(f"{path}: cannot create output: {e.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            _set_mode(f.fileno())
            yield f
            f.flush()
            os.fsync(f.fileno())
            if tmp is None:  # name the complete file, then move it over `path`
                tmp = _name_unnamed(f.fileno(), parent, path)
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def atomic_directory(path: str, force: bool = False, replaceable=lambda name: False):
    """Yield a new, empty directory to fill; on success it becomes `path`, else it
    vanishes. An existing `path` needs `force`, and is replaced only if every entry
    in it is a regular file for which `replaceable(name)` holds (what this output
    writes): a directory of other things is never deleted."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if os.path.lexists(path):
        if not os.path.isdir(path) or os.path.islink(path):
            raise UsageError(f"{path}: exists and is not a directory")
        if not force:
            raise UsageError(f"{path}: already exists (use --force to replace it)")
        for entry in os.scandir(path):
            if not entry.is_file(follow_symlinks=False) or not replaceable(entry.name):
                raise UsageError(f"{path}: holds {entry.name}, which this output does not "
                                 "write; refusing to replace the directory")
    if not os.path.isdir(parent):
        raise UsageError(f"{path}: parent directory {parent} does not exist")
    try:
        tmp = tempfile.mkdtemp(prefix=".qllama-", suffix=".part", dir=parent)
    except OSError as e:
        raise UsageError(f"{path}: cannot create output: {e.strerror}") from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield tmp
        for entry in os.scandir(tmp):  # contents durable before the rename
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if os.path.lexists(path):  # checked above: only files this output writes
            old = tempfile.mkdtemp(prefix=".qllama-", suffix=".old", dir=parent)
            os.replace(path, old + "/d")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
