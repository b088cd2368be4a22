"""Sharded embedding tables on TorchRec (`train.embeddings: torchrec`, docs/scaling.md section 4).

A model's `FieldEmbeddings` (one `nn.Embedding` per field) become one TorchRec `EmbeddingCollection`, one
table per field, shared by the roles a field plays (sequence behaviours, candidate item, domain tokens) through
`feature_names`. Batches become `KeyedJaggedTensor`s: one key per (role, field), the sequence keys carrying
only the unmasked positions. `DistributedModelParallel` shards the tables by a per-table plan and keeps the
dense part (attention, MLPs) data-parallel under DDP.

The dense model itself is untouched: its `embeddings` attribute is swapped for `LookedUp`, whose
`sequence` / `tokens` return the already looked-up tensors, so the model's forward runs as written on
`[B, L, k]` / `[B, n, k]` inputs instead of ids.

Checkpoints stay plain: at a save every table (and the fused optimizer's state) is gathered to rank 0 and
written as the ordinary model file, which therefore packages and serves like any other and loads on any
number of ranks (each rank copies the rows of its own shards). The price: rank 0's host memory must hold
each full table once at a save, and every rank the initial weights once at start.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dacdr.data.features import FeatureSpec
from dacdr.models.base import RecModel
from dacdr.models.layers import FieldEmbeddings

INSTALL = ('pip install -e ".[torchrec]" && pip install --no-deps torchrec==1.8.0 '
           "(docs/scaling.md, 'Installing TorchRec')")
ROLES = ("seq", "item", "domain")
DEFAULT_ITEM_SHARDING = "row_wise"
DEFAULT_SHARDING = "table_wise"
TABLE_PREFIX = "t_"  # a table named `items` would clash with ModuleDict.items


def require_torchrec() -> None:
    """Import TorchRec and FBGEMM, or fail with the install command (and the known trap)."""
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
    except (ImportError, OSError) as e:
        hint = ""
        if "fbgemm" in str(e):
            hint = (" If both fbgemm-gpu and fbgemm-gpu-cpu are installed, the GPU build shadows the CPU one: "
                    "`pip uninstall -y fbgemm-gpu fbgemm-gpu-cpu` and reinstall the extra.")
        raise RuntimeError(f"train.embeddings=torchrec needs TorchRec and FBGEMM ({e}). Install: {INSTALL}.{hint}") from e


def role_fields(spec: FeatureSpec) -> dict[str, list[str]]:
    return {"seq": list(spec.sequence_fields), "item": list(spec.item_fields), "domain": list(spec.domain_fields)}


def feature_name(role: str, field: str) -> str:
    return f"{role}_{field}"


def feature_keys(spec: FeatureSpec) -> list[str]:
    """The KeyedJaggedTensor's keys, in order: sequence fields, then item fields, then domain fields."""
    return [feature_name(r, f) for r, fields in role_fields(spec).items() for f in fields]


def to_kjt(batch: dict[str, torch.Tensor], spec: FeatureSpec) -> Any:
    """A padded batch (`seq` [B, L, F], `seq_mask`, `item` [B, n], `domain` [B, m]) as a KeyedJaggedTensor.

    Sequence keys hold each sample's unmasked positions only (oldest first), so padding is never shipped to
    the ranks that own the tables; item and domain keys hold one id per sample.
    """
    from torchrec import KeyedJaggedTensor

    mask = batch["seq_mask"]
    b = mask.shape[0]
    seq_len = mask.sum(1)
    ones = torch.ones(b, dtype=torch.long, device=mask.device)
    values, lengths = [], []
    for j, _ in enumerate(spec.sequence_fields):
        values.append(batch["seq"][..., j][mask])
        lengths.append(seq_len)
    for key, fields in (("item", spec.item_fields), ("domain", spec.domain_fields)):
        for j, _ in enumerate(fields):
            values.append(batch[key][:, j])
            lengths.append(ones)
    return KeyedJaggedTensor.from_lengths_sync(
        keys=feature_keys(spec), values=torch.cat(values), lengths=torch.cat(lengths).to(torch.int32)
    )


