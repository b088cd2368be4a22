"""A run directory: one place that knows its layout, so nothing else spells its file names.

```
<run>/config.yaml        the validated RunConfig the run was trained with
<run>/model.safetensors  the best weights (safetensors) ...
<run>/model.json         ... and their description (model name, parameters, feature spec)
<run>/vocabs.json        the run's own vocabularies (fine-tuned runs only; else the data's)
<run>/history.json       one record per epoch (loss, validation metrics, samples/s)
<run>/results.json       test metrics of the best weights
<run>/log.txt            what the trainer printed, with times
<run>/resume/            the last epoch's checkpoint (weights, optimizer, RNG, counters), one unit
```
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dacdr.fsutil import recover_dir, write_atomic

if TYPE_CHECKING:
    from dacdr.config import RunConfig
    from dacdr.data.features import Vocabularies
    from dacdr.models import RecModel


class RunDir:
    CONFIG = "config.yaml"
    WEIGHTS = "model.safetensors"
    DESCRIPTION = "model.json"
    VOCABS = "vocabs.json"
    HISTORY = "history.json"
    RESULTS = "results.json"
    LOG = "log.txt"
    RESUME = "resume"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def resume_dir(self) -> Path:
        return self.path / self.RESUME

    def create(self) -> RunDir:
        """Make the directory; put back a resume checkpoint whose swap a crash cut short."""
        self.path.mkdir(parents=True, exist_ok=True)
        recover_dir(self.resume_dir)
        return self

    # ------------------------------------------------------------------ config
    def read_config(self) -> RunConfig:
        from dacdr.config import RunConfig

        path = self.path / self.CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; is {self.path} a run directory?")
        return RunConfig.model_validate(yaml.safe_load(path.read_text()))

    def write_config(self, cfg: RunConfig) -> None:
        write_atomic(self.path / self.CONFIG, yaml.safe_dump(cfg.model_dump(), sort_keys=False))

    def holds_config(self, cfg: RunConfig) -> bool:
        """Whether the run's config.yaml describes `cfg`; fields added since it was written count as their
        defaults, so a newer dacdr still resumes an older run."""
        try:
            return self.read_config() == cfg
        except (OSError, ValueError, yaml.YAMLError):
            return False

    def check_resumable(self, cfg: RunConfig) -> None:
        """Refuse to resume a checkpoint that another config wrote (it would mix two runs' weights)."""
        if self.resume_dir.exists() and (self.path / self.CONFIG).exists() and not self.holds_config(cfg):
            raise ValueError(f"{self.path} holds a run with a different config.yaml; resume needs the same config "
                             "(use --no-resume to start over there, or another --out)")

    # ------------------------------------------------------------------ weights and vocabularies
    def has_model(self) -> bool:
        return (self.path / self.WEIGHTS).is_file()

    def load_model(self) -> tuple[RecModel, dict[str, Any]]:
        from dacdr.training.checkpoint import load_model

        return load_model(self.path)

    def save_model(self, model: RecModel, name: str) -> None:
        from dacdr.training.checkpoint import save_model

        save_model(model, name, self.path)

    def vocabularies(self) -> Vocabularies | None:
        """The run's own vocabularies (a fine-tuned run's), or None when it uses its data's."""
        from dacdr.data.features import Vocabularies

        path = self.path / self.VOCABS
        return Vocabularies.load(path) if path.is_file() else None

    # ------------------------------------------------------------------ records
    def write_history(self, history: list[dict[str, Any]]) -> None:
        write_atomic(self.path / self.HISTORY, json.dumps(history, indent=1))

    def read_results(self) -> dict[str, Any]:
        path = self.path / self.RESULTS
        return json.loads(path.read_text()) if path.is_file() else {}

    def write_results(self, results: dict[str, Any]) -> None:
        write_atomic(self.path / self.RESULTS, json.dumps(results, indent=1))

    def log(self, line: str) -> None:
        with open(self.path / self.LOG, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


__all__ = ["RunDir"]
