"""`dacdr experiment`: config -> data conversion (cached) -> split per (beta, seed) -> models -> report.

An experiment config (``configs/experiments/*.yaml``) names the raw files and their format (a
:data:`dacdr.data.loaders.ConvertConfig`: the options of that format's loader), the protocol (P2 ratings with
cold-start shares beta, or P3 ranking on a published split), the seeds, the models (registry names, `all`, or
a selection by family) and the training settings. The
runner converts the raw data once (cached by the conversion config), prepares each split once (the
sample cache), trains every model on every (beta, seed), and writes:

- ``metrics.json``: per scenario (one per beta), the core layout (`dacdr.reporting.summary`) of mean and
  std over seeds per model and target domain, plus each run's raw numbers;
- ``table.md``: the paper's Table 3 layout for P2 (rows: models; columns: MAE / RMSE per beta), or MRR,
  NDCG@5/10, HR@1/5/10 for P3;
- ``validation_curves-<scenario>.png`` and ``results.png``.

Every run directory is resumable: rerunning the same command skips finished runs.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import Field, ValidationError, field_validator, model_validator
from rich.console import Console

from dacdr.config import (
    ConfigError,
    DataConfig,
    MaxLen,
    ModelConfig,
    RunConfig,
    StrictModel,
    TrainConfig,
    format_validation_error,
    read_yaml_mapping,
)
from dacdr.data.loaders import ConvertConfig, convert
from dacdr.data.prepare import prepare
from dacdr.data.samples import PreparedData
from dacdr.reporting.plots import plot_scenarios
from dacdr.reporting.summary import mean_std
from dacdr.reporting.tables import table3_markdown
from dacdr.training.rundir import RunDir

PTUPCDR_SEEDS = [900, 1000, 10, 2020, 500]
RATING_KEYS = ["mae", "rmse"]
RANKING_KEYS = ["mrr", "ndcg@5", "ndcg@10", "hr@1", "hr@5", "hr@10"]


class SplitConfig(StrictModel):
    """How test users and validation are chosen."""

    protocol: Literal["users", "periods"] = Field(
        "users", description="'users': P2, a share beta of overlapping users held out; 'periods': a published split"
    )
    mode: Literal["leak-free", "ptupcdr"] = Field(
        "leak-free",
        description="'leak-free': source sequences hold only behaviours before each rating; 'ptupcdr': the "
        "whole source history, as the PTUPCDR code (validation stays on training users either way)",
    )
    betas: list[float] = Field([0.2, 0.5, 0.8], min_length=1, description="P2: cold-start shares of overlapping users")
    seeds: list[int] = Field(default_factory=lambda: list(PTUPCDR_SEEDS), min_length=1,
                             description="split and model seeds (PTUPCDR's by default)")
    valid_share: float = Field(0.1, gt=0, lt=1, description="share of training users whose target rows validate")
    max_len: MaxLen = 50

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        bad = [b for b in self.betas if not 0 < b < 1]
        if bad:
            raise ValueError(f"betas must lie in (0, 1), got {bad}")
        return self


class RankingConfig(StrictModel):
    """P3 evaluation."""

    negatives: int = Field(999, gt=0, description="sampled negatives per test (user, item)")
    seed: int = Field(0, description="seed of the sampled negatives (the same for every model and run)")


class QuickConfig(StrictModel):
    """What `--quick` changes: a smoke run in minutes."""

    seeds: int = Field(1, gt=0)
    betas: int = Field(1, gt=0, description="keep the first N betas")
    epochs: int = Field(1, gt=0)
    max_steps_per_epoch: int | None = Field(50, gt=0)


class ModelSelection(StrictModel):
    """`models: {families: [...], names: [...], exclude: [...]}`: the paper-table models of `families`, plus
    `names`, less `exclude`, in the paper's order (the registry's metadata: `dacdr.models.select_models`)."""

    families: list[str] = Field(default_factory=list, description="registry families, e.g. id-bridge, multi-domain")
    names: list[str] = Field(default_factory=list, description="models added by name")
    exclude: list[str] = Field(default_factory=list, description="models left out")


def resolve_models(value: Any) -> Any:
    """An experiment's `models`: a list of registry names as written, `all` (every model of the paper's tables,
    `dacdr.models.paper_order()`), or a `ModelSelection` mapping; the result is the list of names."""
    from dacdr.models import paper_order, select_models

    if value == "all":
        return paper_order()
    if not isinstance(value, dict):
        return value
    try:
        sel = ModelSelection.model_validate(value)
    except ValidationError as e:
        raise ValueError("; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())) from None
    try:
        names = select_models(sel.families, sel.names, sel.exclude)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    if not names:
        raise ValueError(f"the selection {value} names no model")
    return names


class ExperimentConfig(StrictModel):
    """A whole experiment, as written in ``configs/experiments/*.yaml``."""

    name: str
    description: str = ""
    params: dict[str, str] = Field(
        default_factory=dict, description="values substituted for {name} in data paths; set with --param"
    )
    data: ConvertConfig
    split: SplitConfig = Field(default_factory=SplitConfig)
    ranking: RankingConfig | None = Field(None, description="set for P3 (ranking) experiments")
    models: list[str] = Field(
        min_length=1, description="registry names (each must be registered), `all`, or {families, names, exclude}")
    optional_models: list[str] = Field(
        default_factory=list, description="registry names run when registered, skipped (with a note) otherwise"
    )
    model_params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="model -> constructor kwargs")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(progress=False))
    quick: QuickConfig = Field(default_factory=QuickConfig)
    cache_dir: str = Field("runs/converted", description="where converted datasets are kept (relative: to cwd)")

    _models = field_validator("models", mode="before")(resolve_models)

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if self.split.protocol == "periods" and self.ranking is None:
            raise ValueError("protocol 'periods' is the P3 ranking protocol: add a `ranking:` section")
        unknown = sorted(set(self.model_params) - set(self.models) - set(self.optional_models))
        if unknown:
            raise ValueError(f"model_params for model(s) not listed in models: {unknown}")
        return self

    @property
    def is_ranking(self) -> bool:
        return self.ranking is not None


_PARAM = re.compile(r"\{(\w+)\}")


def _substitute(raw: Any, params: dict[str, str], where: str = "") -> Any:
    if isinstance(raw, dict):
        return {k: _substitute(v, params, f"{where}.{k}" if where else k) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_substitute(v, params, f"{where}[{i}]") for i, v in enumerate(raw)]
    if isinstance(raw, str):
        def repl(m: re.Match) -> str:
            if m.group(1) not in params:
                raise ConfigError(f"{where}: parameter {{{m.group(1)}}} is not set (pass --param {m.group(1)}=...)")
            return params[m.group(1)]

        return _PARAM.sub(repl, raw)
    return raw


def load_experiment(path: str | Path, params: dict[str, str] | None = None) -> ExperimentConfig:
    """Read, substitute ``{param}`` placeholders in ``data``, validate; relative data paths resolve against
    the config file's folder."""
    path = Path(path)
    raw = read_yaml_mapping(path, "experiment config")
    merged = {**(raw.get("params") or {}), **(params or {})}
    raw["params"] = {k: str(v) for k, v in merged.items()}
    if "data" in raw:
        raw["data"] = _substitute(raw["data"], raw["params"], "data")
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path))) from e
    _check_model_params(cfg, str(path))
    return cfg.model_copy(update={"data": cfg.data.resolve(path.parent)})


def _check_model_params(cfg: ExperimentConfig, source: str) -> None:
    """Each registered model's `model_params` validated before any data work, with the field's path."""
    from dacdr.models import model_names
    from dacdr.models.registry import ModelParamsError, validate_params

    errors: list[tuple[str, str]] = []
    for name, params in cfg.model_params.items():
        if name in model_names():  # an unregistered optional model is skipped later, with a note
            try:
                validate_params(name, params, prefix=f"model_params.{name}.")
            except ModelParamsError as e:
                errors += e.errors
    if errors:
        raise ConfigError("\n".join([f"{source}: invalid configuration", *(f"  {loc}: {msg}" for loc, msg in errors)]))


def converted_path(cfg: ExperimentConfig) -> Path:
    """The cached dataset directory of ``cfg.data`` (keyed by the conversion config)."""
    key = hashlib.sha256(cfg.data.model_dump_json().encode()).hexdigest()[:12]
    return Path(cfg.cache_dir) / f"{cfg.data.name}-{key}"


def ensure_converted(cfg: ExperimentConfig, log=print) -> Path:
    path = converted_path(cfg)
    if (path / "dataset.json").exists():
        log(f"using the converted dataset {path}")
        return path
    return convert(cfg.data, path, overwrite=True, log=log)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def scenario_name(beta: float | None) -> str:
    return "published split" if beta is None else f"beta={round(beta * 100)}%"


def run_experiment(
    cfg: ExperimentConfig,
    out: str | Path,
    *,
    seeds: int | None = None,
    quick: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run every (scenario, seed, model) of ``cfg``; write metrics.json, table.md and plots into ``out``."""
    from dacdr.models import get_entry, model_names
    from dacdr.ranking import ranking_report, sample_candidates
    from dacdr.recipes.train import train_run
    from dacdr.training.checkpoint import load_model

    console = console or Console()
    log = console.print
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    for name in cfg.models:
        get_entry(name)  # an unknown required model fails before any data work
    registered = set(model_names())
    skipped = [m for m in cfg.optional_models if m not in registered]
    models = cfg.models + [m for m in cfg.optional_models if m in registered and m not in cfg.models]
    if skipped:
        log(f"not registered, skipped: {', '.join(skipped)}")

    seed_list = list(cfg.split.seeds)
    betas: list[float | None] = [None] if cfg.split.protocol == "periods" else list(cfg.split.betas)
    train_cfg = cfg.train
    if quick:
        seed_list = seed_list[: cfg.quick.seeds]
        betas = betas[: cfg.quick.betas]
        train_cfg = train_cfg.model_copy(update={"epochs": cfg.quick.epochs,
                                                  "max_steps_per_epoch": cfg.quick.max_steps_per_epoch})
    if seeds is not None:
        if seeds > len(cfg.split.seeds):
            raise ValueError(f"--seeds {seeds}: the config lists only {len(cfg.split.seeds)} seeds")
        seed_list = list(cfg.split.seeds)[:seeds]

    data_path = ensure_converted(cfg, log)
    spec = json.loads((data_path / "dataset.json").read_text())
    if not spec.get("has_timestamps", True):
        log("[yellow]note:[/yellow] this dataset has no timestamps; file order is its clock and each source "
            "sequence holds the user's whole source history")
    cutoff = "all" if cfg.split.mode == "ptupcdr" else "before"
    (out / "experiment.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    keys = RANKING_KEYS if cfg.is_ranking else RATING_KEYS
    scenarios: dict[str, Any] = {}
    for beta in betas:
        scen = scenario_name(beta)
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
        histories: dict[str, list[list[dict[str, Any]]]] = {m: [] for m in models}
        split_stats: list[dict[str, Any]] = []
        for seed in seed_list:
            prepared = _prepare(data_path, cfg, beta, seed, cutoff)
            split_stats.append(_split_stats(prepared, seed))
            log(f"[bold]{cfg.name}[/bold] {scen} seed {seed}: " + ", ".join(
                f"{k} {v:,}" for k, v in split_stats[-1].items() if k != "seed"))
            candidates = None
            if cfg.is_ranking:
                assert cfg.ranking is not None
                test_pos = prepared.split.test[prepared.samples["label"][prepared.split.test] > 0]
                candidates = sample_candidates(prepared, test_pos, cfg.ranking.negatives, cfg.ranking.seed)
            for name in models:
                run_dir = out / "runs" / _slug(scen) / f"{_slug(name)}-seed{seed}"
                run_cfg = RunConfig(
                    data=DataConfig(path=str(data_path), max_len=cfg.split.max_len,
                                    protocol="periods" if beta is None else "users",
                                    cold_start_share=beta or 0.2, valid_share=cfg.split.valid_share,
                                    sequence_cutoff=cutoff),
                    model=ModelConfig(name=name, params=model_params(name, cfg.model_params.get(name, {}), prepared)),
                    train=train_cfg.model_copy(update={"seed": seed}),
                )
                t_run = time.perf_counter()
                result = train_run(run_cfg, prepared=prepared, run_dir=run_dir, console=console)
                if cfg.is_ranking:
                    assert cfg.ranking is not None
                    ranked, key = run_dir / "ranking.json", cfg.ranking.model_dump()
                    saved = json.loads(ranked.read_text()) if ranked.exists() else {}
                    if saved.get("candidates") == key and \
                            ranked.stat().st_mtime >= (run_dir / RunDir.WEIGHTS).stat().st_mtime:
                        # a resumed experiment: this checkpoint was ranked against these candidates already
                        result["test"] = {"cold": saved["cold"], "all": saved["all"]}
                    else:
                        model, _ = load_model(run_dir)
                        rank = ranking_report(model, prepared, candidates=candidates, indices=prepared.split.test[
                            prepared.samples["label"][prepared.split.test] > 0])
                        result["test"] = {"cold": rank, "all": rank}
                        ranked.write_text(json.dumps(result["test"] | {"candidates": key}, indent=1))
                result["seconds"] = round(time.perf_counter() - t_run, 1)
                runs[name].append(result)
                histories[name].append(result.get("history", []))
                headline = {d: {k: round(m[k], 4) for k in keys} for d, m in result["test"]["cold"].items()}
                log(f"  {name} seed {seed}: {headline} ({result['seconds']:.0f} s)")
        scenarios[scen] = _aggregate(runs, keys, seed_list, split_stats, beta)
        _write_scenario(out / _slug(scen), scenarios[scen], histories, "auc" if cfg.is_ranking else "rmse")

    metrics = {
        "experiment": cfg.name,
        "description": cfg.description,
        "task": "ranking" if cfg.is_ranking else "rating",
        "protocol": "P3" if cfg.is_ranking else f"P2 ({cfg.split.mode})",
        "dataset": {"name": spec["name"], "path": str(data_path), "has_timestamps": spec.get("has_timestamps", True),
                    "source": spec["source_domain"], "targets": spec["target_domains"]},
        "seeds": seed_list,
        "quick": quick,
        "models_skipped": skipped,
        "metric_keys": keys,
        "scenarios": scenarios,
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=_json_default) + "\n")
    table = table3_markdown(metrics)
    (out / "table.md").write_text(table)
    plot_scenarios(metrics, out / "results.png")
    console.print(table)
    log(f"wrote {out}/metrics.json, table.md, results.png in {metrics['wall_seconds']:.0f} s")
    return metrics


def model_params(name: str, params: dict[str, Any], prepared: PreparedData) -> dict[str, Any]:
    """``params`` plus the data-dependent arguments of the model's constructor (``n_users`` for the models
    with user-id embeddings: `dacdr.models.data_params`)."""
    from dacdr.models import data_params

    return data_params(name, len(prepared.vocabs["user"])) | params


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer | np.floating):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _prepare(data_path: Path, cfg: ExperimentConfig, beta: float | None, seed: int, cutoff: str) -> PreparedData:
    return prepare(split_config(data_path, cfg, beta, seed, cutoff))  # type: ignore[return-value]


def split_config(data_path: Path, cfg: ExperimentConfig, beta: float | None, seed: int, cutoff: str) -> DataConfig:
    """The data section of one (beta, seed) split of an experiment."""
    fields: dict[str, Any] = {"path": str(data_path), "max_len": cfg.split.max_len,
                              "valid_share": cfg.split.valid_share, "split_seed": seed, "sequence_cutoff": cutoff}
    if beta is None:
        fields["protocol"] = "periods"
    else:
        fields |= {"protocol": "users", "cold_start_share": beta}
    return DataConfig(**fields)


def _split_stats(prepared: PreparedData, seed: int) -> dict[str, Any]:
    s, split = prepared.samples, prepared.split
    return {
        "seed": seed,
        "train_target": len(split.train_target),
        "train_source": len(split.train_source),
        "valid": len(split.valid),
        "test": len(split.test),
        "test_users": int(len(np.unique(s["user"][split.test]))),
    }


def _aggregate(
    runs: dict[str, list[dict[str, Any]]], keys: list[str], seeds: list[int], split_stats: list[dict[str, Any]],
    beta: float | None,
) -> dict[str, Any]:
    """The core metrics.json layout (models -> domain -> metric -> mean/std) plus per-run numbers."""
    def agg(scope: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, rs in runs.items():
            domains = list(rs[0]["test"][scope]) if rs else []
            out[name] = {d: {k: mean_std([r["test"][scope].get(d, {}).get(k, float("nan")) for r in rs])
                             for k in keys} for d in domains}
        return out

    return {
        "beta": beta,
        "seeds": seeds,
        "splits": split_stats,
        "models": agg("cold"),
        "models_all_users": agg("all"),
        "runs": {name: [{"seed": r["seed"], "test": r["test"]["cold"], "seconds": r.get("seconds"),
                         "epochs": len(r.get("history", []))} for r in rs] for name, rs in runs.items()},
    }


def _write_scenario(directory: Path, scenario: dict[str, Any], histories: dict[str, list], metric: str) -> None:
    from dacdr.reporting.plots import plot_validation_curves

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps(scenario, indent=1, default=_json_default) + "\n")
    if any(h for hs in histories.values() for h in hs):
        plot_validation_curves(histories, metric, directory / "validation_curves.png")


