"""Recipes: the library put to work, one file per job, each read top to bottom.

- `train`: a config -> a trained, evaluated run directory (`dacdr train`, also under torchrun / `--nproc`);
- `experiment`: a real dataset config -> converted data -> splits per (beta, seed) -> models -> report;
- `bench`: the paper's Table 2 on the synthetic industrial world;
- `demo`: the synthetic demo world, DACDR and its ablations against the oracle;
- `finetune`: a trained run -> the same model extended to a new target domain.

The library (`dacdr.data`, `dacdr.models`, `dacdr.training`, `dacdr.reporting`, ...) never imports a recipe;
only recipes and the CLI do.
"""
