"""``paraflow-hpc ARGS`` with one extra PAN problem registered: ``singular``, y' = y², y(0) = 1 on
[0, 2] (y = 1/(1 - t) leaves every bound at t = 1), to test how run pan reports a failure."""
import sys

import numpy as np

from paraflow_hpc.problems.contract import register
from paraflow_hpc.problems.ivp import IVP


class Singular(IVP):
    name = "singular"
    tf = 2.0

    def __init__(self):
        self.y0 = np.array([1.0])

    def f(self, t, Y):
        return Y * Y

    def scipy_f(self, t, y):
        return y * y


register("ivp", "singular", Singular)   # the door an installed package's entry point uses

from paraflow_hpc.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
