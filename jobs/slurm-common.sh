# shellcheck shell=bash
# Sourced by every jobs/*.sbatch script (after its #SBATCH lines):
#   - loads $PARAFLOW_MODULES (if set) and activates $PARAFLOW_VENV (default
#     $PARAFLOW_ROOT/.venv; PARAFLOW_ROOT defaults to the submit directory, because Slurm runs
#     a copy of the script from its spool directory),
#   - makes the run directory $RUN_DIR = $PARAFLOW_RUNS/<jobid> (array task: <jobid>_<taskid>;
#     PARAFLOW_RUNS defaults to runs/ in the submit directory),
#     which holds job.log, the result files and the checkpoints; a requeued job keeps its id,
#     so it finds its checkpoints there,
#   - defines paraflow_step, which runs one `srun paraflow-hpc ...` step and turns a preemption
#     (exit 3 after a checkpoint) into a requeue.
# Why each piece: docs/slurm.md.

paraflow_die() { echo "[paraflow] error: $*" >&2; exit 2; }

[ -n "${SLURM_JOB_ID:-}" ] || paraflow_die "not inside a Slurm job: submit this script with sbatch"
PARAFLOW_ROOT=${PARAFLOW_ROOT:-$SLURM_SUBMIT_DIR}
if [ -n "${PARAFLOW_MODULES:-}" ]; then  # e.g. "gcc openmpi hdf5/parallel": the site's MPI stack
  command -v module >/dev/null || paraflow_die "PARAFLOW_MODULES is set but there is no module command"
  # shellcheck disable=SC2086
  module load $PARAFLOW_MODULES || paraflow_die "module load $PARAFLOW_MODULES failed"
fi
PARAFLOW_VENV=${PARAFLOW_VENV:-$PARAFLOW_ROOT/.venv}
[ -f "$PARAFLOW_VENV/bin/activate" ] \
  || paraflow_die "no virtual environment at $PARAFLOW_VENV: run jobs/setup.sh there, or set PARAFLOW_VENV"
# shellcheck disable=SC1091
source "$PARAFLOW_VENV/bin/activate"
# shellcheck disable=SC1091
source "$PARAFLOW_ROOT/jobs/mpi-env.sh"
if [ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ]; then
  # mpi-env.sh restricts Open MPI to shared memory (one node); across nodes let it pick the
  # site's network transports (UCX, OFI, TCP) from its own configuration.
  unset OMPI_MCA_btl OMPI_MCA_pml OMPI_MCA_btl_vader_single_copy_mechanism
fi
# Since Slurm 22.05 srun no longer inherits --cpus-per-task from the batch allocation.
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK; fi

# Torch methods get --device "$PARAFLOW_DEVICE": cuda only when the job was given GPUs
# (--gpus-per-task=1); a job without GPUs must not use a node's GPUs that are merely visible.
if [ "${SLURM_GPUS_ON_NODE:-0}" -gt 0 ]; then PARAFLOW_DEVICE=cuda; else PARAFLOW_DEVICE=cpu; fi

