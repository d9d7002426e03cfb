#!/usr/bin/env bash
# The main job: set up the stack if needed, then a real 2-rank Parareal run of the
# embedded default problem (Lorenz, N = 180, G = 1 RK4 step, F = 80 RK4 steps),
# which writes results/parareal-lorenz.h5 (replacing the one of an earlier run: --overwrite)
# and prints a summary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash jobs/setup.sh
source jobs/mpi-env.sh
[ ! -f results/parareal-lorenz.h5 ] || echo "main.sh: replacing results/parareal-lorenz.h5 of an earlier run (--overwrite)"
mpirun -n "${NRANKS:-2}" .venv/bin/paraflow-hpc run parareal --problem lorenz --output results/parareal-lorenz.h5 \
       --overwrite "$@"
.venv/bin/python - <<'PY'
import h5py
with h5py.File("results/parareal-lorenz.h5", "r") as f:
    print(f"\nsummary of {f.filename}: method={f.attrs['method']} ranks={f.attrs['mpi_size']} "
          f"iterations={f.attrs['iterations']} converged={f.attrs['converged']}")
    print(f"  error vs serial fine per iteration: {', '.join(f'{e:.1e}' for e in f['history/error'][()])}")
    print(f"  per-rank seconds (fine / coarse / wait): " + ", ".join(
        f"{a:.2f}/{b:.2f}/{c:.2f}" for a, b, c in zip(f["timings/fine"], f["timings/coarse"], f["timings/wait"])))
PY
