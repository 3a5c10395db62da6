"""Turn exceptions raised inside UI handlers into readable messages, never tracebacks.

Every event handler a panel registers goes through :func:`guarded`. A ``KarstError`` is the user's
to fix, so its one-line message is shown as is. Anything else is a bug: the traceback goes to the
server log and the user gets a short message saying so.
"""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from karst.errors import KarstError

__all__ = ["guarded", "user_message"]

log = logging.getLogger("karst.app")


def user_message(err: BaseException) -> str:
    """The one line a user sees for ``err``."""
    if isinstance(err, KarstError):
        return str(err)
    return f"Something went wrong ({type(err).__name__}: {err}). The details are in the server log."


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a handler so failures end as a ``gr.Error`` toast and leave outputs unchanged."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as err:
            if not isinstance(err, KarstError):
                log.exception("handler %s failed", getattr(fn, "__name__", fn))
            # gr.Error renders HTML; messages may quote user input such as file names.
            raise gr.Error(html.escape(user_message(err)), print_exception=False) from None

    return wrapper
