"""Measure a DACDR design choice on the demo world: cold-start AUC per target after each epoch.

The numbers behind docs/models.md ("DACDR: choices beyond MODEL.md"):

    python benchmarks/dacdr_choices.py "DACDR" '{"match_features": false}' '{"train_on": "targets"}'
    python benchmarks/dacdr_choices.py "DACDR" '{"match_features": false}' '{"train_on": "source+targets"}'
    python benchmarks/dacdr_choices.py "DACDR" '{"match_features": true, "match_on": "values", "ablation": "drop"}' \
        '{"train_on": "source+targets"}'
    python benchmarks/dacdr_choices.py "DACDR w/o DA&IA" '{"match_features": true, "match_on": "values", \
        "ablation": "drop"}' '{"train_on": "source+targets"}'

(dacdr 0.1's model: `match_on="values"`, `ablation="drop"`. The 0.2 study is `benchmarks/attention_study.py`.)

Arguments: registry name, model params (JSON), TrainConfig overrides (JSON). One model seed (0), world seed 0,
test-set AUC printed per epoch for reading only: model selection in real runs uses the validation split.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch

from dacdr.config import DataConfig, TrainConfig
from dacdr.data.prepare import prepare
from dacdr.data.synthetic import generate
from dacdr.evaluation import predict, test_report
from dacdr.models import create_model
from dacdr.training.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("params", nargs="?", default="{}")
    ap.add_argument("train", nargs="?", default="{}")
    ap.add_argument("--data", default="data/synthetic-demo-seed0")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        prepared = prepare(DataConfig(path=str(args.data), max_len=50))
    except FileNotFoundError:
        generate("demo", args.data, seed=0)
        prepared = prepare(DataConfig(path=str(args.data), max_len=50))
    torch.manual_seed(0)
    model = create_model(args.model, prepared.spec, **json.loads(args.params))
    cfg = TrainConfig(**({"epochs": 2, "patience": 10, "progress": False} | json.loads(args.train)))
    trainer = Trainer(prepared, model, args.model, cfg, tempfile.mkdtemp())
    trainer.log = lambda *a, **kw: None
    train_epoch = trainer._train_epoch

    def epoch_and_report(*a, **kw):
        record = train_epoch(*a, **kw)
        cold = test_report(prepared, predict(model, trainer.gatherer, prepared.split.test))["cold"]
        valid, _ = trainer.validation_score()
        print(json.dumps({"epoch": record["epoch"], "loss": round(record["loss"], 4), "valid_auc": round(valid, 4),
                          "cold_auc": {d: round(m["auc"], 4) for d, m in cold.items()}}), flush=True)
        return record

    trainer._train_epoch = epoch_and_report
    trainer.fit(resume=False)


if __name__ == "__main__":
    main()
