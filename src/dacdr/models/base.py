"""What every model in the registry is: an nn.Module scoring (sequence, item, domain) inputs."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from dacdr.data.features import FeatureSpec


class RecModel(nn.Module):
    """Base class. Subclasses implement `forward` and set the class attributes below.

    `forward(seq, seq_mask, item, domain)` returns one raw score per sample: a logit for the click task,
    the predicted rating for the rating task. Keeping the signature to four tensors lets every model be
    exported to ONNX / TorchScript and served the same way.
    """

    train_on: ClassVar[str] = "targets"
    """default training samples: 'targets' or 'source+targets'"""

    broadcasts_history: ClassVar[bool] = False
    """True when `forward` also accepts one user's `seq`, `seq_mask` and `domain` (batch 1) against N items,
    giving the scores of the rows repeated N times with the history embedded and projected once (serving)."""

    inputs: ClassVar[tuple[str, ...]] = ("seq", "seq_mask", "item", "domain")
    """batch keys passed positionally to `forward`; a model that needs user ids (CMF, EMCDR) adds "user"
    (the user vocabulary index, `Batch["user"]`). Export and serving read this tuple."""

    def __init__(self, spec: FeatureSpec, **params: Any):
        super().__init__()
        self.spec = spec
        self.params = params

    @classmethod
    def legacy_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments of a saved description, upgraded so that a checkpoint written by an older
        dacdr rebuilds the model it was trained as (a new argument's default may differ from the old behaviour)."""
        return params

    def forward(
        self, seq: torch.Tensor, seq_mask: torch.Tensor, item: torch.Tensor, domain: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def score(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(*(batch[k] for k in self.inputs))

    def predict(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw scores -> click probabilities, or ratings clamped to the label range."""
        if self.spec.task == "ctr":
            return torch.sigmoid(raw)
        lo, hi = self.spec.label_range
        return raw.clamp(lo, hi)

    def init_from_data(self, data: Any) -> str | None:
        """Called once by the trainer before a run's first step with its `TrainingData`: a model that starts
        some weights from training statistics sets them here and says what it did (a log line), else None."""
        return None

    def output_layer(self) -> nn.Linear:
        """The final linear layer, whose bias the trainer sets to the base rate before training."""
        raise NotImplementedError

    def output_layers(self) -> list[nn.Linear]:
        """Every final linear layer (one per domain tower in multi-domain models); default: `output_layer()`."""
        return [self.output_layer()]
