"""The model registry and every registered model."""

from dacdr.models import cmf as _cmf  # noqa: F401  (baselines of the paper's Tables 2 and 3)
from dacdr.models import dacdr as _dacdr  # noqa: F401  (registers DACDR and its ablations)
from dacdr.models import dnn as _dnn  # noqa: F401
from dacdr.models import dnn_single as _dnn_single  # noqa: F401
from dacdr.models import emcdr as _emcdr  # noqa: F401
from dacdr.models import mmoe as _mmoe  # noqa: F401
from dacdr.models import ple as _ple  # noqa: F401
from dacdr.models import pop as _pop  # noqa: F401  (the popularity floor)
from dacdr.models import ptupcdr as _ptupcdr  # noqa: F401
from dacdr.models import shared_bottom as _shared_bottom  # noqa: F401
from dacdr.models import sscdr as _sscdr  # noqa: F401
from dacdr.models import star as _star  # noqa: F401
from dacdr.models import tmcdr as _tmcdr  # noqa: F401
from dacdr.models.base import RecModel
from dacdr.models.registry import create_model, get_entry, model_names, register

__all__ = ["RecModel", "create_model", "get_entry", "model_names", "register"]
