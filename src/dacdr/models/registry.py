"""One registry for every model: the CLI, the trainer and the benchmarks all read it.

Adding a model: write a `RecModel` subclass in its own file under `dacdr/models/`, decorate it with
`@register("Name")` (or call `register("Variant", Class, **fixed_params)`), and import the file in
`dacdr/models/__init__.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dacdr.data.features import FeatureSpec
from dacdr.models.base import RecModel


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: type[RecModel]
    fixed: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, cls: type[RecModel] | None = None, **fixed: Any):
    """Register `cls` under `name`, with `fixed` constructor arguments (for variants); usable as decorator."""

    def add(c: type[RecModel]) -> type[RecModel]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, c, dict(fixed))
        return c

    return add(cls) if cls is not None else add


def model_names() -> list[str]:
    return list(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(_REGISTRY)}") from None


def create_model(name: str, spec: FeatureSpec, **params: Any) -> RecModel:
    entry = get_entry(name)
    clash = set(params) & set(entry.fixed)
    if clash:
        raise ValueError(f"model {name!r} fixes {sorted(clash)}; do not pass them")
    return entry.cls(spec, **entry.fixed, **params)
