"""The one trainer: mini-batch AdamW, phases, early stopping on validation, best checkpoint, resume.

A run directory holds everything about a run: `config.yaml`, `log.txt`, `history.json` (one line of
validation metrics per epoch), the best model (`model.safetensors` + `model.json`), `resume/` (optimizer
state and counters, to continue after an interruption) and `results.json` (test metrics).

The best epoch is the one with the best validation score (`valid_score` in `history.json`): RMSE for ratings;
for clicks the mean of the per-target AUCs when several targets are validated (a pooled AUC would also reward
learning the targets' base rates), else the AUC.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dacdr import metrics
from dacdr.config import TrainConfig
from dacdr.data.batches import Batch, BatchGatherer
from dacdr.data.protocol import TrainingData, TrainingSet
from dacdr.distributed.context import DistContext, all_gather_concat, all_reduce_sum, barrier, current, rank_slice
from dacdr.distributed.memory import table_memory_report
from dacdr.evaluation import reference_reports, score_metrics, test_report
from dacdr.models import RecModel
from dacdr.models.phase import Phase
from dacdr.training.checkpoint import load_checkpoint, save_checkpoint
from dacdr.training.rundir import RunDir

if TYPE_CHECKING:
    from dacdr.distributed.sharded import ShardedEmbeddings


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda' (an error when no GPU is visible) or 'auto' (CUDA when available)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but torch sees no CUDA device (torch "
                         f"{torch.__version__}, built with CUDA {torch.version.cuda}); use 'cpu' or 'auto'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    def __init__(
        self,
        data: TrainingData,
        model: RecModel,
        model_name: str,
        cfg: TrainConfig,
        run_dir: str | Path,
        console: Console | None = None,
    ):
        self.data, self.model, self.model_name, self.cfg = data, model, model_name, cfg
        self.run = RunDir(run_dir)
        self.run.path.mkdir(parents=True, exist_ok=True)
        self.run_dir = self.run.path
        self.console = console or Console(stderr=True)
        # Distributed (DDP) when launched by torchrun / `dacdr train --nproc`: rank 0 alone writes files.
        self.dist: DistContext = current()
        if not self.dist.distributed:
            self.dist = dataclasses.replace(self.dist, device=resolve_device(cfg.device))
        # Validation and test samples (in memory whatever the kind of data; a small share when streamed).
        self.prepared = data.eval_view()
        self.gatherer: BatchGatherer = data.eval_gatherer()
        self.sharded: ShardedEmbeddings | None = None
        """train.embeddings=torchrec: the tables live sharded in `self.sharded.dmp`, `self.model` is the dense part"""
        if cfg.embeddings == "torchrec":  # before `.to(device)`: the full tables never go to the device
            from dacdr.distributed.sharded import ShardedEmbeddings

            self.sharded = ShardedEmbeddings(model, self.dist.device, cfg.sharding, cfg.embedding_optimizer,
                                             cfg.embedding_lr or 10 * cfg.lr, cfg.weight_decay)
            self.dist = current()  # a one-rank process group when there was none (TorchRec needs one)
        self.model.to(self.dist.device)
        self.net: torch.nn.Module = model if self.sharded is None else self.sharded.dmp
        """what the training forward runs through: the DDP (or TorchRec DMP) wrapper, else the model"""
        self.task = data.spec.task
        self.higher_is_better = self.task == "ctr"
        self.loss_fn = torch.nn.BCEWithLogitsLoss() if self.task == "ctr" else torch.nn.MSELoss()

    # ----------------------------------------------------------------- helpers
    def log(self, msg: str, detail: str | None = None) -> None:
        """`msg` to the console (when progress is on) and the run's log; `detail`, if given, to the log instead."""
        if not self.dist.is_main:
            return
        self.run.log(detail or msg)
        if self.cfg.progress:
            self.console.print(msg)

    def phases(self) -> list[Phase]:
        custom = getattr(self.model, "phases", None)
        if callable(custom):
            return custom()
        return [Phase("main", self.cfg.train_on or self.model.train_on)]

    def validation_score(self) -> tuple[float, dict[str, float]]:
        idx = self.prepared.split.valid
        preds = self._predict(idx)
        s = self.prepared.samples
        m = score_metrics(self.task, s["label"][idx], preds, s["user"][idx])
        if self.task != "ctr":
            return m["rmse"], m
        # Pooled over several targets, AUC also rewards learning the targets' base rates; the mean of the
        # per-target AUCs measures the ranking within each target, which is what the test reports.
        labels, domains = s["label"][idx], s["domain"][idx]
        per_domain = [metrics.auc(labels[domains == d], preds[domains == d]) for d in np.unique(domains)]
        per_domain = [a for a in per_domain if not math.isnan(a)]
        m["auc_domain_mean"] = float(np.mean(per_domain)) if per_domain else float("nan")
        return (m["auc_domain_mean"] if len(per_domain) > 1 else m["auc"]), m

    def _score_name(self, vm: dict[str, float], score: float) -> str:
        if self.task != "ctr":
            return "rmse"
        return "auc (mean over targets)" if score == vm.get("auc_domain_mean") and score != vm["auc"] else "auc"

    def _init_output_bias(self) -> None:
        mean = self.data.label_mean("targets")
        value = math.log(max(mean, 1e-4) / max(1 - mean, 1e-4)) if self.task == "ctr" else mean
        with torch.no_grad():
            for layer in self.model.output_layers():
                layer.bias.fill_(value)

    def _init_from_data(self) -> None:
        """The model's own start from training statistics (`RecModel.init_from_data`), logged."""
        said = self.model.init_from_data(self.data)
        if said:
            self.log(said)

    def _set_phase(self, name: str | None) -> None:
        set_phase = getattr(self.model, "set_phase", None)
        if callable(set_phase):
            set_phase(name)

    def _to_device(self, batch: Batch) -> Batch:
        if self.dist.device.type == "cpu":
            return batch
        return {k: v.to(self.dist.device, non_blocking=True) for k, v in batch.items()}

    @torch.no_grad()
    def _predict(self, idx: np.ndarray) -> np.ndarray:
        """Predictions for `idx`, in order: each rank scores a contiguous part and all ranks receive the
        union, so metrics (AUC, gAUC) are computed on every prediction, identically on every rank."""
        part = idx[rank_slice(len(idx), self.dist)]
        was_training = self.model.training
        self.model.eval()
        if self.sharded is None:
            out = [self.model.predict(self.model.score(self._to_device(b))).float().cpu().numpy()
                   for b in self.gatherer.iterate(part, self.cfg.eval_batch_size)]
        else:
            out = self._predict_sharded(idx, part)
        self.model.train(was_training)
        return all_gather_concat(self.dist, np.concatenate(out) if out else np.zeros(0, dtype=np.float32))

    def _predict_sharded(self, idx: np.ndarray, part: np.ndarray) -> list[np.ndarray]:
        """Scores of this rank's `part` through the sharded model. Every rank runs the same number of batches
        (each lookup is a collective): a rank with fewer rows scores a stand-in batch and drops it."""
        assert self.sharded is not None
        bs = self.cfg.eval_batch_size
        longest = max(len(range(len(idx))[rank_slice(len(idx), dataclasses.replace(self.dist, rank=r))])
                      for r in range(self.dist.world))
        self.net.eval()
        out = []
        for i in range(math.ceil(longest / bs)):
            rows = part[i * bs : (i + 1) * bs]
            batch = self._to_device(self.gatherer.gather(rows if len(rows) else idx[:1]))
            scores = self.model.predict(self.net(*self.sharded.inputs(batch))).float().cpu().numpy()
            if len(rows):
                out.append(scores)
        self.net.train()
        return out

    def _forward(self, batch: Batch) -> torch.Tensor:
        if self.sharded is not None:
            return self.net(*self.sharded.inputs(batch))
        return self.net(*(batch[k] for k in self.model.inputs))

    def _load_weights(self, state: dict[str, torch.Tensor]) -> None:
        """A plain model's state dict into the model (TorchRec: each rank copies the rows of its shards)."""
        if self.sharded is None:
            self.model.load_state_dict(state)
        else:
            self.sharded.load_plain_state(state)

    def _checkpoint_model(self) -> RecModel | None:
        """What `save_model` writes: the model, or (TorchRec) a plain model of the gathered tables on rank 0.
        A collective in a TorchRec run: every rank calls it."""
        return self.model if self.sharded is None else self.sharded.plain_model(self.model_name)

    def _optimizer_view(self, opt: torch.optim.Optimizer) -> Any:
        """What `save_training_state` saves (TorchRec: with the fused optimizer's gathered state; a collective)."""
        if self.sharded is None:
            return opt
        from dacdr.distributed.sharded import ShardedOptimizerView

        return ShardedOptimizerView(opt, self.sharded.gather_optimizer_state())

    def _load_optimizer(self, opt: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
        if self.sharded is None:
            opt.load_state_dict(saved)
            return
        if "embeddings" not in saved:
            raise ValueError("resume/ was written by a run with train.embeddings=plain; resume it the same way")
        opt.load_state_dict(saved["dense"])
        self.sharded.load_optimizer_state(saved["embeddings"])

    def _wrap(self, phase: Phase) -> torch.nn.Module:
        """DDP around the model for one phase (built per phase: DDP fixes its parameter set at construction);
        a TorchRec run keeps its one DistributedModelParallel (single-phase models only)."""
        if self.sharded is not None:
            return self.sharded.dmp
        if not self.dist.distributed:
            return self.model
        if phase.loss is not None:
            raise ValueError(f"phase {phase.name!r} has a custom loss that bypasses the model's forward; "
                             "DDP cannot synchronise its gradients: train it in one process")
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=device_ids,
                                       find_unused_parameters=self.cfg.find_unused_parameters)

    def _better(self, a: float, b: float | None) -> bool:
        if b is None or math.isnan(b):
            return not math.isnan(a)
        return a > b if self.higher_is_better else a < b

    # ----------------------------------------------------------------- training
    def fit(self, resume: bool = True) -> list[dict[str, Any]]:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        if cfg.num_threads and cfg.num_threads != torch.get_num_threads():
            torch.set_num_threads(cfg.num_threads)
        if self.dist.device.type == "cpu":
            self.log(f"torch threads: {torch.get_num_threads()}"
                     f" ({'train.num_threads' if cfg.num_threads else 'the process setting'})")
        resume_dir = self.run.resume_dir
        saved = load_checkpoint(resume_dir, self.log) if resume else None
        state: dict[str, Any] = {"phase": 0, "epoch": 0, "best": None, "bad_epochs": 0, "history": [],
                                 "done": False}
        if saved is not None:
            resumed_model, blob, state = saved
            self._load_weights(resumed_model.state_dict())
            self.log(f"resuming {self.model_name} at phase {state['phase']} epoch {state['epoch']}")
        if state.get("done"):
            return state["history"]
        if self.sharded is None:
            report = table_memory_report(self.model)
            self.log(report.splitlines()[-1], detail=report)
        else:  # the per-table sharding plan, in full
            self.log(self.sharded.plan_report())
        phases = self.phases()
        for p_i in range(state["phase"], len(phases)):
            phase = phases[p_i]
            try:
                train_set = self.data.training_set(phase.train_on, phase.select)
            except ValueError as e:
                raise ValueError(f"phase {phase.name!r}: {e}") from e
            if len(train_set) == 0:
                raise ValueError(f"phase {phase.name!r}: no training samples for train_on={phase.train_on!r}")
            self._set_phase(phase.name)
            params = [p for n, p in self.model.named_parameters() if phase.trainable is None or phase.trainable(n)]
            for n, p in self.model.named_parameters():
                p.requires_grad_(phase.trainable is None or phase.trainable(n))
            opt = torch.optim.AdamW(params, lr=phase.lr or cfg.lr, weight_decay=cfg.weight_decay)
            self.net = self._wrap(phase)
            if saved is not None and state["phase"] == p_i:
                self._load_optimizer(opt, blob["optimizer"])
                torch.set_rng_state(blob["rng"])
            elif state["epoch"] == 0 and p_i == 0:
                self._init_output_bias()
                self._init_from_data()
            epochs = phase.epochs or cfg.epochs
            while state["epoch"] < epochs:
                # The shuffle order depends only on (seed, phase, epoch), so a resumed run replays exactly.
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + p_i * 1009 + state["epoch"])
                record = self._train_epoch(phase, train_set, opt, gen, state["epoch"])
                state["epoch"] += 1
                if phase.early_stopping:
                    score, vm = self.validation_score()
                    record |= {f"valid_{k}": v for k, v in vm.items()} | {"valid_score": score}
                    improved = self._better(score, state["best"])
                    ckpt = self._checkpoint_model()
                    if improved:
                        state["best"], state["bad_epochs"] = score, 0
                        if self.dist.is_main:
                            self.run.save_model(ckpt, self.model_name)
                    else:
                        state["bad_epochs"] += 1
                    self.log(f"[{phase.name}] epoch {state['epoch']}: loss {record['loss']:.4f}, "
                             f"valid {self._score_name(vm, score)} {score:.4f}"
                             f"{' (best)' if improved else ''}, {record['samples_per_s']:.0f} samples/s")
                state["history"].append(record)
                stop = phase.early_stopping and state["bad_epochs"] > cfg.patience
                # resume/ every `checkpoint_every` epochs and after the phase's last (the same on every rank)
                if stop or state["epoch"] >= epochs or state["epoch"] % cfg.checkpoint_every == 0:
                    if not phase.early_stopping:
                        ckpt = self._checkpoint_model()
                    opt_view = self._optimizer_view(opt)
                    if self.dist.is_main:  # checkpoints are written once, by rank 0, each as one unit
                        self.run.write_history(state["history"])
                        save_checkpoint(resume_dir, ckpt, self.model_name, opt_view, state)
                    barrier(self.dist)
                if stop:
                    self.log(f"[{phase.name}] early stop after {state['epoch']} epochs")
                    break
            if not phase.early_stopping:
                ckpt = self._checkpoint_model()
                if self.dist.is_main:
                    self.run.save_model(ckpt, self.model_name)
                barrier(self.dist)
            elif self.run.has_model():
                # Later phases start from the best weights of this one.
                self._load_weights(self.run.load_model()[0].state_dict())
            state |= {"phase": p_i + 1, "epoch": 0, "best": None, "bad_epochs": 0}
            saved = None
        self._set_phase(None)
        for p in self.model.parameters():
            p.requires_grad_(True)
        state["done"] = True
        self.net = self.model if self.sharded is None else self.sharded.dmp
        ckpt, opt_view = self._checkpoint_model(), self._optimizer_view(opt)  # collectives in a TorchRec run
        if self.dist.is_main:
            save_checkpoint(resume_dir, ckpt, self.model_name, opt_view, state)
        barrier(self.dist)
        return state["history"]

    def _train_epoch(
        self, phase: Phase, train_set: TrainingSet, opt: torch.optim.Optimizer, gen: torch.Generator, epoch: int
    ) -> dict[str, Any]:
        cfg, model = self.cfg, self.model
        model.train()
        # The shuffle depends only on the generator: in one process the order of the former
        # `BatchGatherer.iterate(idx, shuffle=True)`, so results did not move when this was refactored.
        n_batches, batches = train_set.epoch(phase.batch_size or cfg.batch_size, gen, self.dist, cfg.num_workers,
                                             history=phase.history)
        if cfg.max_steps_per_epoch:
            n_batches = min(n_batches, cfg.max_steps_per_epoch)
        total_loss, seen, t0 = 0.0, 0, time.perf_counter()
        progress = Progress(
            TextColumn(f"{self.model_name} [{phase.name}] epoch {epoch + 1}"),
            BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
            console=self.console, transient=True, disable=not (cfg.progress and self.dist.is_main),
        )
        with progress:
            task = progress.add_task("train", total=n_batches, rate="")
            for step, batch in enumerate(batches):
                if step >= n_batches:
                    break
                batch = self._to_device(batch)
                loss = phase.loss(model, batch) if phase.loss else self.loss_fn(self._forward(batch), batch["label"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bs = len(batch["label"])
                total_loss += float(loss.detach()) * bs
                seen += bs
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                progress.update(task, advance=1, rate=f"{rate:,.0f} samples/s")
        elapsed = time.perf_counter() - t0
        # Loss and throughput of the whole run, over all ranks.
        total_loss, seen, elapsed = all_reduce_sum(self.dist, [total_loss, seen, elapsed])
        seen, elapsed = int(seen), elapsed / self.dist.world
        return {"phase": phase.name, "epoch": epoch + 1, "loss": total_loss / max(seen, 1),
                "samples": seen, "seconds": elapsed, "samples_per_s": seen / max(elapsed, 1e-9)}

    # ----------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, Any]:
        """Test metrics of the best checkpoint, written to `results.json`."""
        barrier(self.dist)
        if self.run.has_model():
            self._load_weights(self.run.load_model()[0].state_dict())
        split = self.prepared.split
        preds = self._predict(split.test)
        results: dict[str, Any] = {"model": self.model_name, "seed": self.cfg.seed,
                                   "test": test_report(self.prepared, preds)}
        results |= reference_reports(self.prepared)
        if self.dist.is_main:
            self.run.write_results(results)
        return results
