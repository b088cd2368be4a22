"""Shared by the package, export, fine-tuning and service tests: a tiny trained run and a live server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl

from dacdr.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from dacdr.data.dataset import load_dataset, write_dataset
from dacdr.recipes.train import train_run

TINY_PARAMS = {"dim": 8, "heads": 2, "user_dim": 16, "encoder_hidden": [16], "predictor_hidden": [16]}


def train_tiny_run(data_path: Path, run_dir: Path, seed: int = 0, epochs: int = 1,
                   params: dict | None = None) -> Path:
    """A DACDR run on `data_path` in a few seconds: small dims, one epoch (`params` on top of them)."""
    cfg = RunConfig(
        data=DataConfig(path=str(data_path), max_len=8),
        model=ModelConfig(name="DACDR", params=TINY_PARAMS | (params or {})),
        train=TrainConfig(epochs=epochs, batch_size=128, progress=False, seed=seed, num_threads=1),
    )
    train_run(cfg, run_dir=run_dir)
    return run_dir


def without_domain(src: Path, domain: str, out: Path) -> Path:
    """A copy of a dataset with one target domain (its row, its item listings, its rows) removed."""
    data = load_dataset(src)
    spec = data.spec.model_copy(update={"target_domains": [d for d in data.spec.target_domains if d != domain]})
    keep = pl.col("domain") != domain
    return write_dataset(
        type(data)(spec=spec, interactions=data.interactions.filter(keep), items=data.items.filter(keep),
                   domains=data.domains.filter(keep), path=None),
        out,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`dacdr serve` in a real uvicorn subprocess on a free loopback port."""

    def __init__(self, package: Path, *args: str, token: str | None = "test-token-0123456789", timeout: float = 60):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, DACDR_ADMIN_TOKEN=token or "")
        cmd = [sys.executable, "-c", "from dacdr.cli import main; main()", "serve", str(package),
               "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read().decode()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError("server not ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
