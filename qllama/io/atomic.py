"""Outputs: one rule for what a command may write (`check_output_path`), and
writing it atomically (a temporary file beside the target, fsync, rename), so a
failure or Ctrl-C at any point leaves no partial file behind. Several files (an
import's model and the tokenizer files beside it) appear together or not at all.
A directory output (a Hugging Face folder) is filled under a temporary name and
renamed when complete. Inputs are opened by io.inputs.

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

from ..errors import QllamaError, UsageError


def _identity(path: str) -> tuple | None:
    """(device, inode) of the file `path` names, through symlinks; None if none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_output_name(path: str) -> None:
    """The part of the rule a path fails by its name alone: empty, or a directory."""
    if not path:
        raise UsageError("the output path is empty")
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a directory")
    if os.path.basename(path) in ("", ".", ".."):
        raise UsageError(f"{path}: names a directory, not a file")


def check_output_path(path: str, force: bool = False, inputs: tuple = ()) -> None:
    """The one rule for every command's output: a new or (with --force) replaceable
    regular file, never one of `inputs` (by inode, so through symlinks and hard
    links), never a directory or an empty path. Checked before anything is written."""
    check_output_name(path)
    target = _identity(path)
    if target is not None:
        for src in inputs:
            if _identity(src) == target:
                same = os.path.abspath(src) == os.path.abspath(path)
                raise UsageError(f"{path}: output is the same file as the input"
                                 + ("" if same else f" {src}"))
    if os.path.lexists(path) and not force:
        raise UsageError(f"{path}: already exists (use --force to overwrite)")
    if target is not None and not stat.S_ISREG(os.stat(path).st_mode):
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


class _Pending:
    """One output under construction: an unnamed (or, failing that, a `.part`) file
    in the target's directory."""

    def __init__(self, path: str):
        self.path = path
        self.parent = os.path.dirname(os.path.abspath(path))
        self.tmp = None  # the file's name, once it has one
        fd = _open_unnamed(self.parent)
        if fd is None:
            try:
                fd, self.tmp = tempfile.mkstemp(prefix=".qllama-", suffix=".part",
                                                dir=self.parent)
            except OSError as e:
                raise UsageError(f"{path}: cannot create output: {e.strerror}") from None
        self.file = os.fdopen(fd, "wb")
        _set_mode(fd)

    def finish(self) -> None:
        """Durable and named, ready to be renamed over the target."""
        self.file.flush()
        os.fsync(self.file.fileno())
        if self.tmp is None:
            self.tmp = _name_unnamed(self.file.fileno(), self.parent, self.path)
        self.file.close()

    def discard(self) -> None:
        self.file.close()
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)


def _keep_old(p: _Pending) -> tuple | None:
    """A second name for the file at p.path, if any: (name, hard-linked?)."""
    if not os.path.lexists(p.path):
        return None
    name = os.path.join(p.parent, f".qllama-{os.urandom(6).hex()}.old")
    try:
        os.link(p.path, name, follow_symlinks=False)
        return name, True
    except OSError:  # no hard links here: move it aside instead
        os.replace(p.path, name)
        return name, False


def _restore(p: _Pending, old: tuple | None, replaced: bool) -> None:
    """Undo what _publish did to p.path (best effort: this runs on a failure)."""
    with contextlib.suppress(OSError):
        if old is None:
            if replaced:
                os.unlink(p.path)
        elif replaced or not old[1]:
            os.replace(old[0], p.path)
        else:  # a link to the file still there (rename would do nothing: same inode)
            os.unlink(old[0])


def _publish(pending: list) -> None:
    """Rename every finished file over its target: all of them, or, should a rename
    fail, none (the targets renamed so far get their old files back, kept meanwhile
    under a second name)."""
    done = []  # (pending, its old file's second name)
    try:
        for p in pending:
            old = _keep_old(p) if len(pending) > 1 else None
            try:
                os.replace(p.tmp, p.path)
            except OSError:
                _restore(p, old, replaced=False)
                raise
            done.append((p, old))
    except OSError as e:
        for q, old in reversed(done):
            _restore(q, old, replaced=True)
        raise UsageError(f"{p.path}: cannot write: {e.strerror}") from None
    for _, old in done:
        if old is not None:
            with contextlib.suppress(OSError):
                os.unlink(old[0])
    for parent in dict.fromkeys(p.parent for p in pending):  # the renames, durable
        with contextlib.suppress(OSError):
            dfd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


@contextlib.contextmanager
def atomic_outputs(paths: list, force: bool = False, inputs: tuple = ()):
    """Yield a binary file object per path; on success they replace their paths
    together, else none of them appears (nor does anything else)."""
    for path in paths:
        check_output_path(path, force, inputs)
    pending = []
    try:
        for path in paths:
            pending.append(_Pending(path))
        yield [p.file for p in pending]
        for p in pending:
            p.finish()
        _publish(pending)
    except BaseException:
        for p in pending:
            p.discard()
        raise


@contextlib.contextmanager
def atomic_output(path: str, force: bool = False, inputs: tuple = ()):
    """Yield a binary file object; on success it replaces `path`, else it vanishes."""
    with atomic_outputs([path], force, inputs) as (f,):
        yield f


def check_output_directory(path: str, force: bool = False, replaceable=lambda name: False,
                           inputs: tuple = ()) -> None:
    """check_output_path's rule for a directory output (atomic_directory)."""
    if not path:
        raise UsageError("the output path is empty")
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    if os.path.lexists(path):
        if not os.path.isdir(path) or os.path.islink(path):
            raise UsageError(f"{path}: exists and is not a directory")
        if not force:
            raise UsageError(f"{path}: already exists (use --force to replace it)")
        ids = {_identity(src) for src in inputs} - {None}
        for entry in os.scandir(path):
            if _identity(entry.path) in ids:
                raise UsageError(f"{path}: holds {entry.name}, an input of this command; "
                                 "refusing to replace the directory")
            if not entry.is_file(follow_symlinks=False) or not replaceable(entry.name):
                raise UsageError(f"{path}: holds {entry.name}, which this output does not "
                                 "write; refusing to replace the directory")
    if not os.path.isdir(parent):
        raise UsageError(f"{path}: parent directory {parent} does not exist")


@contextlib.contextmanager
def atomic_directory(path: str, force: bool = False, replaceable=lambda name: False,
                     inputs: tuple = ()):
    """Yield a new, empty directory to fill; on success it becomes `path`, else it
    vanishes. An existing `path` needs `force`, and is replaced only if every entry
    in it is a regular file for which `replaceable(name)` holds (what this output
    writes) and none is one of `inputs`: a directory of other things is never
    deleted."""
    check_output_directory(path, force, replaceable, inputs)
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
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


def check_written(fd: int, dst: str, size: int) -> None:
    """The output's size is the layout's (cannot differ unless the layout is wrong)."""
    written = os.fstat(fd).st_size
    if written != size:
        raise QllamaError(f"{dst}: wrote {written} bytes, expected {size}")
