"""The model registry and every registered model.

Every module of this package is imported here, so a model registers itself by existing: a new model is one
file with its `@register(...)` decorator (`dacdr.models.registry`).
"""

import importlib
import pkgutil

from dacdr.models.base import RecModel
from dacdr.models.registry import (
    baselines,
    create_model,
    dacdr_variants,
    data_params,
    families,
    get_entry,
    model_names,
    paper_order,
    register,
    select_models,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["RecModel", "baselines", "create_model", "dacdr_variants", "data_params", "families", "get_entry",
           "model_names", "paper_order", "register", "select_models"]
