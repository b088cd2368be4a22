"""Inference engines: eager PyTorch and ONNX Runtime behind one call signature.

An engine takes the model inputs as numpy arrays (keys of `RecModel.inputs`) and returns predictions:
click probabilities, or ratings clamped to the label range. The ONNX engine serves DACDR as two graphs, a
user side cached per history and a small candidate side (`dacdr.serving.split`), and every other model (or
on request, `onnx_graph="single"`) as one graph.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Literal, Protocol

import numpy as np
import torch

from dacdr.package import ModelPackage

EngineName = Literal["torch", "onnx"]
OnnxGraph = Literal["auto", "split", "single"]
USER_CACHE = 2048
"""user-side results kept per worker by default (about 24 KB each with its key for dim 32, max_len 50: ~48 MB)"""
SPLIT_TOLERANCE = 1e-4
"""largest |split - eager| raw score accepted by the start-up check (float32 noise is ~1e-6)"""


class Engine(Protocol):
    name: str

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


def _session_options(threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return opts


def _session(graph: bytes, threads: int | None, source: str):
    import onnxruntime as ort

    from dacdr.package import PackageError

    try:
        return ort.InferenceSession(graph, _session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  (onnxruntime raises its own exception types)
        raise PackageError(f"{source}: not a loadable ONNX graph ({type(e).__name__}: {e})") from e


def _finish(raw: np.ndarray, task: str, label_range: tuple[float, float]) -> np.ndarray:
    """Raw scores -> click probabilities (ctr) or ratings clamped to the label range."""
    if task == "ctr":
        return (1.0 / (1.0 + np.exp(-raw.astype(np.float64)))).astype(np.float32)
    lo, hi = label_range
    return np.clip(raw, lo, hi).astype(np.float32)


class TorchEngine:
    """The packaged model in eager PyTorch, inference mode."""

    name = "torch"

    def __init__(self, pkg: ModelPackage):
        self.model = pkg.model.eval()
        self.broadcasts_history = pkg.model.broadcasts_history
        """a one-user request may pass its history once (batch 1) for all its items"""

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            raw = self.model(*(torch.from_numpy(inputs[k]) for k in self.model.inputs))
            return self.model.predict(raw).float().numpy()

    def info(self) -> dict[str, Any]:
        return {"graph": "eager"}


class OnnxEngine:
    """The packaged model exported to ONNX (the package's `model.onnx` when current, else exported now)."""

    name = "onnx"
    graph = "single"

    def __init__(self, pkg: ModelPackage, threads: int | None = None, note: str | None = None):
        from dacdr.export import exported_onnx_for, onnx_bytes
        from dacdr.package import PackageError

        graph = exported_onnx_for(pkg)
        source = "model.onnx" if graph is not None else "the ONNX export of model.safetensors"
        self.session = _session(graph or onnx_bytes(pkg.model), threads, source)
        self.note = note
        """why the split graph is not served (None: not asked for)"""
        self.input_names = [i.name for i in self.session.get_inputs()]
        if sorted(self.input_names) != sorted(pkg.model.inputs):
            raise PackageError(f"{source}: graph inputs {self.input_names} are not the model's {list(pkg.model.inputs)}")
        # Graphs exported with a separate "users" axis take one history for all items (older ones do not).
        shapes = {i.name: i.shape for i in self.session.get_inputs()}
        self.broadcasts_history = shapes.get("seq", [None])[0] == "users"
        self.task = pkg.spec.task
        self.label_range = pkg.spec.label_range

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        raw = self.session.run(["score"], {k: inputs[k] for k in self.input_names})[0]
        return _finish(raw, self.task, self.label_range)

    def info(self) -> dict[str, Any]:
        return {"graph": "single"} | ({"split": self.note} if self.note else {})


class SplitOnnxEngine:
    """DACDR as a user-side graph, run once per (domain, history) and cached (LRU, `user_cache` entries), and a
    candidate-side graph run per call (`dacdr.serving.split`). The cache key is the history's and the domain's
    token bytes themselves, so a new history (from the store or the request) is a new entry and is never served
    a stale result; a reload builds a new engine with an empty cache. Calls with several users' histories, or a
    history longer than the model's `max_len`, go to the single graph (built when first needed)."""

    name = "onnx"
    graph = "split"
    broadcasts_history = True
    one_user_per_call = True
    """`Scorer` scores a multi-user batch one user at a time (each user's history is then cached)"""

    def __init__(self, pkg: ModelPackage, threads: int | None = None, user_cache: int = USER_CACHE):
        from dacdr.export import exported_onnx_for
        from dacdr.serving.split import USER_INPUTS, split_onnx_bytes

        if user_cache < 0:
            raise ValueError(f"user cache: must be >= 0 entries, got {user_cache}")
        self.pkg, self.threads = pkg, threads
        user_graph, cand_graph, self.user_names = split_onnx_bytes(pkg.model)
        self.user_session = _session(user_graph, threads, "the user-side ONNX graph")
        self.cand_session = _session(cand_graph, threads, "the candidate-side ONNX graph")
        self.user_inputs = USER_INPUTS
        self.max_len = pkg.spec.max_len
        self.n_fields = len(pkg.spec.sequence_fields)
        self.task, self.label_range = pkg.spec.task, pkg.spec.label_range
        self.user_cache = user_cache
        self._user_side = functools.lru_cache(maxsize=user_cache)(self._compute_user_side)
        self._single: OnnxEngine | None = None
        self._single_lock = threading.Lock()
        if exported_onnx_for(pkg) is not None:
            # the package's own export is loaded (and so checked) now: it serves the calls the split does not
            self._single = OnnxEngine(pkg, threads)
        self.entry_bytes = 0
        """the memory of one cache entry (its arrays and key), as last computed"""

    def _compute_user_side(self, key: tuple[bytes, bytes, bytes]) -> dict[str, np.ndarray]:
        """The user side of one (domain, history): the history right-aligned in `max_len` slots (padding
        first, as `assemble` builds it), then the user-side graph."""
        domain_b, seq_b, mask_b = key
        seq = np.frombuffer(seq_b, dtype=np.int64).reshape(-1, self.n_fields)
        mask = np.frombuffer(mask_b, dtype=np.bool_)
        padded = np.zeros((1, self.max_len, self.n_fields), dtype=np.int64)
        padded_mask = np.zeros((1, self.max_len), dtype=np.bool_)
        if len(seq):
            padded[0, -len(seq):], padded_mask[0, -len(seq):] = seq, mask
        feed = {"seq": padded, "seq_mask": padded_mask, "domain": np.frombuffer(domain_b, dtype=np.int64)[None]}
        out = self.user_session.run(self.user_names, feed)
        for a in out:
            a.setflags(write=False)  # shared by every request of this user through the cache
        self.entry_bytes = sum(a.nbytes for a in out) + sum(map(len, key))
        return dict(zip(self.user_names, out, strict=True))

    def user_side(self, seq: np.ndarray, seq_mask: np.ndarray, domain: np.ndarray) -> dict[str, np.ndarray]:
        """seq [1, L, F], seq_mask [1, L], domain [1, m] with L <= max_len -> the cached user-side tensors."""
        key = (np.ascontiguousarray(domain, dtype=np.int64).tobytes(),
               np.ascontiguousarray(seq, dtype=np.int64).tobytes(),
               np.ascontiguousarray(seq_mask, dtype=np.bool_).tobytes())
        return self._user_side(key)

    def raw(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Raw scores (logits or ratings before clamping) [B]."""
        seq, mask, domain = inputs["seq"], inputs["seq_mask"], inputs["domain"]
        if seq.shape[0] != 1 or domain.shape[0] != 1 or seq.shape[1] > self.max_len:
            single = self.single()
            return single.session.run(["score"], {k: inputs[k] for k in single.input_names})[0]
        user = self.user_side(seq, mask, domain)
        return self.cand_session.run(["score"], {"item": np.asarray(inputs["item"], dtype=np.int64), **user})[0]

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return _finish(self.raw(inputs), self.task, self.label_range)

    def single(self) -> OnnxEngine:
        with self._single_lock:
            if self._single is None:
                self._single = OnnxEngine(self.pkg, self.threads)
            return self._single

    def check(self, cases: int = 4, items: int = 7, seed: int = 0) -> float:
        """The largest |split - eager model| raw score over random histories (empty, short, full) and items."""
        model, spec = self.pkg.model.eval(), self.pkg.spec
        rng = np.random.default_rng(seed)
        worst = 0.0
        for length in sorted({0, 1, max(1, self.max_len // 2), self.max_len})[:cases]:
            seq = np.stack([rng.integers(0, spec.vocab_sizes[f], (1, max(length, 1)))
                            for f in spec.sequence_fields], -1).astype(np.int64)
            mask = np.ones((1, max(length, 1)), dtype=np.bool_) if length else np.zeros((1, 1), dtype=np.bool_)
            item = np.stack([rng.integers(0, spec.vocab_sizes[f], items) for f in spec.item_fields], -1)
            if length:
                item[0] = seq[0, -1, : item.shape[1]]  # a candidate the history holds: the count features fire
            domain = np.stack([rng.integers(0, spec.vocab_sizes[f], 1) for f in spec.domain_fields], -1)
            inputs = {"seq": seq, "seq_mask": mask, "item": item.astype(np.int64), "domain": domain.astype(np.int64)}
            with torch.inference_mode():
                want = model(*(torch.from_numpy(inputs[k]) for k in model.inputs)).float().numpy()
            got = self.cand_session.run(["score"], {"item": inputs["item"], **self._compute_user_side(
                (inputs["domain"].tobytes(), seq.tobytes(), mask.tobytes()))})[0]
            worst = max(worst, float(np.abs(got - want).max()))
        return worst

    def info(self) -> dict[str, Any]:
        c = self._user_side.cache_info()
        return {"graph": "split", "user_cache": {"entries": c.currsize, "max": c.maxsize, "hits": c.hits,
                                                 "misses": c.misses, "entry_bytes": self.entry_bytes}}


def make_onnx_engine(pkg: ModelPackage, threads: int | None = None, graph: OnnxGraph = "auto",
                     user_cache: int = USER_CACHE, log=None) -> OnnxEngine | SplitOnnxEngine:
    """`auto`: the split graphs when the model is covered and they pass the start-up check against the eager
    model, else the single graph (the reason is in `info()`); `split`: the split or an error; `single`."""
    from dacdr.serving.split import split_support

    if graph not in ("auto", "split", "single"):
        raise ValueError(f"onnx graph: expected 'auto', 'split' or 'single', got {graph!r}")
    if graph == "single":
        return OnnxEngine(pkg, threads)
    reason = split_support(pkg.model)
    if reason is None:
        engine = SplitOnnxEngine(pkg, threads, user_cache)
        worst = engine.check()
        if worst <= SPLIT_TOLERANCE:
            return engine
        reason = f"the split graphs differ from the model by {worst:.3g} (> {SPLIT_TOLERANCE:g}) at start-up"
    if graph == "split":
        raise ValueError(f"--onnx-graph split: not available for this package: {reason}")
    if log is not None:
        log(f"serving the single ONNX graph: {reason}")
    return OnnxEngine(pkg, threads, note=reason)


def make_engine(pkg: ModelPackage, name: EngineName, threads: int | None = None, onnx_graph: OnnxGraph = "auto",
                user_cache: int = USER_CACHE) -> Engine:
    if name == "torch":
        return TorchEngine(pkg)
    if name == "onnx":
        return make_onnx_engine(pkg, threads, onnx_graph, user_cache)
    raise ValueError(f"unknown engine {name!r}: expected 'torch' or 'onnx'")
