"""Who is asking: each browser's secret token, so runs have launchers and the queue has turns.

A browser keeps a random token in its local storage (``gr.BrowserState``, encrypted with the runs
directory's secret, so it outlives page refreshes and app restarts). On page load the token moves
into the session's state; handlers that launch or change a run pass it to the library as ``owner``
(:class:`karst.workspace.Workspace`). An API client (``gradio_client``) has no local storage: its
session stands for it, so one ``Client`` is one launcher.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from .runner import Runner

__all__ = ["Clients", "build", "bind", "client_id", "as_client"]

_TOKEN_CHARS = 22  # token_urlsafe(16)


@dataclass
class Clients:
    stored: gr.BrowserState  # the token in the browser's local storage
    token: gr.State  # the same token for this page's handlers (not an API parameter)


def build(runner: Runner) -> Clients:
    return Clients(stored=gr.BrowserState("", storage_key="karst-studio-client", secret=runner.client_secret()),
                   token=gr.State(None))


def issue_token(stored: object) -> tuple[str, str]:
    """The browser's token, or a new one for a browser that has none (or sent something else)."""
    token = stored if isinstance(stored, str) and len(stored) >= _TOKEN_CHARS else secrets.token_urlsafe(16)
    return token, token


def client_id(token: object, request: gr.Request | None) -> str:
    """The ``owner`` to pass to the library: the browser's token, else the API client's session.
    Never None: None is the operator's own access (the CLI, a notebook), not a web client's."""
    if isinstance(token, str) and len(token) >= _TOKEN_CHARS:
        return token
    session = getattr(request, "session_hash", None)
    return f"session:{session}" if session else "anonymous"


def as_client(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A handler for ``fn(*values, owner=...)`` whose inputs are ``[Clients.token, *values]``: it passes
    the caller's :func:`client_id` as ``owner``. The token is a gr.State, so a public endpoint's
    parameters stay ``values``."""
    # `request` first: Gradio finds it by its annotation and inserts it by its position.
    def handler(request: gr.Request, token: str | None, *values: Any) -> Any:
        return fn(*values, owner=client_id(token, request))

    return handler


def bind(c: Clients, demo: gr.Blocks) -> None:
    demo.load(issue_token, inputs=c.stored, outputs=[c.stored, c.token], api_visibility="private", queue=False)
