"""paraflow_hpc: MPI parallel-in-time optimisation and integration.

Methods: Parareal, ParaFlow / ParaFlowS, PASO, layer-parallel ResNet training, PAN.
Every algorithm takes the MPI communicator it runs on as its first argument.
"""
__version__ = "0.1.0"

import os as _os

# Debian's h5py loads its MPI build only under a launcher that sets the variable it
# looks for (mpirun does, srun and plain python do not); this package always wants it.
_os.environ.setdefault("H5PY_ALWAYS_USE_MPI", "1")
