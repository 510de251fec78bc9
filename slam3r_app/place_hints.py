"""Which keyframes belong to the place the camera is at now (``context.places``): a typed service.

A place-recognition backend (the loop-closure plugin's bag of ORB words) publishes, for each
keyframe it indexes, the earlier keyframes that look most like it; the STream3R frontend reads the
newest list before each step and keeps those keyframes in its KV cache (or feeds them again when
they were evicted), so that a revisited place comes back into the model's memory.

Thread-safe: the publisher may be a worker thread. Indices are frame indices of keyframes.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PlaceQuery:
    """One retrieval: ``query`` (the keyframe that asked) and ``keyframes`` (best match first)."""

    revision: int = 0
    query: int = -1
    keyframes: tuple[int, ...] = field(default_factory=tuple)


class PlaceHints:
    """The newest place retrieval (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest = PlaceQuery()

    def publish(self, query: int, keyframes: "list[int] | tuple[int, ...]") -> None:
        """Keyframes that look like keyframe ``query``, best first (an empty list clears the hint)."""
        with self._lock:
            self._latest = PlaceQuery(self._latest.revision + 1, int(query), tuple(int(k) for k in keyframes))

    def latest(self) -> PlaceQuery:
        with self._lock:
            return self._latest

    def clear(self) -> None:
        self.publish(-1, ())