class LookedUp(nn.Module):
    """Stands in for `FieldEmbeddings` once the lookups run in TorchRec: inputs are already embeddings, and the
    ids of the item fields (for models that compare ids, e.g. DACDR's count features) are handed over per call."""

    ids: tuple[torch.Tensor, torch.Tensor] | None = None
    dom_ids: torch.Tensor | None = None

    def sequence(self, seq: torch.Tensor) -> torch.Tensor:
        return seq

    def tokens(self, tokens: torch.Tensor, fields: list[str]) -> torch.Tensor:
        return tokens

    def item_ids(self, seq: torch.Tensor, item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ids is None:
            raise RuntimeError("LookedUp.item_ids: the sharded model's forward did not hand over the ids")
        return self.ids

    def domain_ids(self, domain: torch.Tensor) -> torch.Tensor:
        if self.dom_ids is None:
            raise RuntimeError("LookedUp.domain_ids: the sharded model's forward did not hand over the ids")
        return self.dom_ids


class ShardableModel(nn.Module):
    """An `EmbeddingCollection` (the tables) in front of a dense model (everything else): what DMP wraps."""

    def __init__(self, dense: RecModel, dim: int, device: torch.device):
        super().__init__()
        from torchrec import EmbeddingCollection, EmbeddingConfig

        spec = dense.spec
        roles = role_fields(spec)
        self.spec, self.dim = spec, dim
        self.ec = EmbeddingCollection(
            tables=[
                EmbeddingConfig(
                    name=TABLE_PREFIX + f, embedding_dim=dim, num_embeddings=spec.vocab_sizes[f],
                    feature_names=[feature_name(r, f) for r in ROLES if f in roles[r]],
                )
                for f in spec.fields
            ],
            device=device,
        )
        self.dense = dense

    def forward(self, features: Any, seq_mask: torch.Tensor) -> torch.Tensor:
        out = self.ec(features)
        spec = self.spec
        s = sum(out[feature_name("seq", f)].values() for f in spec.sequence_fields)
        # Back to the dense [B, L, k] layout: zeros at masked positions, as the padding row gives in plain mode.
        where = torch.nonzero(seq_mask, as_tuple=True)
        seq = torch.zeros(*seq_mask.shape, self.dim, dtype=s.dtype, device=s.device).index_put(where, s)
        item = torch.stack([out[feature_name("item", f)].values() for f in spec.item_fields], dim=1)
        domain = torch.stack([out[feature_name("domain", f)].values() for f in spec.domain_fields], dim=1)
        # the item fields' ids too, for models that compare them (DACDR's count features): same layout as `seq`
        seq_ids = torch.zeros(*seq_mask.shape, len(spec.item_fields), dtype=torch.long, device=s.device)
        for j, f in enumerate(spec.item_fields):  # the item fields lead the sequence fields (samples.py)
            seq_ids[..., j] = seq_ids[..., j].index_put(where, features[feature_name("seq", f)].values())
        item_ids = torch.stack([features[feature_name("item", f)].values() for f in spec.item_fields], dim=1)
        self.dense.embeddings.ids = (seq_ids, item_ids)
        self.dense.embeddings.dom_ids = torch.stack(
            [features[feature_name("domain", f)].values() for f in spec.domain_fields], dim=1)
        try:
            return self.dense(seq, seq_mask, item, domain)
        finally:
            self.dense.embeddings.ids = self.dense.embeddings.dom_ids = None


def check_supported(model: RecModel) -> None:
    """The TorchRec path replaces `model.embeddings`; models that look up their tables otherwise are refused."""
    emb = getattr(model, "embeddings", None)
    if not isinstance(emb, FieldEmbeddings) or model.inputs != ("seq", "seq_mask", "item", "domain"):
        raise ValueError(f"train.embeddings=torchrec supports models whose tables are one FieldEmbeddings "
                         f"(DACDR and its variants); {type(model).__name__} is not one")
    if callable(getattr(model, "phases", None)):
        raise ValueError(f"train.embeddings=torchrec trains single-phase models; {type(model).__name__} has phases")
    dims = {t.embedding_dim for t in emb.tables.values()}
    if len(dims) != 1:
        raise ValueError(f"train.embeddings=torchrec needs one embedding dim for all tables, got {sorted(dims)}")


def _ensure_process_group(device: torch.device) -> bool:
    """TorchRec needs a process group even on one rank: start a one-process one when there is none."""
    if dist.is_initialized():
        return False
    from dacdr.distributed.launch import free_port

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    return True


@dataclass(frozen=True)
class TablePlan:
    field: str
    rows: int
    dim: int
    sharding: str
    ranks: list[int]
    shards: list[tuple[int, list[int], list[int]]]
    """(rank, offsets, sizes) of each shard"""

    def bytes_on(self, rank: int, bytes_per_value: int = 4) -> int:
        return sum(sz[0] * sz[1] for r, _, sz in self.shards if r == rank) * bytes_per_value


class ShardedEmbeddings:
    """Builds and runs the TorchRec side of a model: plan, DMP wrapper, inputs, gathered checkpoints."""

    def __init__(self, model: RecModel, device: torch.device, sharding: dict[str, str] | None = None,
                 optimizer: str = "adagrad", lr: float = 0.02, weight_decay: float = 0.0):
        require_torchrec()
        check_supported(model)
        from torchrec.distributed.embedding import EmbeddingCollectionSharder
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology

        spec = model.spec
        unknown = sorted(set(sharding or {}) - set(spec.fields))
        if unknown:
            raise ValueError(f"train.sharding: unknown field(s) {unknown}; the tables are {spec.fields}")
        self.owns_group = _ensure_process_group(device)
        self.device = device
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        plain: FieldEmbeddings = model.embeddings  # type: ignore[assignment]
        initial = {f: t.weight.detach() for f, t in plain.tables.items()}
        dim = next(iter(initial.values())).shape[1]
        model.embeddings = LookedUp()  # the plain tables go; `initial` is dropped after the copy below
        model.to(device)  # the dense part (DDP needs it on its device); tables are copied shard by shard
        self.model, self.spec, self.dim = model, spec, dim

        item_field = spec.item_fields[0]
        self.sharding = {f: (sharding or {}).get(f, DEFAULT_ITEM_SHARDING if f == item_field else DEFAULT_SHARDING)
                         for f in spec.fields}
        constraints = {TABLE_PREFIX + f: ParameterConstraints(sharding_types=[st]) for f, st in self.sharding.items()}
        sharder = EmbeddingCollectionSharder(fused_params=_fused_params(optimizer, lr, weight_decay, device))
        module = ShardableModel(model, dim, torch.device("meta"))
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=self.world, compute_device=device.type, local_world_size=None),
            constraints=constraints,
        )
        with contextlib.redirect_stdout(None):
            plan = planner.collective_plan(module, [sharder], dist.GroupMember.WORLD)
        self.dmp = DistributedModelParallel(module, device=device, plan=plan, sharders=[sharder])
        self.tables = self._table_plans(plan)
        self.load_tables(initial)

    # ------------------------------------------------------------------ plan
    def _table_plans(self, plan: Any) -> list[TablePlan]:
        params = plan.get_plan_for_module("ec") or {}
        out = []
        for f in self.spec.fields:
            ps = params[TABLE_PREFIX + f]
            shards = [(s.placement.rank(), list(s.shard_offsets), list(s.shard_sizes))
                      for s in ps.sharding_spec.shards]
            out.append(TablePlan(f, self.spec.vocab_sizes[f], self.dim, ps.sharding_type, list(ps.ranks or []),
                                 shards))
        return out

    def plan_report(self) -> str:
        """One line per table (sharding type, ranks, bytes per rank), then the embedding bytes of each rank."""
        lines = [f"TorchRec sharding plan ({self.world} rank{'s' if self.world > 1 else ''}, "
                 f"{self.device.type}):"]
        for t in self.tables:
            per_rank = ", ".join(f"rank {r}: {_size(t.bytes_on(r))}" for r in sorted({s[0] for s in t.shards}))
            lines.append(f"  {t.field}: {t.rows:,} x {t.dim}, {t.sharding} -> {per_rank}")
        totals = ", ".join(f"rank {r}: {_size(self.embedding_bytes(r))}" for r in range(self.world))
        lines.append(f"embedding weights per rank: {totals}")
        return "\n".join(lines)

    def embedding_bytes(self, rank: int) -> int:
        return sum(t.bytes_on(rank) for t in self.tables)

    # ------------------------------------------------------------------ running
    def inputs(self, batch: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """What the DMP module's forward takes: the KeyedJaggedTensor and the sequence mask."""
        return to_kjt(batch, self.spec).to(self.device), batch["seq_mask"].to(self.device)

    # ------------------------------------------------------------------ state
    def _sharded_weights(self) -> dict[str, Any]:
        state = self.dmp.state_dict()
        return {f: state[_weight_key(state, f)] for f in self.spec.fields}

    def load_tables(self, tables: dict[str, torch.Tensor]) -> None:
        """Copy full tables (field -> [rows, dim]) into this rank's shards; not a collective."""
        for f, st in self._sharded_weights().items():
            _copy_into_shards(st, tables[f])

    def load_plain_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a plain model's state dict (as saved by `save_model`): dense part and every table's shards."""
        prefix = "embeddings.tables."
        tables = {k[len(prefix):-len(".weight")]: v for k, v in state.items() if k.startswith(prefix)}
        missing = sorted(set(self.spec.fields) - set(tables))
        if missing:
            raise ValueError(f"checkpoint has no embedding table for field(s) {missing}")
        self.model.load_state_dict({k: v for k, v in state.items() if not k.startswith(prefix)}, strict=True)
        self.load_tables(tables)

    def gather_plain_state(self) -> dict[str, torch.Tensor] | None:
        """The plain model's state dict with every table gathered; on rank 0 (None elsewhere). A collective."""
        tables = _gather_all(self._sharded_weights(), self.rank)
        if tables is None:
            return None
        state = dict(self.model.state_dict())
        state |= {f"embeddings.tables.{f}.weight": t for f, t in tables.items()}
        return state

    def plain_model(self, name: str) -> RecModel | None:
        """The registered model `name` with plain tables and the gathered weights, on rank 0. A collective."""
        from dacdr.models import create_model, get_entry

        state = self.gather_plain_state()
        if state is None:
            return None
        fixed = get_entry(name).fixed  # e.g. a variant's `variant=`: create_model sets it again
        params = {k: v for k, v in self.model.params.items() if k not in fixed}
        with torch.device("meta"):  # no memory for tables that the state below replaces
            plain = create_model(name, self.spec, **params)
        plain.load_state_dict(state, strict=True, assign=True)
        return plain

    def gather_optimizer_state(self) -> dict[str, torch.Tensor] | None:
        """The fused (embedding) optimizer's state, each tensor gathered whole, on rank 0. A collective.

        Keyed "<parameter>/<state>", e.g. "ec.embeddings.t_item.weight/t_item.momentum1"."""
        return _gather_all(self._optimizer_tensors(), self.rank)

    def _optimizer_tensors(self) -> dict[str, Any]:
        state = self.dmp.fused_optimizer.state_dict()["state"]
        return {f"{key}/{name}": value for key, tensors in state.items() for name, value in tensors.items()
                if _is_sharded(value)}

    def load_optimizer_state(self, saved: dict[str, torch.Tensor]) -> None:
        """Each rank copies the rows of its own shards from the gathered state."""
        for key, st in self._optimizer_tensors().items():
            if key not in saved:
                raise ValueError(f"resume state has no embedding optimizer state {key!r} (another "
                                 "train.embedding_optimizer?)")
            _copy_into_shards(st, saved[key])

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


class ShardedOptimizerView:
    """What `save_training_state` writes for a TorchRec run: the dense AdamW and the gathered fused state."""

    def __init__(self, dense: torch.optim.Optimizer, embeddings: dict[str, Any] | None):
        self.dense, self.embeddings = dense, embeddings

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(), "embeddings": self.embeddings}


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.2f} GiB"


