"""In-process state: fine for one worker; lost on restart."""

import threading


class MemoryStore:
    """Thread-safe counters held in a dict."""

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}
        self._lock = threading.Lock()

    def incr(self, key: str, amount: int = 1) -> int:
        """Add ``amount`` to counter ``key`` and return the new value."""
        with self._lock:
            value = self._counters.get(key, 0) + amount
            self._counters[key] = value
            return value

    def get(self, key: str) -> int:
        """Current value of counter ``key`` (0 if never set)."""
        with self._lock:
            return self._counters.get(key, 0)
