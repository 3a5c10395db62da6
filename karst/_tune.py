"""Ray Tune glue for ``karst.sweep``: the search space, the trainable, and the trial-end callback.

Imported only when a sweep runs (Ray Tune is an optional extra). Module-level on purpose: Tune
pickles the trainable and its callbacks, and a class or function defined here is pickled by name.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler

from ._ray_remote import answer, new_trial_key, run_trial
from .config import TrainConfig, config_from_values

__all__ = ["tune_trials"]

# Tune pickles its callbacks with the experiment's state: they name their backend by a key into this table.
_BACKENDS: dict[str, Any] = {}


def _param_space(space: Any) -> dict[str, Any]:
    """Tune's search space from ``karst.sweep.Dimension``s (grid, choice, uniform, loguniform, fixed)."""
    make = {"grid": tune.grid_search, "choice": tune.choice, "fixed": lambda v: v[0],
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v)}
    return {d.path: make[d.kind](list(d.values)) for d in space}


class _Report:
    """Remote side: each epoch's validation accuracy to Ray Tune (what it chooses on, and what ASHA cuts on).

    It runs after the run's forwarder, and waits until the epoch's events are with the driver before
    reporting: a trial that Tune then stops leaves a folder that is complete up to that epoch.
    """

    def __init__(self, metric: str, mailbox: Any, key: str):
        self.metric, self.mailbox, self.key = metric, mailbox, key

    def on_epoch(self, record: dict[str, Any], progress: Any) -> None:
        if record.get("val_acc") is None:
            return
        answer(self.mailbox.put.remote(self.key, []))  # calls from one caller run in order: a barrier
        try:
            tune.report({self.metric: record["val_acc"], "epoch": record["epoch"]})
        except SystemExit:  # Tune stops this trial (ASHA): end the run as cancelled at the next step
            self.mailbox.put.remote(self.key, [("stopped", record["epoch"])])
            self.mailbox.cancel.remote(self.key)


def _trial(params: dict[str, Any], base: dict[str, Any], mailbox: Any, metric: str) -> None:
    """The trainable: the base settings with this trial's values, trained as an ordinary (remote) run."""
    config = config_from_values(params, base)
    key = new_trial_key(tune.get_context().get_trial_id())
    run_trial(config.to_dict(), key, mailbox, callbacks=[_Report(metric, mailbox, key)])


class _TrialEnds(tune.Callback):
    """Driver side: tells the backend when a trial is over (completed, stopped early, or failed)."""

    def __init__(self, key: str):
        self.key = key

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _BACKENDS[self.key].trial_ended(trial.trial_id, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _BACKENDS[self.key].trial_ended(trial.trial_id, failed=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _BACKENDS[self.key].trial_ended(trial.trial_id, failed=True)  # this attempt is lost; Tune starts another


def tune_trials(spec: Any, base: TrainConfig, backend: Any, name: str, storage: str, metric: str) -> None:
    """Run every trial of ``spec`` (a ``karst.sweep.SweepSpec``) with Ray Tune; ``backend`` records them.

    Args:
        base: the settings every trial shares (trials train on the training split: ``train_on_val`` off).
        backend: the ``karst.ray_backend.RayBackend`` that opens and records each trial's run folder.
        name: Tune's experiment name; ``storage``: the folder for Tune's own bookkeeping.
        metric: the key trials report and Tune maximises.
    """
    trial_base = {**base.to_dict(), "train_on_val": False}
    resources = backend.resources(base)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=trial_base, mailbox=backend.mailbox, metric=metric),
        {"cpu": resources["num_cpus"], "gpu": resources["num_gpus"]})
    scheduler = None
    if spec.asha:  # max_t past the last epoch: ASHA stops trials at its rungs, never one about to test
        scheduler = ASHAScheduler(time_attr="epoch", max_t=base.epochs + 1,
                                  grace_period=min(spec.grace_epochs, base.epochs), reduction_factor=spec.reduction)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no progress tables on the terminal
    key = secrets.token_hex(8)
    _BACKENDS[key] = backend
    try:
        tuner = tune.Tuner(
            trainable, param_space=_param_space(spec.space),
            tune_config=tune.TuneConfig(metric=metric, mode="max", num_samples=spec.samples, scheduler=scheduler,
                                        reuse_actors=False),
            run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0, callbacks=[_TrialEnds(key)],
                                      failure_config=tune.FailureConfig(max_failures=backend.options.max_retries)),
        )
        tuner.fit()
    finally:
        _BACKENDS.pop(key, None)
