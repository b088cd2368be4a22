"""Inference engines: eager PyTorch and ONNX Runtime behind one call signature.

An engine takes the model inputs as numpy arrays (keys of `RecModel.inputs`) and returns predictions:
click probabilities, or ratings clamped to the label range.
"""

from __future__ import annotations

from typing import Literal, Protocol

import numpy as np
import torch

from dacdr.package import ModelPackage

EngineName = Literal["torch", "onnx"]


class Engine(Protocol):
    name: str

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


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


class OnnxEngine:
    """The packaged model exported to ONNX (the package's `model.onnx` when current, else exported now)."""

    name = "onnx"

    def __init__(self, pkg: ModelPackage, threads: int | None = None):
        import onnxruntime as ort

        from dacdr.export import exported_onnx_for, onnx_bytes
        from dacdr.package import PackageError

        graph = exported_onnx_for(pkg)
        source = "model.onnx" if graph is not None else "the ONNX export of model.safetensors"
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(graph or onnx_bytes(pkg.model), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001  (onnxruntime raises its own exception types)
            raise PackageError(f"{source}: not a loadable ONNX graph ({type(e).__name__}: {e})") from e
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
        if self.task == "ctr":
            return (1.0 / (1.0 + np.exp(-raw.astype(np.float64)))).astype(np.float32)
        lo, hi = self.label_range
        return np.clip(raw, lo, hi).astype(np.float32)


def make_engine(pkg: ModelPackage, name: EngineName, threads: int | None = None) -> Engine:
    if name == "torch":
        return TorchEngine(pkg)
    if name == "onnx":
        return OnnxEngine(pkg, threads)
    raise ValueError(f"unknown engine {name!r}: expected 'torch' or 'onnx'")
