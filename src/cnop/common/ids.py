"""Time-sortable 128-bit ids (ULID): newest-first is a plain descending sort-key query."""

from __future__ import annotations

import os
import threading
import time

from ulid import ULID

_lock = threading.Lock()
_last_ms = 0
_last_rand = 0
_RAND_MAX = (1 << 80) - 1


def new_id() -> str:
    """A ULID, strictly increasing within this process even inside one millisecond."""
    global _last_ms, _last_rand
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _last_rand = (_last_rand + 1) & _RAND_MAX
        else:
            _last_ms = ms
            _last_rand = int.from_bytes(os.urandom(10), "big") >> 1  # room to increment
        value = (ms << 80) | _last_rand
    return str(ULID.from_int(value))
