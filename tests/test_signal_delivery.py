"""Signals reach the main thread: every worker thread the app starts blocks SIGINT / SIGTERM (the
kernel may hand a process's signal to any thread that does not block it, and CPython runs the
handler only when the main thread next runs Python code)."""
from __future__ import annotations

import signal
import threading

import pytest

from slam3r_app.signals import leave_signals_to_the_main_thread
from slam3r_app.watchdog import Watchdog

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX only")

SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _mask_in_a_thread(target) -> set:
    seen: dict = {}

    def run() -> None:
        target()
        seen["mask"] = signal.pthread_sigmask(signal.SIG_BLOCK, [])

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return set(seen["mask"])


def test_a_worker_thread_blocks_the_stop_signals_and_the_main_thread_does_not():
    assert SIGNALS <= _mask_in_a_thread(leave_signals_to_the_main_thread)
    assert not SIGNALS & set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    leave_signals_to_the_main_thread()  # a no-op in the main thread
    assert not SIGNALS & set(signal.pthread_sigmask(signal.SIG_BLOCK, []))


def test_plugin_calls_run_in_a_thread_that_leaves_signals_to_the_main_thread():
    dog = Watchdog("test")
    (out,) = dog.run([lambda: set(signal.pthread_sigmask(signal.SIG_BLOCK, []))], [60.0])
    assert out.ok and SIGNALS <= out.value
