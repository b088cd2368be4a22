"""How much memory a model's embedding tables take: the number that decides when a table must be
bounded (`data.min_count`, `data.hash_buckets`) or sharded across hosts (docs/scaling.md)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# AdamW keeps two moments per weight, and training holds one gradient: 4 copies in all.
TRAINING_COPIES = 4


@dataclass(frozen=True)
class TableSize:
    name: str
    rows: int
    dim: int
    bytes_per_value: int

    @property
    def weight_bytes(self) -> int:
        return self.rows * self.dim * self.bytes_per_value


def embedding_tables(model: nn.Module) -> list[TableSize]:
    """Every nn.Embedding / nn.EmbeddingBag of `model`, by module path."""
    return [
        TableSize(name, m.weight.shape[0], m.weight.shape[1], m.weight.element_size())
        for name, m in model.named_modules()
        if isinstance(m, nn.Embedding | nn.EmbeddingBag)
    ]


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def table_memory_report(model: nn.Module) -> str:
    """One line per table, then the total weights and the training footprint (weights, grads, AdamW)."""
    tables = embedding_tables(model)
    lines = [f"  {t.name}: {t.rows:,} x {t.dim} = {_mib(t.weight_bytes)}" for t in tables]
    total = sum(t.weight_bytes for t in tables)
    lines.append(
        f"embedding tables: {_mib(total)} of weights; ~{_mib(TRAINING_COPIES * total)} in training "
        f"(weights + gradients + AdamW moments)"
    )
    return "\n".join(lines)
