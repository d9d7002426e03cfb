"""One module per benchmark for ``paraflow-hpc bench NAME``; each has ``Config`` and ``main(cfg, comm)``.

Benchmarks write an HDF5 file and a markdown table; speed-ups are always measured
side by side in the same run (parallel vs its serial baseline).
"""
BENCHES = {
    "parareal": "paraflow_hpc.bench.parareal",
    "paso": "paraflow_hpc.bench.paso",
    "layer-parallel": "paraflow_hpc.bench.layer_parallel",
}
