"""The lock of a run directory: one run writes it at a time, and a run that died leaves a lock the next one takes over.

The lock is a kernel advisory lock (``flock``) on a small file, ``<run>/run.lock``, whose text says who holds it
(host, pid, start time, command) so that the run turned away can say by whom. The kernel drops an advisory lock when
the process that holds it ends, however it ends; so a lock file that nobody holds locked was left by a run that died
without cleaning up (SIGKILL, an out-of-memory kill, a power cut), and the next run takes it over and says so. A clean
exit (success, an error, Ctrl-C, SIGTERM) removes the file.

The lock can be handed to a child process (:meth:`RunLock.handover`): a sweep locks a point's directory before it
writes the point's files, and the ``rccsnn compress`` it starts there adopts that lock instead of being turned away.

Example::

    with RunLock.acquire(Path("runs/a") / "run.lock") as lock:   # LockHeld if another live run holds it
        if lock.previous is not None:
            print(f"took over the lock of {lock.previous.describe()}, which ended without releasing it")
        ...                                                       # write the run directory
"""
from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

from rccsnn.errors import UserError

try:
    import fcntl
except ImportError:  # not a POSIX system: the holder's pid stands in for the kernel lock
    fcntl = None  # type: ignore[assignment]

#: Environment variable that hands a held lock to a child process: the number of the inherited descriptor.
HANDOVER_ENV = "RCCSNN_RUN_LOCK_FD"
#: Attempts to lock the file at the path while earlier holders remove theirs (each failed attempt means another
#: process released or took the lock in between; a handful is plenty).
ATTEMPTS = 20


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock: host name, process id, start time (local, ISO 8601), command line and, for a run
    into a default directory name, the digest of its settings (so that a run with the same settings, which must
    not start a second copy, is told apart from one with other settings, which takes the next name)."""

    host: str
    pid: int
    started: str
    command: str = ""
    settings: str = ""

    @classmethod
    def this_process(cls, settings: str = "") -> "Holder":
        return cls(host=socket.gethostname(), pid=os.getpid(), started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                   command=" ".join(["rccsnn", *sys.argv[1:]]), settings=settings)

    @classmethod
    def parse(cls, text: str) -> Optional["Holder"]:
        """The holder a lock file's text names; ``None`` for an empty file or text that is not a holder."""
        try:
            data = json.loads(text)
            return cls(host=str(data["host"]), pid=int(data["pid"]), started=str(data.get("started", "?")),
                       command=str(data.get("command", "")), settings=str(data.get("settings", "")))
        except (ValueError, TypeError, KeyError):
            return None

    def text(self) -> str:
        return json.dumps(asdict(self)) + "\n"

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}, started {self.started}"

    def is_here(self) -> bool:
        return self.host == socket.gethostname()

    def is_alive(self) -> bool:
        """Whether the process still runs (only answerable on its own host; elsewhere assumed alive)."""
        if not self.is_here():
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's live process
            return True
        return True


class LockHeld(UserError):
    """Another live process holds the lock (``holder``; ``None`` when its file names nobody readable)."""

    def __init__(self, path: Path, holder: Optional[Holder], advice: str = "") -> None:
        who = holder.describe() if holder is not None else "another process"
        super().__init__(f"{path.parent} is in use by another run ({who}; lock file {path.name})"
                         + (f": {advice}" if advice else ""))
        self.path, self.holder = path, holder


def _read(fd: int) -> Optional[Holder]:
    try:
        return Holder.parse(os.pread(fd, 4096, 0).decode("utf-8", errors="replace"))
    except OSError:
        return None


