#!/usr/bin/env bash
# Every torch-based method on the GPU against the same run on the CPU: layer-parallel, ParaFlow,
# ParaFlowS and PASO, small configurations, on 1 rank and (with two or more GPUs) 2 ranks, one GPU
# per rank (comm.torch_device picks it by local rank). For each run: wall seconds of the whole
# command on the CPU and on the GPU, and the largest difference of the final iterates relative to
# their largest entry, which must stay below TOL (float64 throughout; a GPU sums in another order,
# so the iterates agree to round-off amplified by the training, not bit for bit). Parareal
# (numpy/scipy) and PAN (PETSc) have no --device option: they run on the CPU only and are not
# checked here.
#
# Without a CUDA GPU visible to torch it prints why and exits 0. GPU_CHECK_DEVICE=cpu runs the
# "device" side on the CPU too: a dry run of this script's plumbing on any machine (the test
# suite uses it); GPU_CHECK_METHODS="paso paraflow" checks a subset. Results: $GPU_CHECK_OUT (default results/gpu-check): HDF5 per run and
# gpu-check.md, the table. Exit 1 if any run differs beyond TOL or fails.
#
#   bash jobs/gpu-check.sh                    # on a GPU node (Slurm: srun --gpus-per-task=1 ...)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source jobs/mpi-env.sh
PY=.venv/bin/python
DEVICE=${GPU_CHECK_DEVICE:-cuda}
OUT=${GPU_CHECK_OUT:-results/gpu-check}
TOL=${GPU_CHECK_TOL:-1e-6}
ONLY=${GPU_CHECK_METHODS:-}   # space-separated subset of the methods below (default: all)

ngpu=$($PY -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
if [ "$DEVICE" = cuda ] && [ "$ngpu" -eq 0 ]; then
  echo "gpu-check: skipped: torch sees no CUDA GPU on this machine (torch.cuda.device_count() = 0)"
  exit 0
fi
ranks="1"
if [ "$DEVICE" = cpu ] || [ "$ngpu" -ge 2 ]; then ranks="1 2"; fi
mkdir -p "$OUT"

# method | options of a small run | datasets holding the final iterates
METHODS=(
  "layer-parallel|--problem ellipses --samples 400 --depth 16 --iterations 100 --coarse-iterations 20|solution/K solution/b"
  "paraflow|--problem approximation --eta 0.01 --n-f 10 --budget 2000|data/weights"
  "paraflows|--problem approximation --eta 0.01 --n-f 10 --budget 2000|data/weights"
  "paso|--problem mlp --optimizer adam --lr 0.003 --steps 100 --window 8 --reference none|data/w_final"
)

rows=()
failed=0
for entry in "${METHODS[@]}"; do
  IFS='|' read -r method options datasets <<< "$entry"
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $method "* ]]; then continue; fi
  for n in $ranks; do
    declare -A seconds=()
    for side in cpu device; do
      dev=$([ "$side" = cpu ] && echo cpu || echo "$DEVICE")
      t0=$(date +%s.%N)
      # shellcheck disable=SC2086  # options are words
      if ! timeout 900 mpirun -n "$n" $PY -m paraflow_hpc run "$method" $options --device "$dev" --quiet \
          --output "$OUT/$method-$n-$side.h5" > "$OUT/$method-$n-$side.log" 2>&1; then
        echo "gpu-check: $method on $n rank(s), --device $dev failed; see $OUT/$method-$n-$side.log"
        failed=1
        continue 2
      fi
      seconds[$side]=$(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $t0 }")
    done
    diff=$($PY - "$OUT/$method-$n-cpu.h5" "$OUT/$method-$n-device.h5" $datasets <<'EOF'
import sys
import h5py
import numpy as np
cpu, dev, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with h5py.File(cpu, "r") as a, h5py.File(dev, "r") as b:
    worst = 0.0
    for name in names:
        x, y = a[name][()], b[name][()]
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            worst = float("inf")
        else:
            worst = max(worst, float(np.max(np.abs(x - y)) / max(np.max(np.abs(x)), 1e-300)))
print(f"{worst:.2e}")
EOF
)
    ok=$($PY -c "print('yes' if float('$diff') <= float('$TOL') else 'NO')")
    [ "$ok" = yes ] || failed=1
    rows+=("| $method | $n | ${seconds[cpu]} | ${seconds[device]} | $diff | $ok |")
    unset seconds
  done
done

{
  echo "gpu-check: --device $DEVICE against --device cpu, float64; wall seconds of the whole command"
  echo "(start-up, CUDA initialisation and I/O included); difference = max |w_dev - w_cpu| / max |w_cpu|"
  echo "of the final iterates, tolerance $TOL."
  echo
  echo "| method | ranks | CPU s | $DEVICE s | difference | within tolerance |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} > "$OUT/gpu-check.md"
cat "$OUT/gpu-check.md"
exit $failed
