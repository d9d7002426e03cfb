# Open MPI settings for one node (sourced by jobs/*.sh and the venv's activate).
# Root is allowed (containers, this CI); oversubscription lets tests run 4 ranks
# on 2 cores; self,vader avoids slow probing of network transports; on a real
# cluster the site's own MCA settings (or these, with tcp/ucx added) apply.
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMPI_MCA_rmaps_base_oversubscribe=${OMPI_MCA_rmaps_base_oversubscribe:-1}
export OMPI_MCA_btl=${OMPI_MCA_btl:-self,vader}
export OMPI_MCA_pml=${OMPI_MCA_pml:-ob1}
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
export H5PY_ALWAYS_USE_MPI=${H5PY_ALWAYS_USE_MPI:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Not set here: OMPI_MCA_odls_base_sigkill_timeout. On SIGTERM mpirun waits that many seconds
# (default 1) before it passes SIGTERM to the ranks and SIGKILLs them as long again later, so a
# larger value lets the ranks checkpoint on SIGTERM, but it also delays every failing exit by
# twice as long, and mpirun exits 1 anyway. Stop an mpirun run with SIGUSR1 (docs/checkpoint.md).
