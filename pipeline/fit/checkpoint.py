"""Checkpoints inside the long stages of `sgaus fit`, so that a killed fit loses minutes, not hours.

A stage that iterates (static, refine, velocity, global, dynamic) hands its loop a
:class:`Checkpoint`. After each iteration it calls :meth:`Checkpoint.step` with the number of
iterations done and a function returning everything the rest of the loop depends on: parameters,
optimiser and scheduler state dicts, random-generator states, the iteration counter, loss history,
best-so-far and patience counters. ``step`` saves that state when ``interval_s`` seconds have
passed since the last save (or, a test hook, every ``every`` iterations), as one file
``RUN/stages/<stage>.checkpoint`` written under a temporary name and renamed (torch.save of
tensors and plain values only: it is read back with ``weights_only=True``). The file records the
stage's key (its settings and inputs), so a checkpoint of other settings is never used; it is
removed once the stage's output is written. With ``--resume`` the stage starts from
:meth:`Checkpoint.restore` and, because the fit is deterministic on the CPU (see
``pipeline.fit.runner.deterministic``), ends bitwise where an uninterrupted run would have.

Saving never changes what a stage computes: the state function only reads.

Test hook: with the environment variable ``SGAUS_TEST_KILL_AT=<stage>:<n>`` the process kills
itself with SIGKILL right after the checkpoint step of iteration n of that stage (whether or not
that step saved), as a user's `kill -9` or a lost machine would.
"""
from __future__ import annotations

import os
import pickle
import signal
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from pipeline.data.files import atomic_file

CHECKPOINT_FORMAT = "sgaus-checkpoint/1"
KILL_ENV = "SGAUS_TEST_KILL_AT"


@dataclass(frozen=True)
class CheckpointPolicy:
    """interval_s: at most this many seconds between two saves of a stage's state (0: every
    iteration); every: also save every this many iterations (0: by time only; a test hook)."""

    interval_s: float = 120.0
    every: int = 0

    def due(self, done: int, since_s: float) -> bool:
        return since_s >= self.interval_s or (self.every > 0 and done % self.every == 0)


def _kill_point() -> tuple[str, int] | None:
    text = os.environ.get(KILL_ENV, "").strip()
    if not text:
        return None
    stage, _, n = text.rpartition(":")
    try:
        return stage, int(n)
    except ValueError:
        raise RuntimeError(f"{KILL_ENV} must be <stage>:<iteration>, got {text!r}") from None


class Checkpoint:
    """The checkpoint of one stage run (``path`` None: a stage run without checkpoints)."""

    def __init__(self, path: str | os.PathLike | None, stage: str, key: str, policy: CheckpointPolicy | None = None,
                 resume: bool = False, log=print):
        self.path = None if path is None else Path(path)
        self.stage, self.key, self.resume, self.log = stage, key, resume, log
        self.policy = policy or CheckpointPolicy()
        self._last = time.monotonic()
        self._kill = _kill_point()

    @classmethod
    def disabled(cls, stage: str = "") -> "Checkpoint":
        return cls(None, stage, "")

    def restore(self) -> dict | None:
        """The state saved by this stage with the same key, when resuming; None otherwise (a
        checkpoint of other settings, or one that cannot be read, is ignored: the stage starts
        from its beginning, which costs time and never changes the result)."""
        self._last = time.monotonic()
        if self.path is None or not self.resume or not self.path.is_file():
            return None
        try:
            doc = torch.load(self.path, weights_only=True)
        except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
            self.log(f"{self.stage}: the checkpoint {self.path} cannot be read ({err.__class__.__name__}); "
                     "starting the stage from its beginning")
            return None
        if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT or doc.get("stage") != self.stage:
            self.log(f"{self.stage}: {self.path} is not a checkpoint of this stage; starting the stage from its beginning")
            return None
        if doc.get("key") != self.key:
            return None  # saved with other settings or inputs: stale
        self.log(f"{self.stage}: resuming from the checkpoint after iteration {doc['iteration']}")
        return doc["state"]

    def step(self, done: int, state: Callable[[], dict]) -> None:
        """Called after iteration ``done`` (1-based count of iterations finished): saves
        ``state()`` when the policy says it is due."""
        if self.path is None:
            return
        now = time.monotonic()
        if self.policy.due(done, now - self._last):
            self.save(done, state())
            self._last = time.monotonic()
        if self._kill == (self.stage, done):
            os.kill(os.getpid(), signal.SIGKILL)

    def save(self, done: int, state: dict) -> None:
        doc = {"format": CHECKPOINT_FORMAT, "stage": self.stage, "key": self.key, "iteration": int(done),
               "state": state}
        with atomic_file(self.path) as tmp:
            torch.save(doc, tmp)

    def discard(self) -> None:
        """Remove the checkpoint (the stage's output is written, or the stage starts afresh)."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def rng_state(gen) -> list:
    """The state of a random.Random as plain lists (loadable with weights_only)."""
    version, internal, gauss = gen.getstate()
    return [version, list(internal), gauss]


def set_rng_state(gen, state) -> None:
    version, internal, gauss = state
    gen.setstate((version, tuple(internal), gauss))