def _fused_params(optimizer: str, lr: float, weight_decay: float, device: torch.device) -> dict[str, Any]:
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    kinds = {"adagrad": EmbOptimType.EXACT_ADAGRAD, "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
             "sgd": EmbOptimType.EXACT_SGD, "adam": EmbOptimType.ADAM}
    if optimizer == "adam" and device.type != "cuda":
        raise ValueError("train.embedding_optimizer=adam: FBGEMM's CPU kernels fuse only adagrad, rowwise_adagrad "
                         "and sgd; use one of those, or train on CUDA")
    params: dict[str, Any] = {"optimizer": kinds[optimizer], "learning_rate": lr}
    if optimizer != "sgd":
        params["eps"] = 1e-8
    if weight_decay:
        params["weight_decay"] = weight_decay
    return params


def _weight_key(state: dict[str, Any], field: str) -> str:
    suffix = f"ec.embeddings.{TABLE_PREFIX}{field}.weight"
    keys = [k for k in state if k.endswith(suffix)]
    if len(keys) != 1:
        raise KeyError(f"no single sharded weight for table {field!r} in {sorted(state)}")
    return keys[0]


def _is_sharded(value: Any) -> bool:
    return hasattr(value, "local_shards") and hasattr(value, "metadata")


def _copy_into_shards(st: Any, full: torch.Tensor) -> None:
    """Copy the slice of `full` that each local shard of the ShardedTensor `st` covers into that shard."""
    if tuple(full.shape) != tuple(st.size()):
        raise ValueError(f"a saved tensor of shape {tuple(full.shape)} cannot fill a table of {tuple(st.size())}")
    with torch.no_grad():
        for shard in st.local_shards():
            index = tuple(slice(o, o + n) for o, n in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes,
                                                           strict=True))
            shard.tensor.copy_(full[index].to(shard.tensor.device, shard.tensor.dtype))


