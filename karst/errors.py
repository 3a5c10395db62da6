"""Typed errors whose message is one line: what was given, why it is wrong, what to try.

The CLI prints ``str(err)`` and exits with status 2; the app shows it as a message. Any other
exception escaping the library is a bug. Which type goes with which condition: the table under
"Errors: one type per condition" in docs/ARCHITECTURE.md.
"""

from __future__ import annotations

__all__ = ["KarstError", "ConfigError", "DataError", "BackboneError", "RunError"]


class KarstError(ValueError):
    """Base class for every error the user can fix by changing their input."""

    def __init__(self, message: str, field: str | None = None):
        # Keep the message on one line: it is shown verbatim in a terminal and in the app.
        super().__init__(" ".join(str(message).split()))
        self.field = field  # the setting's path ("method.adapter.rank") when one setting is at fault


class ConfigError(KarstError):
    """Invalid settings (adapter, method or training configuration), or settings that do not fit the model."""


class DataError(KarstError):
    """Data or an image that cannot be read, is malformed or unsafe (pixel limit, zip checks)."""


class BackboneError(KarstError):
    """A backbone name, weight file or architecture that cannot be loaded."""


class RunError(KarstError):
    """A run that does not exist, is in the wrong state or is damaged, or a model file (adapter,
    merged model) that cannot be loaded or merged."""
