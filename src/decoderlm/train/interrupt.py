"""Ctrl-C during training: the first press asks the loop to stop at the end of the current step,
which it then saves as a checkpoint before raising KeyboardInterrupt (exit 130), so the run can be
resumed; a second press stops at once, as Ctrl-C usually does."""

from __future__ import annotations

import signal
import sys
import threading


class StopRequest:
    """Between start() and stop(), SIGINT sets `requested` instead of raising."""

    def __init__(self, announce: bool = True):
        self.requested, self.announce = False, announce
        self._active, self._previous = False, None

    def start(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # only there can signals be handled
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._active = True
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
        if self.announce:
            print("\ndecoderlm: stopping after this step to save a checkpoint (Ctrl-C again to stop now)",
                  file=sys.stderr, flush=True)

    def stop(self) -> None:
        if self._active:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)
            self._active = False
