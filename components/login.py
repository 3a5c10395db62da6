"""The app's login check (``--auth user:password``), slowing down password guessing.

Gradio's own ``auth=(user, password)`` answers every guess at once, so a password can be tried
without limit. :class:`LoginThrottle` is the ``auth`` callable instead: a wrong guess is answered
only after a delay that doubles with each recent failure, and guesses are answered one at a time,
so guessing in parallel gains nothing. The delay is global (Gradio does not tell the callable who
is asking): while someone guesses, a real login may wait up to ``max_s`` as well.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import deque

__all__ = ["LoginThrottle"]

log = logging.getLogger("karst.app")


class LoginThrottle:
    """Checks one user:password pair; ``check`` is the coroutine to pass as ``launch(auth=...)``.

    Args:
        user, password: the one login accepted.
        base_s: delay after the first recent failure; each further one doubles it.
        max_s: longest delay.
        window_s: failures older than this no longer count.
        memory: failures remembered (bounds memory whatever the number of guesses).
    """

    def __init__(self, user: str, password: str, *, base_s: float = 0.5, max_s: float = 8.0,
                 window_s: float = 300.0, memory: int = 64):
        self._user, self._password = user.encode(), password.encode()
        self.base_s, self.max_s, self.window_s = base_s, max_s, window_s
        self._failures: deque[float] = deque(maxlen=memory)
        self._lock = asyncio.Lock()

    def delay(self, now: float) -> float:
        """Seconds a wrong guess made at ``now`` waits."""
        recent = sum(1 for t in self._failures if now - t < self.window_s)
        return min(self.base_s * 2.0**recent, self.max_s)

    async def check(self, username: str, password: str) -> bool:
        async with self._lock:
            # Both comparisons always run, in constant time: the answer's timing says nothing.
            user_ok = hmac.compare_digest(str(username).encode(), self._user)
            password_ok = hmac.compare_digest(str(password).encode(), self._password)
            if user_ok and password_ok:
                return True
            now = time.monotonic()
            wait = self.delay(now)
            self._failures.append(now)
            log.warning("failed login for user %r; answering in %.1f s", str(username)[:40], wait)
            await asyncio.sleep(wait)
            return False