def _gather_all(tensors: dict[str, Any], rank: int) -> dict[str, torch.Tensor] | None:
    """Whole tensors on rank 0 (None elsewhere) from ShardedTensors that each rank may hold only some of (a
    rank's fused optimizer has state only for its own tables). Every rank must call it.

    The ranks first exchange a manifest of their local shards; then each shard travels once, owner -> rank 0,
    by point-to-point send / recv in the manifest's order: no rank holds more than its shards plus, on rank 0,
    the result.
    """
    mine = {
        key: {"size": tuple(st.size()), "dtype": str(st.metadata().tensor_properties.dtype).removeprefix("torch."),
              "shards": [(tuple(sh.metadata.shard_offsets), tuple(sh.metadata.shard_sizes)) for sh in st.local_shards()]}
        for key, st in tensors.items()
    }
    manifests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(manifests, mine)
    out: dict[str, torch.Tensor] = {}
    for key in sorted({k for m in manifests for k in m}):
        info = next(m[key] for m in manifests if key in m)
        dtype = getattr(torch, info["dtype"])
        if rank == 0:
            out[key] = torch.zeros(info["size"], dtype=dtype)
        local = {tuple(sh.metadata.shard_offsets): sh.tensor for sh in tensors[key].local_shards()} \
            if key in tensors else {}
        for owner, manifest in enumerate(manifests):
            for offsets, sizes in (manifest.get(key) or {"shards": []})["shards"]:
                if owner == rank == 0:
                    part = local[offsets].detach().cpu()
                elif rank == owner:
                    dist.send(local[offsets].detach().contiguous(), dst=0)
                    continue
                elif rank == 0:
                    part = torch.empty(sizes, dtype=dtype, device=_comm_device())
                    dist.recv(part, src=owner)
                else:
                    continue
                index = tuple(slice(o, o + n) for o, n in zip(offsets, part.shape, strict=True))
                out[key][index] = part.cpu()
    return out if rank == 0 else None


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
