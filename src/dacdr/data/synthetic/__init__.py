"""The synthetic cross-domain click world: a plausible generative story whose true click probability is known.

One module per concern: `config` (the parameters, the presets), `world` (the maths: the world, the people
and their events, calibration, the reference scores), `writer` (`generate`: the dataset layout, through
`dacdr.data.dataset`) and `summary` (`summarize`, `focus_categories`). See ``docs/synthetic.md`` for the story.

Usage::

    from dacdr.data.synthetic import generate
    generate("demo", "data/synthetic-demo", seed=0)

or ``dacdr generate demo --out data/synthetic-demo --seed 0``.
"""

from __future__ import annotations

from dacdr.data.synthetic.config import (
    BEHAVIOUR_TYPES,
    DAY_SECONDS,
    PRESETS,
    SOURCE_DOMAIN,
    MechanismConfig,
    SourceConfig,
    SyntheticConfig,
    TargetConfig,
    default_targets,
    get_preset,
)
from dacdr.data.synthetic.summary import focus_categories, summarize
from dacdr.data.synthetic.world import expected_sigmoid
from dacdr.data.synthetic.writer import generate

__all__ = [
    "BEHAVIOUR_TYPES",
    "DAY_SECONDS",
    "PRESETS",
    "SOURCE_DOMAIN",
    "MechanismConfig",
    "SourceConfig",
    "SyntheticConfig",
    "TargetConfig",
    "default_targets",
    "expected_sigmoid",
    "focus_categories",
    "generate",
    "get_preset",
    "summarize",
]
