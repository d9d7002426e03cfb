"""One module per method for ``paraflow-hpc run METHOD``; each has ``Config`` and ``main(cfg, comm)``."""
RUNNERS = {
    "parareal": "paraflow_hpc.runners.parareal",
    "layer-parallel": "paraflow_hpc.runners.layer_parallel",
}
