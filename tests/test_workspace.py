"""Workspace as a front end uses it with many clients: launchers own their runs, clients take turns
in the queue, and one client's limit. No worker runs here: launches stay queued, which is all the
queue needs (tests/test_jobs.py trains through a real worker)."""

from __future__ import annotations

import stat
from collections import Counter
from pathlib import Path

import pytest
from helpers import fast_form, trained_run

from karst.errors import ConfigError, RunError
from karst.runs import RunStore, fair_order, owner_key
from karst.workspace import Workspace

ADA, BEN = "ada-token-0123456789abcdef", "ben-token-0123456789abcdef"


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "runs", tmp_path / "uploads", start_worker=False, max_active_per_owner=2)


def test_fair_order_takes_turns_between_owners_and_keeps_launch_order_within_one() -> None:
    rows = [(1.0, "a1", "a"), (2.0, "a2", "a"), (3.0, "a3", "a"), (4.0, "b1", "b"), (5.0, "c1", None)]
    assert fair_order(rows, Counter()) == ["a1", "b1", "c1", "a2", "a3"]
    # "a" is training a run now: it has had its turn, so the others go first.
    assert fair_order(rows, Counter({"a": 1})) == ["b1", "c1", "a1", "a2", "a3"]
    # One owner alone (the CLI, a notebook): plain launch order.
    solo = [(3.0, "x3", None), (1.0, "x1", None), (2.0, "x2", None)]
    assert fair_order(solo, Counter({None: 1})) == ["x1", "x2", "x3"]


def test_the_status_records_a_digest_of_the_launcher_never_the_token(ws: Workspace) -> None:
    run_id = ws.launch(fast_form(), owner=ADA)
    status_text = (ws.runs_dir / run_id / "status.json").read_text()
    assert ADA not in status_text
    assert ws.store.read_status(run_id)["owner"] == owner_key(ADA) != owner_key(BEN)
    assert ws.store.read_status(ws.launch(fast_form()))["owner"] is None  # the operator's launch


def test_queue_positions_follow_the_turns(ws: Workspace) -> None:
    a1, a2 = ws.launch(fast_form(), owner=ADA), ws.launch(fast_form(), owner=ADA)
    b1 = ws.launch(fast_form(), owner=BEN)
    assert [ws.jobs.queue_position(r) for r in (a1, b1, a2)] == [1, 2, 3]
    ws.store.write_status(a1, status="running")  # as the worker does when it takes a1
    assert [ws.jobs.queue_position(r) for r in (b1, a2)] == [1, 2]
    assert ws.store.queued() == [b1, a2]  # the worker's own order (jobs._claim_next reads this)


def test_one_client_may_have_only_its_share_queued_or_running(ws: Workspace) -> None:
    first, second = ws.launch(fast_form(), owner=ADA), ws.launch(fast_form(), owner=ADA)
    with pytest.raises(RunError, match=r"already have 2 runs queued or running.*may have 2 at once") as err:
        ws.launch(fast_form(), owner=ADA)
    assert first in str(err.value) and second in str(err.value)
    assert len(ws.store.run_ids()) == 2  # nothing was created for the refused launch
    ws.launch(fast_form(), owner=BEN)  # another browser is not held back
    ws.launch(fast_form())  # nor the operator
    ws.stop(first, owner=ADA)  # a queued run is cancelled at once: a turn frees up
    assert ws.store.read_status(first)["status"] == "cancelled"
    third = ws.launch(fast_form(), owner=ADA)
    # Resuming a run counts as launching it again.
    with pytest.raises(RunError, match="already have 2 runs"):
        ws.resume(first, owner=ADA)
    ws.stop(third, owner=ADA)
    assert "Resuming" in ws.resume(first, owner=ADA)


def test_only_the_launcher_changes_a_run(ws: Workspace) -> None:
    run_id = ws.launch(fast_form(), owner=ADA)
    for action, call in (("stop", lambda who: ws.stop(run_id, owner=who)),
                         ("rename", lambda who: ws.set_run_meta(run_id, "mine", None, owner=who))):
        with pytest.raises(RunError, match=f"another browser; only the person who launched it can {action}"):
            call(BEN)
    assert ws.store.read_status(run_id)["status"] == "queued"
    assert ws.run_meta(run_id)["name"] == ""
    assert "Stop requested" in ws.stop(run_id, owner=ADA)
    for action, call in (("resume", lambda who: ws.resume(run_id, owner=who)),
                         ("delete", lambda who: ws.delete(run_id, owner=who))):
        with pytest.raises(RunError, match=f"only the person who launched it can {action}"):
            call(BEN)
    assert ws.store.read_status(run_id)["status"] == "cancelled"
    assert ws.set_run_meta(run_id, "kept", None)["name"] == "kept"  # the operator may (owner=None)
    assert ws.delete(run_id, owner=ADA) == f"Deleted run {run_id}."


def test_runs_launched_without_a_token_are_everybodys(ws: Workspace) -> None:
    run_id = ws.launch(fast_form())  # e.g. from the CLI, or before launchers were recorded
    assert "Stop requested" in ws.stop(run_id, owner=BEN)


def test_the_client_secret_is_private_stable_and_shared(ws: Workspace, tmp_path: Path) -> None:
    secret = ws.client_secret()
    path = ws.runs_dir / ".client-secret"
    assert len(secret) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Workspace(ws.runs_dir, tmp_path / "uploads2", start_worker=False)
    assert again.client_secret() == secret  # an app restart keeps the browsers' tokens readable
    path.write_text("short")
    with pytest.raises(RunError, match="damaged"):
        ws.client_secret()
    assert not list(ws.runs_dir.glob(".client-secret.*.tmp"))


def test_a_bad_limit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_active_per_owner=0"):
        Workspace(tmp_path / "runs", tmp_path / "up", start_worker=False, max_active_per_owner=0)


def test_a_status_with_a_non_text_owner_is_reported_damaged(ws: Workspace) -> None:
    run_id = ws.launch(fast_form(), owner=ADA)
    ws.store.write_status(run_id, owner=7)
    with pytest.raises(RunError, match="owner that is not text"):
        RunStore(ws.runs_dir).read_status(run_id)


def test_the_same_run_downloads_again_and_again(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    # A repeat download links the same file over itself: rename() then does nothing (POSIX), which
    # once left the temporary link behind and made the third download fail.
    run = trained_run(tmp_path_factory.getbasetemp() / "shared-run")
    ws = Workspace(run.parent, tmp_path / "uploads", start_worker=False)
    first = ws.downloads(run.name)
    for _ in range(3):
        again = ws.downloads(run.name)
        assert again == first and all(p.read_bytes() == q.read_bytes() for p, q in zip(again, first))
    assert sorted(p.name for p in first[0].parent.iterdir()) == sorted(p.name for p in first)  # no .tmp left
