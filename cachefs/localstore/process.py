"""Stopping a server we started, by its pid."""

from __future__ import annotations

import subprocess


def stop_child(proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    """SIGTERM our child `proc`, then SIGKILL it if it has not exited within
    `timeout` seconds; reaped either way. Returns whether it had to be killed
    (its own children may then be left: the caller knows whether it has any).
    Only a child we have not reaped yet: its pid cannot name another process."""
    if proc is None or proc.poll() is not None:
        return False
    proc.terminate()
    try:
        proc.wait(timeout)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True
