"""One module per method for ``paraflow-hpc run METHOD``; each has ``Config`` and ``main(cfg, comm)``."""
RUNNERS = {
    "parareal": "paraflow_hpc.runners.parareal", "mgrit": "paraflow_hpc.runners.mgrit",
    "spacetime": "paraflow_hpc.runners.spacetime",
    "paraflow": "paraflow_hpc.runners.paraflow", "paraflows": "paraflow_hpc.runners.paraflows",
    "paso": "paraflow_hpc.runners.paso",
    "pan": "paraflow_hpc.runners.pan",
    "layer-parallel": "paraflow_hpc.runners.layer_parallel",
}
