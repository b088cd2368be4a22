"""The model registry and every registered model."""

from dacdr.models import dacdr as _dacdr  # noqa: F401  (registers DACDR and its ablations)
from dacdr.models import dnn as _dnn  # noqa: F401
from dacdr.models.base import RecModel
from dacdr.models.registry import create_model, get_entry, model_names, register

__all__ = ["RecModel", "create_model", "get_entry", "model_names", "register"]