PARAFLOW_RUNS=${PARAFLOW_RUNS:-$SLURM_SUBMIT_DIR/runs}
if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
  RUN_DIR=$PARAFLOW_RUNS/${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID
else
  RUN_DIR=$PARAFLOW_RUNS/$SLURM_JOB_ID
fi
# A first start (not a requeue) must not resume someone else's checkpoint: job ids repeat
# when a cluster's Slurm state is reset.
if [ "${SLURM_RESTART_COUNT:-0}" -eq 0 ] && [ -n "$(ls -A "$RUN_DIR" 2>/dev/null)" ]; then
  paraflow_die "$RUN_DIR already holds files of an earlier job with the same id; move it away"
fi
mkdir -p "$RUN_DIR" || paraflow_die "cannot create the run directory $RUN_DIR"
export PARAFLOW_ROOT PARAFLOW_DEVICE RUN_DIR

# Everything from here on also goes to $RUN_DIR/job.log (appended across requeues). tee
# ignores USR1/TERM (`scancel --full` signals every process of the batch step; a dead tee
# would kill the shell with SIGPIPE) and ends when the shell closes its output; the EXIT
# trap waits for it so the last lines are written before Slurm ends the job's processes.
exec > >(trap '' USR1 TERM; exec tee -a "$RUN_DIR/job.log") 2>&1
paraflow_tee=$!
trap 'exec >&- 2>&-; wait "$paraflow_tee"' EXIT
echo "[paraflow] job $SLURM_JOB_ID (${SLURM_JOB_NAME:-}) restart ${SLURM_RESTART_COUNT:-0} on" \
     "${SLURM_JOB_NODELIST:-?}: run directory $RUN_DIR"

# A stop request is remembered (paraflow_signal): a signal that arrives between steps, or
# during a step that then finishes anyway, stops the job before its next step.
paraflow_signal=""
paraflow_caught=0
paraflow_step_pid=""
paraflow_forward() {  # the batch shell's trap: ask the running step to stop
  [ "$paraflow_signal" = TERM ] || paraflow_signal=$1
  paraflow_caught=1
  # Always as USR1: srun passes USR1 on to every rank, but answers SIGTERM by killing the
  # step at once ("forcing job termination"), which would leave the ranks no time to checkpoint.
  [ -z "$paraflow_step_pid" ] || kill -s USR1 "$paraflow_step_pid" 2>/dev/null || true
}
trap 'paraflow_forward USR1' USR1
trap 'paraflow_forward TERM' TERM

# After a stop with a checkpoint: requeue on USR1 (the --signal=B:USR1@N warning, or a
# preemption script). SIGTERM means scancel, the time limit or Slurm's own preemption: a
# requeue would undo a cancel (scontrol requeue also takes finished jobs), so the job just
# ends with code 3; `scontrol requeue JOBID` resumes it from the checkpoint.
paraflow_stopped() {
  trap - USR1 TERM
  if [ "$paraflow_signal" = TERM ]; then
    echo "[paraflow] stopped on SIGTERM ($1): not requeueing; 'scontrol requeue $SLURM_JOB_ID'" \
         "resumes it from the checkpoints in $RUN_DIR" >&2
    exit 3
  fi
  echo "[paraflow] preempted ($1): requeueing job $SLURM_JOB_ID; it resumes from the checkpoints in $RUN_DIR"
  if ! scontrol requeue "$SLURM_JOB_ID"; then
    echo "[paraflow] scontrol requeue failed (job submitted with --no-requeue?): resubmit by hand" >&2
    exit 3
  fi
  exit 0
}

# paraflow_step [--name NAME] [--ntasks N] run METHOD [--key value ...]
# One srun step writing $RUN_DIR/NAME.h5 (default NAME: result), checkpointing to
# $RUN_DIR/NAME.ckpt.h5 and restarting from it when it exists. A step whose result exists
# already finished before a requeue and is skipped. Returns the step's exit code; on exit
# code 3 (stopped by a signal, checkpoint written) it ends the job (paraflow_stopped).
paraflow_step() {
  local name=result ntasks=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --name) name=$2; shift 2 ;;
      --ntasks|-n) ntasks=(--ntasks "$2"); shift 2 ;;
      *) break ;;
    esac
  done
  local out="$RUN_DIR/$name.h5" ckpt="$RUN_DIR/$name.ckpt.h5"
  if [ -f "$out" ]; then
    echo "[paraflow] $out exists (finished before a requeue): skipping this step"
    return 0
  fi
  [ -z "$paraflow_signal" ] || paraflow_stopped "SIG$paraflow_signal before step $name"
  local extra=(--output "$out" --checkpoint "$ckpt")
  # A kill between the two renames of a checkpoint commit leaves only NAME.ckpt.h5.prev, which
  # --restart NAME.ckpt.h5 falls back to: restart whenever either exists.
  if [ -f "$ckpt" ] || [ -f "$ckpt.prev" ]; then extra+=(--restart "$ckpt"); fi
  echo "[paraflow] srun --mpi=${SRUN_MPI:-pmix} ${ntasks[*]} paraflow-hpc $* ${extra[*]}"
  srun --mpi="${SRUN_MPI:-pmix}" "${ntasks[@]}" paraflow-hpc "$@" "${extra[@]}" &
  paraflow_step_pid=$!
  # a signal that came while srun was being started was not forwarded yet
  [ -z "$paraflow_signal" ] || kill -s USR1 "$paraflow_step_pid" 2>/dev/null || true
  local rc=0 again
  paraflow_caught=0
  wait "$paraflow_step_pid" || rc=$?
  # A trapped signal interrupts `wait` (status > 128) while the step runs on: wait again for
  # its own exit code (127: the step had already been reaped and rc holds its code).
  while [ "$paraflow_caught" = 1 ] && [ "$rc" -gt 128 ]; do
    paraflow_caught=0
    again=0
    wait "$paraflow_step_pid" || again=$?
    [ "$again" -eq 127 ] || rc=$again
  done
  paraflow_step_pid=""
  case "$rc" in
    0) echo "[paraflow] step $name done: $out" ;;
    3) paraflow_stopped "step $name stopped after writing $ckpt" ;;
    *) echo "[paraflow] step $name failed with exit code $rc" >&2 ;;
  esac
  return "$rc"
}
