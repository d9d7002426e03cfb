"""A user's torch model, trained on a data file (``--data``) by PASO and ParaFlow/ParaFlowS.

The framework passes ``in_dim`` (features) and ``out_dim`` (classes, or target columns) from the
data file; ``hidden`` is a constructor argument (``--problem-args hidden=32``). The weights are
drawn under ``torch.manual_seed(seed)``, so ``--seed`` fixes them.

    mpirun -n 2 paraflow-hpc run paso --problem docs/examples/tiny_mlp.py:TinyMLP --data docs/examples/moons.npz
    mpirun -n 2 paraflow-hpc run paraflow --problem docs/examples/tiny_mlp.py:TinyMLP --data docs/examples/moons.npz
"""
from torch import nn


class TinyMLP(nn.Sequential):
    def __init__(self, in_dim: int, out_dim: int, hidden: int = 16):
        super().__init__(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim))
