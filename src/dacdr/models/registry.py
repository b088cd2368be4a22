"""One registry for every model: the CLI, the trainer and the benchmarks all read it.

Adding a model is one file: write a `RecModel` subclass in its own module under `dacdr/models/` and decorate
it with `@register("Name", family=..., order=...)` (or call `register("Variant", Class, **fixed_params)`);
`dacdr.models` imports every module of the package, so nothing else needs an edit. The metadata is what
the recipes read: `order` places the model in the paper's tables (`dacdr bench` trains every model that has
one; an experiment's `models: all` runs them), `family` groups models for an experiment's
`models: {families: [...]}`, and `tags` mark roles such as `ablation` (DACDR's, tested against DACDR).
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import ConfigDict, Field, Strict, ValidationError
from pydantic import create_model as pydantic_model

from dacdr.data.features import FeatureSpec
from dacdr.models.base import RecModel


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: type[RecModel]
    fixed: dict[str, Any] = field(default_factory=dict)
    family: str | None = None
    """a group of related models: `floor`, `single-domain`, `id-bridge`, `multi-domain`, `dacdr`, ..."""
    order: float | None = None
    """the row of the paper's tables (`paper_order`); None: not in them (the bench skips it)"""
    tags: frozenset[str] = frozenset()
    """roles, e.g. `ablation` (a DACDR ablation)"""


_REGISTRY: dict[str, ModelEntry] = {}


def register(
    name: str,
    cls: type[RecModel] | None = None,
    *,
    family: str | None = None,
    order: float | None = None,
    tags: tuple[str, ...] | frozenset[str] = (),
    **fixed: Any,
):
    """Register `cls` under `name`, with its metadata and `fixed` constructor arguments (for variants);
    usable as a decorator."""

    def add(c: type[RecModel]) -> type[RecModel]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, c, dict(fixed), family, order, frozenset(tags))
        return c

    return add(cls) if cls is not None else add


def model_names(*, family: str | None = None, tag: str | None = None) -> list[str]:
    """Registered names (in registration order), optionally those of one `family` or with one `tag`."""
    return [e.name for e in _REGISTRY.values()
            if (family is None or e.family == family) and (tag is None or tag in e.tags)]


def families() -> list[str]:
    return sorted({e.family for e in _REGISTRY.values() if e.family})


def paper_order() -> list[str]:
    """The models of the paper's tables (every entry with an `order`), in table order."""
    ranked = [(e.order, i, e.name) for i, e in enumerate(_REGISTRY.values()) if e.order is not None]
    return [name for _, _, name in sorted(ranked)]


def baselines() -> list[str]:
    """The paper-table rows that are not DACDR or one of its variants, in table order."""
    return [n for n in paper_order() if _REGISTRY[n].family != "dacdr"]


def dacdr_variants() -> list[str]:
    """DACDR followed by its ablations (the models tagged `ablation`), in table order."""
    return ["DACDR", *[n for n in paper_order() if "ablation" in _REGISTRY[n].tags]]


def select_models(
    families: list[str] | None = None, names: list[str] | None = None, exclude: list[str] | None = None
) -> list[str]:
    """The paper-table models of `families`, plus `names`, less `exclude`: in table order, then any
    unordered `names` as listed. An unknown family or name is a `KeyError` naming the known ones."""
    known = set(e.family for e in _REGISTRY.values() if e.family)
    bad = sorted(set(families or []) - known)
    if bad:
        raise KeyError(f"unknown model family {bad}; registered families: {', '.join(sorted(known))}")
    for n in [*(names or []), *(exclude or [])]:
        get_entry(n)
    wanted = {n for n in paper_order() if _REGISTRY[n].family in set(families or [])} | set(names or [])
    wanted -= set(exclude or [])
    ordered = [n for n in paper_order() if n in wanted]
    return ordered + [n for n in (names or []) if n in wanted and n not in ordered]


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(_REGISTRY)}") from None


