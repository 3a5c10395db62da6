"""Turn exceptions raised inside UI handlers into readable messages, never tracebacks.

Every event handler a panel registers goes through :func:`guarded`. A ``KarstError`` is the user's
to fix, so its one-line message is shown as is. Anything else is a bug: the traceback goes to the
server log (``app.py`` logs to the standard error of the terminal that runs it) and the user gets a
short message saying so and where to look.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import gradio as gr

from karst.errors import KarstError

__all__ = ["guarded", "plain", "report", "user_message"]

log = logging.getLogger("karst.app")
SLOW_S = 2.0


def _name(fn: Callable[..., Any]) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    return getattr(inner, "__qualname__", repr(inner))


def plain(message: str) -> str:
    """``message`` safe to show as a ``gr.Error``, readable in the browser and in gradio_client alike.

    The browser renders an error as (sanitised) HTML and a client gets the raw string, so HTML
    escaping would show ``&#x27;`` to every API user. Messages may quote user input (file names),
    so the two characters that make markup become look-alikes instead: no tag can form.
    """
    return message.replace("<", "‹").replace(">", "›")


def user_message(err: BaseException) -> str:
    """The one line a user sees for ``err``."""
    if isinstance(err, KarstError):
        return str(err)
    return (f"Something went wrong ({type(err).__name__}: {err}). This is a bug; the traceback is in the "
            "server log (the terminal running app.py).")


def report(err: BaseException, where: str) -> str:
    """Log ``err`` with its traceback if it is a bug (not a ``KarstError``); return :func:`user_message`."""
    if not isinstance(err, KarstError):
        log.error("%s failed", where, exc_info=err)
    return user_message(err)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a handler so failures end as a ``gr.Error`` toast and leave outputs unchanged."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:
            raise gr.Error(plain(report(err, f"handler {_name(fn)}")), print_exception=False) from None
        finally:
            took = time.perf_counter() - start
            if took > SLOW_S:  # a slow view makes the page feel stuck: leave a trace for the operator
                log.info("handler %s took %.1f s", _name(fn), took)

    return wrapper