def _write(fd: int, holder: Holder) -> None:
    data = holder.text().encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _flock(fd: int, wait: bool) -> Optional[bool]:
    """Lock ``fd`` exclusively: True when locked, False when another open file holds it, None when this file
    system (or platform) has no advisory locks."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
            return None
        raise


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a holder that released it may have removed it)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class RunLock:
    """A held lock on ``path``. Leaving the ``with`` (or :meth:`release`) removes the file and frees the lock.

    Attributes:
        path: the lock file.
        previous: the holder named by a lock file that this run took over from a process that ended without
            releasing it; ``None`` when the lock was free.
        adopted: the lock was handed over by the parent process, which keeps it (and removes the file) after this
            process ends.
    """

    def __init__(self, path: Path, fd: int, previous: Optional[Holder], adopted: bool) -> None:
        self.path, self._fd, self.previous, self.adopted = path, fd, previous, adopted

    # ----------------------------------------------------------------------------------------------- acquire
    @classmethod
    def acquire(cls, path: "str | Path", *, wait: bool = False, settings: str = "") -> "RunLock":
        """Lock ``path`` (created if missing) for this process; ``settings`` (a digest) goes into the lock file.

        Raises:
            LockHeld: another live process holds it (with ``wait``, this blocks in the kernel until it is free
                instead), or a process on another host named in the file may still hold it.
        """
        path = Path(path)
        adopted = cls._adopt(path)
        if adopted is not None:
            return adopted
        for _ in range(ATTEMPTS):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = _flock(fd, wait)
                if locked is False:
                    raise LockHeld(path, _read(fd), "wait for it to end, or choose another directory")
                if not _same_file(fd, path):  # its holder removed it after we opened it: lock the new one
                    os.close(fd)
                    continue
                previous = _read(fd)
                if previous is not None and previous.pid != os.getpid():
                    cls._check_takeover(path, previous, locked is None)
                _write(fd, Holder.this_process(settings))
                return cls(path, fd, previous, adopted=False)
            except BaseException:
                try:
                    os.close(fd)
                except OSError:
                    pass
                raise
        raise LockHeld(path, None, "its lock file keeps changing hands; try again")

    @staticmethod
    def _check_takeover(path: Path, previous: Holder, without_kernel_lock: bool) -> None:
        """Take over a lock file whose lock is free only when its holder is known to have ended."""
        if not previous.is_here():
            # Advisory locks need not reach across hosts (NFS without lock support): a free lock proves nothing.
            raise LockHeld(path, previous, f"if that run has ended, delete {path} and run again")
        if without_kernel_lock and previous.is_alive():
            raise LockHeld(path, previous, "wait for it to end, or choose another directory")

    @classmethod
    def _adopt(cls, path: Path) -> Optional["RunLock"]:
        """The lock a parent process handed over (:meth:`handover`) when it is the lock of ``path``."""
        text = os.environ.get(HANDOVER_ENV, "")
        if not text.isdigit():
            return None
        fd = int(text)
        try:
            if not _same_file(fd, path) or _flock(fd, wait=False) is False:
                return None
        except OSError:  # not an open descriptor here
            return None
        _write(fd, Holder.this_process())  # the message of a run turned away names the process that writes
        return cls(path, fd, previous=None, adopted=True)

    # ----------------------------------------------------------------------------------------------- hand over
    def handover(self) -> Tuple[Dict[str, str], Tuple[int, ...]]:
        """What a child process needs to adopt this lock: environment entries and the descriptor to pass on
        (``subprocess.Popen(..., env={**env, **entries}, pass_fds=fds)``). The child shares the kernel lock, so
        the directory stays locked while either process lives; this process keeps the file and removes it."""
        return {HANDOVER_ENV: str(self._fd)}, (self._fd,)

    # ----------------------------------------------------------------------------------------------- release
    def release(self) -> None:
        """Remove the lock file (unless it was adopted: the parent removes it) and free the lock."""
        if self._fd < 0:
            return
        try:
            if not self.adopted and _same_file(self._fd, self.path):
                self.path.unlink()
        except OSError:
            pass  # the lock is freed below all the same; a leftover file is taken over by the next run
        finally:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