class ModelParamsError(ValueError):
    """Constructor parameters that do not validate; `errors` holds (field path, message) pairs."""

    def __init__(self, name: str, errors: list[tuple[str, str]], prefix: str):
        self.errors = [(f"{prefix}{loc}", msg) for loc, msg in errors]
        super().__init__(f"invalid parameters for model {name!r}: "
                         + "; ".join(f"{loc}: {msg}" for loc, msg in self.errors))


ZERO_ALLOWED = {"n_shared_experts"}
"""integer parameters for which 0 is meaningful; every other integer parameter must be >= 1"""
POSITIVE_FLOATS = {"temperature"}


def _constrain(tp: Any, name: str) -> Any:
    """A constructor annotation turned into a validating one: integers >= 1 (strict, no bools), finite floats,
    probabilities in [0, 1) for `dropout`, element by element inside tuples, lists and unions."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return Annotated[bool, Strict()]
    if tp is int:
        return Annotated[int, Strict(), Field(ge=0 if name in ZERO_ALLOWED else 1)]
    if tp is float:
        bounds = {"ge": 0.0, "lt": 1.0} if name == "dropout" else {"gt": 0.0} if name in POSITIVE_FLOATS else {}
        return Annotated[float, Field(allow_inf_nan=False, **bounds)]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_constrain(a, name) for a in args)]  # noqa: UP007  (built from a tuple)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return tuple[_constrain(args[0], name), ...]
    if origin is list and args:
        return list[_constrain(args[0], name)]
    return tp


def _constructor_fields(cls: type) -> dict[str, tuple[Any, Any]]:
    """name -> (annotation, default) of the keyword parameters of `cls` and, through `**params`, its bases."""
    out: dict[str, tuple[Any, Any]] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        hints = typing.get_type_hints(init)
        sig = inspect.signature(init)
        for pname, prm in sig.parameters.items():
            if pname in ("self", "spec") or prm.kind in (prm.VAR_KEYWORD, prm.VAR_POSITIONAL) or pname in out:
                continue
            default = ... if prm.default is prm.empty else prm.default
            out[pname] = (hints.get(pname, Any), default)
        if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    return out


def validate_params(name: str, params: dict[str, Any], prefix: str = "model.params.") -> None:
    """Check a model's constructor parameters before anything is built: unknown keys, types, ranges, and that
    `dim` is divisible by `heads`; a `ModelParamsError` names each bad field by its path (`prefix` + key)."""
    entry = get_entry(name)
    clash = sorted(set(params) & set(entry.fixed))
    if clash:
        raise ModelParamsError(name, [(k, f"fixed by model {name!r}; do not pass it") for k in clash], prefix)
    fields = {k: v for k, v in _constructor_fields(entry.cls).items() if k not in entry.fixed}
    errors = [(k, f"unknown parameter of {name!r}; known: {', '.join(sorted(fields))}")
              for k in params if k not in fields]
    schema = pydantic_model(f"{entry.cls.__name__}Params", __config__=ConfigDict(extra="ignore"),
                            **{k: (_constrain(tp, k), default) for k, (tp, default) in fields.items()})
    try:
        values = schema.model_validate(params)
    except ValidationError as e:
        for err in e.errors():
            loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
            errors.append((loc, err["msg"]))
    else:
        dim, heads = getattr(values, "dim", None), getattr(values, "heads", None)
        if isinstance(dim, int) and isinstance(heads, int) and dim % heads:
            errors.append(("heads", f"dim {dim} is not divisible by heads {heads}"))
    if errors:
        raise ModelParamsError(name, errors, prefix)


def data_params(name: str, n_users: int) -> dict[str, Any]:
    """The constructor arguments that come from the data rather than a config: the user vocabulary size
    (`n_users`) for the models that embed user ids (`"user"` among their inputs)."""
    return {"n_users": n_users} if "user" in get_entry(name).cls.inputs else {}


def create_model(name: str, spec: FeatureSpec, **params: Any) -> RecModel:
    entry = get_entry(name)
    validate_params(name, params)
    return entry.cls(spec, **entry.fixed, **params)
