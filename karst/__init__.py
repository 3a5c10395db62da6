"""KARST Studio: Kronecker adaptation with re-scaling transmission for timm vision transformers.

The library never imports gradio: it is used from notebooks, the ``karst`` command and the app alike.
"""

from .config import DEFAULT_BACKBONE, DEFAULT_DATASET, KarstConfig, TrainConfig
from .errors import BackboneError, ConfigError, DataError, KarstError, RunError
from .layer import KarstLinear
from .methods import Method, MethodConfig, build_method, check_settings
from .model import (
    ParamCount,
    apply_karst,
    count_parameters,
    karst_layers,
    load_adapter,
    merge_karst,
    save_adapter,
)

__version__ = "0.1.0"

__all__ = [
    "KarstConfig",
    "TrainConfig",
    "DEFAULT_BACKBONE",
    "DEFAULT_DATASET",
    "KarstError",
    "ConfigError",
    "DataError",
    "BackboneError",
    "RunError",
    "KarstLinear",
    "apply_karst",
    "merge_karst",
    "karst_layers",
    "count_parameters",
    "ParamCount",
    "save_adapter",
    "load_adapter",
    "Method",
    "MethodConfig",
    "build_method",
    "check_settings",
    "__version__",
]
