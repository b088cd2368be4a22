"""Model parameters are validated before anything heavy starts, each error naming the field's path."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from dacdr.cli import app as cli_app
from dacdr.models import create_model, model_names
from dacdr.models.registry import ModelParamsError, validate_params


@pytest.fixture
def config(tmp_path):
    """A config whose data does not exist: every failure below must come before the data is touched."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"path": str(tmp_path / "no-such-dataset")},
                                    "model": {"name": "DACDR", "params": {"dim": 8, "heads": 2}}}))
    return path


@pytest.mark.parametrize("override,expect", [
    ("model.params.colour=1", "model.params.colour: unknown parameter of 'DACDR'"),
    ("model.params.dim=-4", "model.params.dim: Input should be greater than or equal to 1"),
    ("model.params.dim=0", "model.params.dim: Input should be greater than or equal to 1"),
    ("model.params.heads=0", "model.params.heads: Input should be greater than or equal to 1"),
    ("model.params.heads=3", "model.params.heads: dim 8 is not divisible by heads 3"),
    ("model.params.dropout=1.5", "model.params.dropout: Input should be less than 1"),
    ("model.params.encoder_hidden=[16, 0]", "model.params.encoder_hidden[1]: Input should be greater than"),
    ("model.params.dim=true", "model.params.dim: Input should be a valid integer"),
    ("train.lr=inf", "train.lr: Input should be a finite number"),
    ("train.lr=.nan", "train.lr: Input should be a finite number"),
    ("train.epochs.x=1", "--set train.epochs.x: train.epochs is a value (10), not a section"),
    ("model.name=Nope", "model.name: unknown model 'Nope'"),
])
def test_bad_model_parameters_fail_at_once_naming_the_field(config, override, expect):
    if override.startswith("train.epochs."):
        config.write_text(config.read_text() + "train: {epochs: 10}\n")
    result = CliRunner().invoke(cli_app, ["train", str(config), "--set", override])
    assert result.exit_code == 2, result.output
    assert expect in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and "no-such-dataset" not in result.output


def test_every_registered_model_validates_its_defaults():
    for name in model_names():
        validate_params(name, {})


def test_create_model_validates_too(handmade_prepared):
    with pytest.raises(ModelParamsError, match=r"model.params.user_dim"):
        create_model("DACDR", handmade_prepared.spec, user_dim=-1)
    with pytest.raises(ModelParamsError, match=r"model.params.inner_lr: Input should be a finite number"):
        create_model("TMCDR", handmade_prepared.spec, n_users=10, inner_lr=float("inf"))


def test_experiment_model_params_are_validated_on_load(tmp_path):
    from dacdr.config import ConfigError
    from dacdr.recipes.experiment import load_experiment

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({
        "name": "x", "models": ["DACDR", "PLE"],
        "data": {"format": "table", "name": "x", "source": "a", "targets": ["b"],
                 "files": {"a": "a.csv", "b": "b.csv"}},
        "model_params": {"DACDR": {"dim": 8, "heads": 0}, "PLE": {"levels": "two"}},
    }))
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert "model_params.DACDR.heads: Input should be greater than or equal to 1" in str(err.value)
    assert "model_params.PLE.levels: Input should be a valid integer" in str(err.value)
