#!/usr/bin/env bash
# Idempotent set-up of the whole stack on a Debian 12 machine (root or sudo):
# Open MPI + mpi4py + PETSc/petsc4py + h5py on parallel HDF5 from Debian, and a
# virtual environment (.venv) made from Debian's python3 that sees them, with
# torch (CPU wheel) and pytest from PyPI. Why this route: docs/install.md.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${PARAFLOW_VENV:-$here/.venv}"
stamp="$venv/.paraflow-setup-v5"
[ -f "$stamp" ] && exit 0

debs="openmpi-bin python3-mpi4py python3-petsc4py python3-h5py-mpi python3-venv
      python3-scipy python3-sklearn python3-matplotlib python3-pandas"
missing=""
for d in $debs; do
  dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $d"
done
if [ -n "${missing// /}" ]; then
  echo "[setup] installing Debian packages:" $missing
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

echo "[setup] virtual environment $venv"
/usr/bin/python3 -m venv --system-site-packages "$venv"
# Debian's petsc4py.pth points at /usr/lib/petsc, a link only petsc-dev creates.
petsc_py=$(ls -d /usr/lib/petscdir/petsc3.*/x86_64-linux-gnu-real/lib/python3/dist-packages 2>/dev/null | head -n1 || true)
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -n "$petsc_py" ] && echo "$petsc_py" > "$site/paraflow_petsc.pth"

# Keep Debian's numpy/scipy: their h5py, petsc4py and scipy are built against numpy 1.24.
constraints="$venv/paraflow-constraints.txt"
"$venv/bin/python" - "$constraints" <<'PY'
import sys, numpy, scipy
open(sys.argv[1], "w").write(f"numpy=={numpy.__version__}\nscipy=={scipy.__version__}\n")
PY
log="$venv/setup.log"
pip() {  # pip's own chatter goes to the log; it is shown only if pip fails
  "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" >>"$log" 2>&1 \
    || { tail -n 30 "$log" >&2; return 1; }
}
pip install -c "$constraints" "torch==2.13.0" "pytest>=7" "pytest-timeout"
# PyMGRIT: a test dependency (tests/test_mgrit.py cross-checks against it); --no-deps keeps Debian's
# numpy/scipy/mpi4py, which it needs, from being replaced.
pip install -c "$constraints" --no-deps "pymgrit==1.0.6"
# --no-deps: pip does not see Debian's h5py/mpi4py/petsc4py and would install serial copies.
pip install -c "$constraints" --no-deps --no-build-isolation -e "$here"

# Quiet, fast single-node Open MPI defaults for every shell that activates the venv.
hook="source \"$here/jobs/mpi-env.sh\""
grep -qF "$hook" "$venv/bin/activate" || echo "$hook" >> "$venv/bin/activate"
"$venv/bin/python" -m paraflow_hpc info --check
touch "$stamp"
