"""Room in a front end's bounded queue of received messages (``AsyncSession``, ``Session``).

The network thread takes a slot before it queues a message and waits while there is none (back-
pressure: it reads nothing more until the application catches up); the application gives the slot
back when it takes the message. Closing wakes a waiting network thread, which then queues nothing.
"""

from __future__ import annotations

import threading

__all__ = ["Slots"]


class Slots:
    """A counting gate of ``size`` slots that can be closed."""

    def __init__(self, size: int) -> None:
        self._cond = threading.Condition()
        self._free = size
        self._closed = False

    def take(self) -> bool:
        """Wait for a free slot and take it; False (nothing taken) once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._free > 0 or self._closed)
            if self._closed:
                return False
            self._free -= 1
            return True

    def give(self) -> None:
        """Give one slot back."""
        with self._cond:
            self._free += 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
