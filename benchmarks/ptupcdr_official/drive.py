"""Run the official PTUPCDR code (github.com/easezyc/WSDM2022-PTUPCDR, not part of dacdr) on a split written by
`dacdr export-split --format ptupcdr`, so that both run on identical data (docs/datasets.md).

    PYTHONPATH=benchmarks/ptupcdr_official:/path/to/WSDM2022-PTUPCDR \\
        python benchmarks/ptupcdr_official/drive.py EXPORT_ROOT 0.8 0.2 900 10

EXPORT_ROOT holds `ready/_<train>_<test>/tgt_<T>_src_<S>/` (the official layout; `0.8 0.2` = beta 20 %).
This replaces the official entry.py (which also imports its Amazon preprocessing) by the same steps: seed
everything, build the config (table sizes from the export's ptupcdr.json; the MF base model, lr 0.01 and the epochs as in the
official README's defaults; emb_dim 10, meta_dim 50, wd 0 and batch sizes 256 / 256 / 128 / 64 / 128), then
`Run(config).main()`. The sibling `tensorflow` package provides the one TensorFlow function the official code
calls (keras `pad_sequences`), so TensorFlow need not be installed.
"""

from __future__ import annotations

import glob
import json
import random
import sys

import numpy as np
import torch


def main() -> None:
    root, r0, r1, seed, epochs = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    root = root.rstrip("/") + "/"
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    found = glob.glob(f"{root}ready/_{int(r0 * 10)}_{int(r1 * 10)}/tgt_*_src_*/ptupcdr.json")
    if len(found) != 1:
        sys.exit(f"expected one export under {root}ready/_{int(r0 * 10)}_{int(r1 * 10)}/, found {len(found)}")
    with open(found[0]) as f:
        meta = json.load(f)
    pair = {"src": meta["src"], "tgt": meta["tgt"], "uid": meta["uid"], "iid": meta["iid"], "batchsize_src": 256,
            "batchsize_tgt": 256, "batchsize_meta": 128, "batchsize_map": 64, "batchsize_test": 128}
    config = {"use_cuda": 0, "root": root, "base_model": "MF", "task": "1", "ratio": [r0, r1], "epoch": epochs,
              "lr": 0.01, "emb_dim": 10, "meta_dim": 50, "num_fields": 2, "wd": 0, "src_tgt_pairs": {"1": pair}}
    from run import Run  # the official code's

    Run(config).main()


if __name__ == "__main__":
    main()
