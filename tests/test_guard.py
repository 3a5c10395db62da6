"""components/guard.py and the handlers that rely on it: a user's error is a message, a bug is logged."""

from __future__ import annotations

import logging

import gradio as gr
import pytest

from components import predict
from components.guard import guarded
from karst.errors import RunError


def _raise(err: Exception):
    def handler(*args):
        raise err

    return handler


def test_guarded_shows_a_karst_error_as_is_without_logging(caplog):
    with caplog.at_level(logging.ERROR, logger="karst.app"), pytest.raises(gr.Error) as raised:
        guarded(_raise(RunError("run x is still running; wait for it.")))()
    assert raised.value.message == "run x is still running; wait for it."
    assert not caplog.records


def test_guarded_logs_a_bug_and_says_where_the_log_is(caplog):
    with caplog.at_level(logging.ERROR, logger="karst.app"), pytest.raises(gr.Error) as raised:
        guarded(_raise(KeyError("boom")))()
    assert "KeyError" in raised.value.message and "terminal running app.py" in raised.value.message
    (record,) = caplog.records
    assert record.exc_info and record.exc_info[0] is KeyError  # the traceback is in the log


class _Runner:
    def __init__(self, err: Exception):
        self.err = err

    def downloads(self, run_id):
        raise self.err


def test_downloads_notes_a_karst_error_and_lets_a_bug_through():
    *buttons, note = predict.downloads(_Runner(RunError("run x is still running")), "x")
    assert note == "ℹ️ run x is still running" and all(b.visible is False for b in buttons)
    with pytest.raises(TypeError):  # left to guarded(), which logs it
        predict.downloads(_Runner(TypeError("bug")), "x")
