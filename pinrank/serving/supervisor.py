"""Keep a server process up: restart it when it exits or hangs.

Generic over what it runs (a `Child`): `pinrank serve` supervises
tritonserver with it, and tests a tiny fake process. Some requests crash the
bundled Triton 2.51 (docs/security.md) and we cannot patch it, so the
supervisor turns a crash into a short gap that client retries cover:

- exit of any kind (code, signal) -> restart at once for the first failure
  in a window, then with exponential backoff;
- hang: the liveness probe fails `live_failures` times in a row -> the
  child is killed and restarted;
- crash loop: more than `max_restarts` restarts within `window_s` -> give
  up (CrashLoopError), so that a server that cannot stay up is reported
  instead of flapping forever. 0 disables the limit.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

log = logging.getLogger(__name__)


class Child(Protocol):
    """What the supervisor needs from the process it keeps up."""

    @property
    def pid(self) -> int | None: ...

    def exit_code(self) -> int | None:
        """None while running; else the return code (negative: killed by that signal)."""

    def is_live(self, timeout_s: float) -> bool:
        """Does it answer its liveness probe within `timeout_s`?"""

    def kill(self) -> None:
        """End it and everything it started, now."""

    def relaunch(self) -> None:
        """Start it again (same settings) and return once it serves; raise if it cannot."""

    def log_tail(self) -> str:
        """The last lines worth showing about why it stopped."""


class CrashLoopError(RuntimeError):
    """The child failed too often in too short a time; the message says how and why."""


@dataclass(frozen=True)
class RestartPolicy:
    backoff_s: float = 0.5  # delay before the 2nd restart within a window; doubles after
    max_backoff_s: float = 8.0
    max_restarts: int = 10  # more restarts than this within window_s: give up (0: never)
    window_s: float = 60.0
    live_interval_s: float = 1.0  # liveness probe period
    live_timeout_s: float = 2.0
    live_failures: int = 3  # consecutive failed probes that make a hang
    poll_s: float = 0.05  # how often an exit is looked for: detection delay

    def __post_init__(self) -> None:
        for name in ("backoff_s", "max_backoff_s", "window_s", "live_interval_s", "live_timeout_s", "poll_s"):
            value = getattr(self, name)
            if not (value >= 0 and value != float("inf")):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.max_restarts < 0 or self.live_failures < 1:
            raise ValueError(f"max_restarts must be >= 0 and live_failures >= 1, got {self.max_restarts}, "
                             f"{self.live_failures}")

    def delay_s(self, recent: int) -> float:
        """Backoff before a restart when `recent` restarts already happened in the window."""
        if recent <= 0:
            return 0.0  # an isolated crash: back as fast as possible
        return min(self.max_backoff_s, self.backoff_s * 2.0 ** (recent - 1))


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name} (signal {-code})"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


@dataclass
class Restart:
    cause: str
    crashed_at: float  # time.time() when the failure was seen
    down_s: float  # failure seen -> serving again (or the failed attempt's end)
    ok: bool
    pid: int | None  # the new process


@dataclass
class Supervisor:
    """Run `child` (already started) until `stop` is set, restarting it on
    exit or hang. `on_start(child)` runs after every successful restart,
    `on_exit(child)` when a failure is seen, before the restart: hooks for
    what follows the process (e.g. a stub watchdog bound to its pid)."""

    child: Child
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    on_start: Callable[[Child], None] | None = None
    on_exit: Callable[[Child], None] | None = None
    name: str = "server"
    clock: Callable[[], float] = time.monotonic
    restarts: list[Restart] = field(default_factory=list)
    _recent: deque = field(default_factory=deque)
    _requested: tuple[str, bool] | None = None

    def request_restart(self, cause: str, planned: bool = False) -> None:
        """Ask for a restart from another thread (e.g. a health check that
        found the child unable to serve); `run` does it on its next tick.
        A `planned` one (recycling a process that leaks by design) skips the
        backoff and does not count towards the crash-loop limit."""
        self._requested = (cause, planned)

    def run(self, stop: threading.Event) -> None:
        """Block until `stop` is set; raise CrashLoopError when giving up."""
        live_fail, next_live = 0, self.clock() + self.policy.live_interval_s
        while not stop.wait(self.policy.poll_s):
            requested, self._requested = self._requested, None
            cause, planned = requested if requested else (None, False)
            code = self.child.exit_code()
            if cause is None and code is not None:
                cause = describe_exit(code)
            elif cause is None and self.clock() >= next_live:
                next_live = self.clock() + self.policy.live_interval_s
                live_fail = 0 if self.child.is_live(self.policy.live_timeout_s) else live_fail + 1
                if live_fail >= self.policy.live_failures:
                    cause = (f"hung: liveness probe failed {live_fail} times in a row "
                             f"({self.policy.live_timeout_s:g} s timeout, every {self.policy.live_interval_s:g} s)")
            if cause is None:
                continue
            self._recover(cause, stop, planned)
            live_fail, next_live = 0, self.clock() + self.policy.live_interval_s

    def _recover(self, cause: str, stop: threading.Event, planned: bool = False) -> None:
        """Restart until it serves again, with backoff; raise on a crash loop."""
        seen, wall = self.clock(), time.time()
        old_pid = self.child.pid
        tail = self.child.log_tail()
        self.child.kill()  # a hung child, or what a crashed one left behind (its stubs)
        if self.on_exit is not None:
            self.on_exit(self.child)
        while not stop.is_set():
            now = self.clock()
            while self._recent and now - self._recent[0] > self.policy.window_s:
                self._recent.popleft()
            if not planned and self.policy.max_restarts and len(self._recent) >= self.policy.max_restarts:
                raise CrashLoopError(
                    f"{self.name} failed {len(self._recent) + 1} times within {self.policy.window_s:g} s "
                    f"(limit {self.policy.max_restarts} restarts): giving up. Last failure: {cause}.\n"
                    f"Last log lines:\n{tail}")
            delay = 0.0 if planned else self.policy.delay_s(len(self._recent))
            if planned:
                log.warning("%s (pid %s): %s; restarting now", self.name, old_pid, cause)
            else:
                log.warning("%s (pid %s) %s; restarting%s (restart %d in the last %g s). Last log lines:\n%s",
                            self.name, old_pid, cause, f" in {delay:.2f} s" if delay else " now",
                            len(self._recent) + 1, self.policy.window_s, tail)
            if not planned:
                self._recent.append(now)
            planned = False  # a planned restart that fails to come up is a failure like any other
            if delay and stop.wait(delay):
                return
            try:
                self.child.relaunch()
            except Exception as exc:  # any failure to come up is one more failed restart
                self.restarts.append(Restart(cause, wall, self.clock() - seen, False, self.child.pid))
                cause, tail = f"failed to restart: {exc}", self.child.log_tail()
                self.child.kill()
                continue
            down = self.clock() - seen
            self._requested = None  # asked for about the process that just went
            self.restarts.append(Restart(cause, wall, down, True, self.child.pid))
            log.warning("%s is back (pid %s) %.2f s after the failure", self.name, self.child.pid, down)
            if self.on_start is not None:
                self.on_start(self.child)
            return
