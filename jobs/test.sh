#!/usr/bin/env bash
# The whole test suite: set up the stack if needed, then pytest (MPI tests start
# their own mpirun with 1-4 ranks, each under a timeout). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash jobs/setup.sh
source jobs/mpi-env.sh
exec .venv/bin/python -m pytest "$@"
