"""One module per benchmark for ``paraflow-hpc bench NAME``; each has ``Config`` and ``main(cfg, comm)``.

Benchmarks write an HDF5 file and a markdown table; speed-ups are always measured
side by side in the same run (parallel vs its serial baseline).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..config import ConfigError, RunConfig, option

BENCHES = {
    "parareal": "paraflow_hpc.bench.parareal", "mgrit": "paraflow_hpc.bench.mgrit",
    "spacetime": "paraflow_hpc.bench.spacetime",
    "paraflows": "paraflow_hpc.bench.paraflows",
    "pan": "paraflow_hpc.bench.pan",
    "paso": "paraflow_hpc.bench.paso",
    "layer-parallel": "paraflow_hpc.bench.layer_parallel",
}


@dataclass
class BenchConfig(RunConfig):
    """Options every benchmark shares."""

    table: str = option("", "markdown table file (default: the HDF5 output with .md)")
    # Benchmarks are meant to be re-run: they replace their files by default and say so.
    overwrite: bool = option(True, "replace an existing --output (false: refuse it)")

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        # inherited from RunConfig, but a benchmark times whole runs and never checkpoints (a --checkpoint
        # path, which the job scripts pass to every step, is merely unused)
        for key in ("checkpoint_every", "restart"):
            if getattr(self, key):
                raise ConfigError(f"{key} = {getattr(self, key)!r}: benchmarks write no checkpoints and do not "
                                  f"restart; drop --{key.replace('_', '-')} (use paraflow-hpc run for that)")

    def write_table(self, comm, text: str) -> str:
        """Rank 0 writes the markdown table; every rank gets its path."""
        path = self.table or self.output_stem() + ".md"
        if comm.rank == 0:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as fh:
                fh.write(text)
        return path
