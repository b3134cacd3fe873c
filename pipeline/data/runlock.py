"""One writer per run directory.

A command that writes into a run (`fit`, `eval`, `simulate --out` inside the run) holds
``RUN/.sgaus.lock`` for its whole duration: a ``filelock.FileLock``, an OS lock (flock) that the
operating system releases when the process ends, however it ends. Beside it, ``RUN/.sgaus.lock.json``
says who holds it (pid, host, command, start time), so that a second writer is refused at once with
one line naming the first. A lock left by a killed process is no lock at all (its flock died with
it): the next writer takes it and replaces the stale JSON, and says so. Within one process the lock
is re-entrant (eval's single-k refit runs inside eval's lock).

Locks on network filesystems are only as good as their flock.
"""
from __future__ import annotations

import datetime
import json
import os
import shlex
import socket
import sys
from pathlib import Path

import filelock

from pipeline.data.files import LOCK_FILES, write_json
from taichi_sim.errors import SgausError

LOCK_NAME, INFO_NAME = LOCK_FILES

_held: dict[Path, list] = {}  # resolved run root -> [FileLock, depth] of the locks this process holds


def lock_info(root: str | os.PathLike) -> dict | None:
    """What RUN/.sgaus.lock.json says about the lock's holder (None: nothing readable)."""
    try:
        doc = json.loads((Path(root) / INFO_NAME).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def describe(info: dict | None) -> str:
    if not info:
        return "another process (it has not recorded who it is yet)"
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')} ({info.get('operation', '?')}: "
            f"`{info.get('command', '?')}`, started {info.get('started', '?')})")


class RunLock:
    """The writer's lock of the run at ``root`` (an existing directory), taken by :meth:`acquire`
    for the operation ``command`` (e.g. "sgaus fit"; the process's command line is recorded too);
    :meth:`release` or the end of the process gives it back. ``taken_over`` is the stale record of
    a dead holder the lock was taken from."""

    def __init__(self, root: str | os.PathLike, command: str):
        self.root = Path(root).resolve()
        self.command = command
        self.taken_over: dict | None = None
        self._acquired = False

    def acquire(self) -> "RunLock":
        held = _held.get(self.root)
        if held is not None:  # this process holds it already: re-entrant
            held[1] += 1
            self._acquired = True
            return self
        lock = filelock.FileLock(str(self.root / LOCK_NAME), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise SgausError(f"{self.root} is being written by another sgaus process, {describe(lock_info(self.root))}; "
                             "wait for it to finish or stop it") from None
        self.taken_over = lock_info(self.root)  # a record left behind: its writer died holding the lock
        argv = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
        write_json(self.root / INFO_NAME, {
            "pid": os.getpid(), "host": socket.gethostname(), "operation": self.command,
            "command": shlex.join(argv)[:300], "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")})
        _held[self.root] = [lock, 1]
        self._acquired = True
        return self

    def release(self) -> None:
        if not self._acquired:
            return
        self._acquired = False
        held = _held.get(self.root)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _held[self.root]
            (self.root / INFO_NAME).unlink(missing_ok=True)
            held[0].release()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
