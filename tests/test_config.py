"""Run configs: unknown keys and bad values fail at once, naming the field's path; `--set` overrides; YAML errors.

The CLI's exit codes for these live in tests/test_cli.py and tests/reliability/test_params.py (every model
parameter error); here is the library's side: `load_run_config`, `check_model_params` and the schemas.
"""

from __future__ import annotations

import pytest
import yaml

from dacdr.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    check_model_params,
    load_run_config,
)


def _write(tmp_path, raw) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return str(path)


def _error(tmp_path, raw, overrides=None) -> str:
    with pytest.raises(ConfigError) as err:
        load_run_config(_write(tmp_path, raw), overrides)
    return str(err.value)


MINIMAL = {"data": {"path": "some/dataset"}}


def test_a_minimal_config_validates_and_round_trips_through_yaml(tmp_path):
    """A run directory's config.yaml is `model_dump()` written as YAML: reading it back gives the same config."""
    cfg = load_run_config(_write(tmp_path, MINIMAL | {"train": {"epochs": 3}, "model": {"params": {"dim": 16}}}))
    assert (cfg.data.path, cfg.train.epochs, cfg.model.name, cfg.model.params) == ("some/dataset", 3, "DACDR",
                                                                                      {"dim": 16})
    again = load_run_config(_write(tmp_path, yaml.safe_dump(cfg.model_dump(), sort_keys=False)))
    assert again == cfg


@pytest.mark.parametrize("raw,path", [
    (MINIMAL | {"colour": 1}, "colour"),
    ({"data": {"path": "d", "max_lenn": 8}}, "data.max_lenn"),
    (MINIMAL | {"train": {"epochz": 3}}, "train.epochz"),
    (MINIMAL | {"model": {"name": "DACDR", "parms": {}}}, "model.parms"),
])
def test_unknown_keys_are_rejected_with_their_path(tmp_path, raw, path):
    assert f"{path}: Extra inputs are not permitted" in _error(tmp_path, raw)


@pytest.mark.parametrize("section,key,value,expect", [
    ("data", "max_len", 0, "data.max_len: Input should be greater than 0"),
    ("data", "max_len", 4096, "data.max_len: Input should be less than or equal to 1024"),
    ("data", "protocol", "weekly", "data.protocol: Input should be 'time', 'users' or 'periods'"),
    ("data", "valid_share", 1.0, "data.valid_share: Input should be less than 1"),
    ("data", "source_sample_rate", -0.1, "data.source_sample_rate: Input should be greater than or equal to 0"),
    ("data", "min_count", {"item": "many"}, "data.min_count.item: Input should be a valid integer"),
    ("train", "batch_size", 0, "train.batch_size: Input should be greater than 0"),
    ("train", "lr", -1e-3, "train.lr: Input should be greater than 0"),
    ("train", "device", "tpu", "train.device: Input should be 'auto', 'cpu' or 'cuda'"),
    ("train", "sharding", {"item": "diagonal"}, "train.sharding.item: Input should be 'table_wise'"),
    ("train", "num_threads", 0, "train.num_threads: Input should be greater than 0"),
])
def test_bad_values_are_named(tmp_path, section, key, value, expect):
    raw = {"data": {"path": "d"}, section: {"path": "d"} if section == "data" else {}}
    raw[section][key] = value
    msg = _error(tmp_path, raw)
    assert msg.startswith(f"{tmp_path / 'run.yaml'}: invalid configuration")
    assert expect in msg


def test_every_bad_field_is_listed_at_once(tmp_path):
    msg = _error(tmp_path, {"data": {"path": "d", "max_len": -1}, "train": {"epochs": 0, "lr": "fast"}})
    lines = msg.splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == ["data.max_len", "train.epochs", "train.lr"]


def test_the_data_needs_a_source(tmp_path):
    assert "set either data.path or data.synthetic" in _error(tmp_path, {"data": {"max_len": 8}})
    assert "data: Field required" in _error(tmp_path, {"train": {"epochs": 1}})
    assert DataConfig(synthetic="tiny").path is None  # a synthetic preset alone is a source


def test_overrides_set_dotted_keys_on_top_of_the_file(tmp_path):
    path = _write(tmp_path, MINIMAL | {"train": {"epochs": 10, "lr": 0.01}})
    cfg = load_run_config(path, {"train.epochs": 2, "data.max_len": 7, "model.params.dim": 16, "out": "o"})
    assert (cfg.train.epochs, cfg.train.lr, cfg.data.max_len, cfg.model.params, cfg.out) == (2, 0.01, 7,
                                                                                             {"dim": 16}, "o")
    # an override is validated like the file: a bad or unknown one names its field
    assert "train.epochs: Input should be greater than 0" in _error(tmp_path, MINIMAL, {"train.epochs": 0})
    assert "data.colour: Extra inputs are not permitted" in _error(tmp_path, MINIMAL, {"data.colour": "red"})
    assert "is a value" in _error(tmp_path, MINIMAL, {"data.path.x": 1})


def test_model_params_are_checked_against_the_model(tmp_path):
    cfg = RunConfig(data=DataConfig(path="d"), model=ModelConfig(name="DACDR", params={"dim": 8, "heads": 3}))
    with pytest.raises(ConfigError, match=r"model.params.heads: dim 8 is not divisible by heads 3"):
        check_model_params(cfg, "cfg.yaml")
    with pytest.raises(ConfigError, match=r"model.name: .*unknown model 'Nope'"):
        check_model_params(cfg.model_copy(update={"model": ModelConfig(name="Nope")}), "cfg.yaml")
    check_model_params(cfg.model_copy(update={"model": ModelConfig(params={"dim": 8, "heads": 2})}), "cfg.yaml")
    # load_run_config runs the same check
    msg = _error(tmp_path, MINIMAL | {"model": {"params": {"dim": 8, "dropout": 2.0}}})
    assert "model.params.dropout: Input should be less than 1" in msg


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_run_config(tmp_path / "missing.yaml")
    assert "not valid YAML" in _error(tmp_path, "data: [unclosed")
    assert "expected a mapping at the top level, got list" in _error(tmp_path, "- data\n- train\n")
    assert "expected a mapping at the top level, got str" in _error(tmp_path, "just words\n")
    assert "expected a mapping at the top level, got NoneType" in _error(tmp_path, "")
    assert issubclass(ConfigError, ValueError)  # callers that catch ValueError see config errors too


def test_schemas_reject_unknown_keys_directly():
    """The schemas themselves, as other modules build them from dicts (run directories, experiments)."""
    for schema, good in ((DataConfig, {"path": "d"}), (TrainConfig, {}), (ModelConfig, {})):
        schema.model_validate(good)
        with pytest.raises(ValueError, match="typo"):
            schema.model_validate(good | {"typo": 1})
