"""Request ids: born at the top of a request, they ride to its usage record, its log
lines, its error envelope and its response."""

from __future__ import annotations

import os
import threading

_entropy = bytearray()
_entropy_lock = threading.Lock()


def new_request_id() -> str:
    """``req_`` and 128 random bits (``os.urandom``) in hex, like a uuid4's.

    The bytes are read 4 KiB at a time: ``os.urandom`` is a system call that lets go of
    the GIL, and on the event loop each time it may wait for another thread to hand the
    GIL back.
    """
    global _entropy
    with _entropy_lock:
        if len(_entropy) < 16:
            _entropy = bytearray(os.urandom(4096))
        chunk = _entropy[-16:]
        del _entropy[-16:]
    return "req_" + chunk.hex()


def _forget_entropy() -> None:  # a forked child must not repeat its parent's ids
    global _entropy
    _entropy = bytearray()


os.register_at_fork(after_in_child=_forget_entropy)
