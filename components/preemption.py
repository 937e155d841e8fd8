"""Stop requests from outside the run: SIGTERM / SIGUSR1 (a scheduler's preemption notice), SIGINT (Ctrl-C),
and the death of the torchrun agent that launched this rank.

The handlers only record the request; the training loop reads it at step boundaries, where the ranks
agree on it (one tiny all-reduce over a CPU group), save one checkpoint and exit with
:data:`PREEMPTED_EXIT_CODE` (SIGINT: 130). A second Ctrl-C, at least a second after the first (torchrun
forwards the terminal's SIGINT to its workers, which then see it twice), stops at once.
"""

from __future__ import annotations

import os
import signal
import time

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later", the run is resumable
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as shells report Ctrl-C
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
REPEAT_SIGINT_S = 1.0


class RunStopped(Exception):
    """The run stopped early on request; ``exit_code`` tells the scheduler whether to requeue."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopRequests:
    """Signal handlers that set a flag (installed in the main thread; restored by :meth:`uninstall`)."""

    def __init__(self, watch_parent: bool):
        self.reason: str | None = None
        self.first_sigint: float | None = None
        # torchrun's workers are its children: when the agent is killed (-9) they are re-parented.
        self.parent = os.getppid() if watch_parent else None
        self.previous: dict[int, object] = {}

    def install(self) -> StopRequests:
        for sig in STOP_SIGNALS:
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT:
            now = time.monotonic()
            if self.first_sigint is not None and now - self.first_sigint > REPEAT_SIGINT_S:
                raise KeyboardInterrupt
            self.first_sigint = self.first_sigint or now
        self.reason = self.reason or signal.Signals(signum).name

    def requested(self) -> bool:
        """Whether this rank was asked to stop (a signal, or its launcher died); cheap: no syscall but getppid."""
        if self.reason is None and self.parent is not None and os.getppid() != self.parent:
            self.reason = "launcher exited"
        return self.reason is not None

    def exit_code(self) -> int:
        return INTERRUPTED_EXIT_CODE if self.reason == "SIGINT" else PREEMPTED_EXIT_CODE
