"""TMCDR (Zhu et al., "Transfer-Meta Framework for Cross-domain Recommendation to Cold-Start Users",
SIGIR 2021).

1. **Transfer stage** (`source`, `target`): a source model and a target model are pre-trained on their own
   domains (here the biased logistic MF of EMCDR's stages 1–2); their embeddings are then frozen.
2. **Meta stage** (`meta`): a meta network `f_θ` (an MLP, one per target domain) maps a user's source
   embedding into the target space. Unlike EMCDR it is not fitted to the target *embeddings* but trained
   with the task-oriented loss (the prediction loss of `f_θ(u_s)` against the pre-trained target items on
   the user's target rows), by MAML: each task is a group of overlapping users split into a support and a
   query part; an inner gradient step on the support loss gives fast weights
   `θ' = θ − α ∇_θ L_support(θ)`, and the query loss under `θ'`, over the tasks, updates the initial
   weights `θ` (second order by default; `first_order=True` drops the Hessian term). The paper sums the
   tasks' query losses; the mean is used here so the outer step size does not grow with `tasks_per_batch`.

Inference: the mapped source embedding `f_θ(u_s)` for every user, as EMCDR (a cold-start user has no
target rows to adapt on, so the learnt initial weights are the deployed ones, as in the paper).

Adaptations to click logs, and why:

- logistic MF with item and per-domain biases in the transfer stage (clicks, not ratings; popularity and
  base rates dominate click data), and the task loss is the run's (BCE on clicks, MSE on ratings);
- a task is a *mini-batch* of target rows of overlapping users: its users are shuffled into
  `tasks_per_batch` groups, each halved into support and query users, so support and query never share a
  user (the paper's tasks are user groups; re-forming them from each shuffled batch needs no task sampler
  and lets the one trainer run the stage as an ordinary phase with a custom loss);
- one meta network per target domain (three targets instead of one pair); a task's rows may span several
  targets, and the inner step adapts each target's network on that target's support rows.

The inner learning rate α (default 1.0) is a constructor parameter: the gradient of a batch-mean BCE on the
meta MLP is small, and with α = 0.1 the meta stage on the `tiny` world matched α = 0 to three decimals.

Inputs: user id and item id only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from dacdr.data.features import FeatureSpec
from dacdr.models.base import RecModel
from dacdr.models.emcdr import BridgeModel, name_starts, overlapping_rows, tanh_mlp
from dacdr.models.multidomain import pick
from dacdr.models.phase import Phase
from dacdr.models.registry import register

META = "meta_bridges."


@register("TMCDR", family="id-bridge", order=70)
class TMCDR(BridgeModel):
    def __init__(self, spec: FeatureSpec, n_users: int | None = None, dim: int = 32,
                 bridge_hidden: tuple[int, ...] = (64,), inner_lr: float = 1.0, tasks_per_batch: int = 4,
                 first_order: bool = False):
        if inner_lr < 0 or tasks_per_batch < 1:
            raise ValueError(f"TMCDR needs inner_lr >= 0 and tasks_per_batch >= 1; got inner_lr={inner_lr}, "
                             f"tasks_per_batch={tasks_per_batch}")
        super().__init__(spec, n_users, dim, bridge_hidden=list(bridge_hidden), inner_lr=inner_lr,
                         tasks_per_batch=tasks_per_batch, first_order=first_order)
        self.inner_lr, self.tasks_per_batch, self.first_order = inner_lr, tasks_per_batch, first_order
        self.meta_bridges = nn.ModuleList(tanh_mlp(dim, list(bridge_hidden)) for _ in range(self.n_targets))

    def map_user(self, user, slot, seq, seq_mask):
        mapped = torch.stack([b(self.source_user(user)) for b in self.meta_bridges], dim=1)
        return pick(mapped, slot)

    # ------------------------------------------------------------------------------- meta-learning
    def meta_parameters(self) -> dict[str, torch.Tensor]:
        """θ: the meta networks' weights, by parameter name (the keys `functional_call` overrides)."""
        return {n: p for n, p in self.named_parameters() if n.startswith(META)}

    def rows_loss(self, batch: dict[str, torch.Tensor], rows: torch.Tensor,
                  weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Task loss of the deployed forward on `rows` of `batch`, under `weights` (θ when None)."""
        args = tuple(batch[k][rows] for k in self.inputs)
        raw = self(*args) if weights is None else functional_call(self, weights, args)
        label = batch["label"][rows]
        return F.binary_cross_entropy_with_logits(raw, label) if self.spec.task == "ctr" else F.mse_loss(raw, label)

    def adapt(self, batch: dict[str, torch.Tensor], support: torch.Tensor) -> dict[str, torch.Tensor]:
        """The inner step: fast weights θ' = θ − α ∇_θ L_support(θ). θ itself is not modified; the graph is
        kept (second-order MAML) so the query loss differentiates through the step."""
        theta = self.meta_parameters()
        if support.numel() == 0 or self.inner_lr == 0:
            return theta
        grads = torch.autograd.grad(self.rows_loss(batch, support), list(theta.values()),
                                    create_graph=not self.first_order, allow_unused=True)
        return {n: p if g is None else p - self.inner_lr * g for (n, p), g in zip(theta.items(), grads, strict=True)}

    def split_tasks(self, user: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(support rows, query rows) per task: the batch's users shuffled into groups, each group's first
        half support and second half query. A one-user group is all query (its support is empty)."""
        users = user.unique()
        users = users[torch.randperm(len(users))]
        tasks = []
        for group in users.tensor_split(min(self.tasks_per_batch, len(users))):
            half = len(group) // 2
            support = torch.isin(user, group[:half]).nonzero().squeeze(1)
            query = torch.isin(user, group[half:]).nonzero().squeeze(1)
            tasks.append((support, query))
        return tasks

    def meta_loss(self, model: RecModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The outer objective: the mean over the batch's tasks of the query loss under adapted weights."""
        losses = [self.rows_loss(batch, query, self.adapt(batch, support))
                  for support, query in self.split_tasks(batch["user"])]
        return torch.stack(losses).mean()

    def phases(self) -> list[Phase]:

        return [*self.pretraining_phases(),
                Phase("meta", "targets", select=overlapping_rows, loss=self.meta_loss,
                      trainable=name_starts(META))]
