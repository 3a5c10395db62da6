"""Running on a Ray cluster: the ``--ray`` flags, and the checks made before Ray is imported.

Ray is an optional extra (``pip install -r requirements-ray.txt``). Without ``--ray`` nothing here
imports it; with ``--ray`` the address is checked first (Ray installed, something listening there),
so that a wrong address is one clear message before any run folder is created. The Ray side
itself is ``karst.ray_backend`` (jobs) and ``karst.sweep`` (Ray Tune).

Addresses: ``--ray local`` starts a Ray instance in this process, bound to 127.0.0.1 and without
its dashboard; ``--ray HOST:PORT`` (or ``ray://HOST:PORT``) joins a cluster started with
``ray start``; a bare ``--ray`` uses ``$RAY_ADDRESS``, else the cluster ``ray start`` left running on
this machine (``auto``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Settings, field_specs, setting
from .errors import ConfigError, RunError
from .flags import add_setting_flags, flag_values
from .runs import read_json

__all__ = ["RayOptions", "add_ray_flags", "ray_address", "ray_options", "prepare_ray", "worker_args", "unreachable",
           "check_worker", "LOCAL", "INSTALL_HINT"]

LOCAL = "local"
INSTALL_HINT = "pip install -r requirements-ray.txt"
_START_HINT = "start one with `ray start --head --node-ip-address 127.0.0.1 --port 6379`, or use --ray local"


@dataclass(frozen=True)
class RayOptions(Settings):
    """What each run asks the cluster for, and how often a run whose node died is tried again."""

    cpus: float = setting(1.0, "CPUs each run asks Ray for (its data loading and, without a GPU, its training)",
                          flag="--ray-cpus", above=0)
    gpus: float = setting(1.0, "GPUs each run asks Ray for when it trains on a GPU (0.5: two runs share one)",
                          flag="--ray-gpus", above=0)
    max_retries: int = setting(1, "times a run whose node died is started again, as a new run, on a live node",
                               flag="--ray-retries", minimum=0)


def add_ray_flags(parser: argparse.ArgumentParser, what: str = "the run") -> None:
    """``--ray [ADDRESS]`` and the per-run resource flags (``--ray-cpus``, ``--ray-gpus``, ``--ray-retries``)."""
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help=f"send {what} to a Ray cluster: HOST:PORT, ray://HOST:PORT, 'local' (a Ray instance "
                        "on this machine, 127.0.0.1 only) or nothing ($RAY_ADDRESS, else the cluster `ray start` "
                        f"runs here); needs {INSTALL_HINT}")
    add_setting_flags(parser, field_specs(RayOptions))


def ray_address(value: str | None) -> str | None:
    """The ``--ray`` flag's address: None without the flag; a bare ``--ray`` is ``$RAY_ADDRESS`` or ``auto``."""
    if value is None:
        return None
    value = value.strip()
    return value or os.environ.get("RAY_ADDRESS", "").strip() or "auto"


def ray_options(args: argparse.Namespace) -> RayOptions:
    """The :class:`RayOptions` of parsed flags (defaults for the flags not given)."""
    return RayOptions.from_dict(flag_values(args, field_specs(RayOptions)))


def worker_args(address: str, options: RayOptions | None = None) -> list[str]:
    """The ``karst worker`` flags that make a runs directory's worker send its runs to ``address``."""
    out = ["--ray", address]
    for spec in field_specs(RayOptions):
        value = getattr(options, spec.path) if options is not None else spec.default
        if value != spec.default:
            out += [spec.flag, str(value)]
    return out


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``HOST:PORT`` or ``ray://HOST:PORT``; None for ``local`` and ``auto``."""
    if address in (LOCAL, "auto"):
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--ray {address!r} is not a Ray address; give HOST:PORT (e.g. 127.0.0.1:6379), "
                          "ray://HOST:PORT, local, or a bare --ray for $RAY_ADDRESS.", field="ray")
    return host.strip("[]"), int(port)


def prepare_ray(address: str, timeout_s: float = 3.0) -> None:
    """Check, before Ray is imported, that ``address`` can work; fail in one line if not (nothing is created).

    For ``local`` it also makes Ray take 127.0.0.1 as this machine's address (read once, when Ray
    is imported), so that the instance it starts listens on loopback only.

    Raises:
        ConfigError: Ray is not installed, the address is malformed, or nothing answers there.
    """
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(f"--ray needs Ray, which is not installed; run: {INSTALL_HINT}", field="ray")
    target = _host_port(address)
    if address == LOCAL:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray's switch for "use loopback"
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=timeout_s):
            pass
    except OSError as e:
        why = e.strerror or type(e).__name__.replace("Error", " error").strip()
        raise ConfigError(f"--ray {address}: no Ray cluster answers there ({why}); {_START_HINT}.",
                          field="ray") from None


def unreachable(address: str, error: Any) -> ConfigError:
    """The one-line error for a cluster that refused ``ray.init`` after answering the port check."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return ConfigError(f"--ray {address}: could not join the Ray cluster ({first}); {_START_HINT}.", field="ray")


def check_worker(runs_dir: str | os.PathLike, address: str | None) -> None:
    """Refuse a runs directory whose live worker trains elsewhere than asked (here, or another cluster).

    Raises:
        RunError: ``<runs>/.worker.json`` names another backend; the message says how to stop that worker.
    """
    info = read_json(Path(runs_dir) / ".worker.json") or {}
    serving = info.get("ray")
    if serving == address:
        return
    where = "trains runs on this machine" if serving is None else f"sends runs to Ray at {serving}"
    wanted = "to train here" if address is None else f"--ray {address}"
    raise RunError(f"the worker of {runs_dir} (pid {info.get('pid')}) {where}, but this app was started "
                   f"{'with ' + wanted if address else wanted}; stop that worker (kill {info.get('pid')}) or use "
                   "another --runs-dir.")

