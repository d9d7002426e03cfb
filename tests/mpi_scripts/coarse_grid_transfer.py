"""GridTransfer (G on a coarser grid) against dense reference operators, on any number of ranks.

For Dirichlet (heat2d) and periodic (allen-cahn) grids and several factors: the coarse grid's size
and ownership, P (bilinear interpolation, zero on the Dirichlet boundary), R (full weighting, the
scaled transpose of P; and injection, with R P = I) applied to random fields, compared with the
same operators built densely from the grid geometry, and the coarse problem's coordinates lying
on the fine ones.
"""
import numpy as np
from mpi4py import MPI

from paraflow_hpc.problems.pde import PDE_PROBLEMS, coarse_to_fine, petsc, process_grid
from paraflow_hpc.propagators_petsc import GridTransfer

comm = MPI.COMM_WORLD
petsc(comm)
rng = np.random.default_rng(0)  # the same fields on every rank


def interpolation_1d(n: int, nc: int, factor: int, boundary: str) -> np.ndarray:
    """Dense (n, nc) linear interpolation from the geometry: coarse j at x = (j + 1) H (Dirichlet, zero
    outside) or j H (periodic), H = factor h."""
    P = np.zeros((n, nc))
    for i in range(n):
        position = i / factor if boundary == "periodic" else (i + 1) / factor  # in coarse spacings
        left = int(np.floor(position))
        w = position - left
        for J, weight in ((left, 1.0 - w), (left + 1, w)):
            if weight == 0.0:
                continue
            if boundary == "periodic":
                P[i, J % nc] += weight
            elif 1 <= J <= nc:  # extended index J is interior point J - 1
                P[i, J - 1] += weight
    return P


def block(array, problem):
    return array[problem.ys:problem.ye, problem.xs:problem.xe]


CASES = [("heat2d", 7, 11, 2), ("heat2d", 15, 7, 4), ("heat2d", 8, 17, 3), ("allen-cahn", 8, 12, 2),
         ("allen-cahn", 12, 8, 4)]
checked = 0
for name, nx, ny, factor in CASES:
    cls = PDE_PROBLEMS[name]
    px, py = process_grid(comm.size)
    fine = cls(comm, nx, ny, (px, py))
    try:
        coarse = fine.coarsened(factor)
    except ValueError as err:  # the runner refuses these layouts up front
        assert "without coarse points" in str(err), err
        continue
    ix = [coarse_to_fine(cls.boundary, j, factor) for j in range(coarse.nx)]
    iy = [coarse_to_fine(cls.boundary, j, factor) for j in range(coarse.ny)]
    # the coarse grid's points are fine points, each on the rank that owns that fine point
    assert np.allclose(coarse.x, fine.hx * (np.array(ix[coarse.xs:coarse.xe]) + (cls.boundary != "periodic")))
    assert all(fine.xs <= i < fine.xe for i in ix[coarse.xs:coarse.xe])
    assert all(fine.ys <= j < fine.ye for j in iy[coarse.ys:coarse.ye])
    Py, Px = interpolation_1d(ny, coarse.ny, factor, cls.boundary), interpolation_1d(nx, coarse.nx, factor,
                                                                                   cls.boundary)
    for restriction in ("full_weighting", "injection"):
        transfer = GridTransfer(fine, coarse, restriction)
        uf, uc, vc = fine.create_vec(), coarse.create_vec(), coarse.create_vec()
        fine_field, coarse_field = rng.standard_normal((ny, nx)), rng.standard_normal((coarse.ny, coarse.nx))
        with uf as arr:
            arr[:] = block(fine_field, fine).ravel()
        transfer.restrict(uf, uc)
        if restriction == "injection":
            expected = fine_field[np.ix_(iy, ix)]
        else:
            expected = (Py / Py.sum(axis=0)).T @ fine_field @ (Px / Px.sum(axis=0))
        errors = [np.abs(uc.getArray().reshape(coarse.block_shape) - block(expected, coarse)).max()]
        with uc as arr:
            arr[:] = block(coarse_field, coarse).ravel()
        transfer.prolong(uc, uf)
        errors.append(np.abs(uf.getArray().reshape(fine.block_shape) - block(Py @ coarse_field @ Px.T, fine)).max())
        if restriction == "injection":  # R P = I
            transfer.restrict(uf, vc)
            errors.append(np.abs(vc.getArray() - uc.getArray()).max())
        worst = comm.allreduce(max(errors), op=MPI.MAX)
        assert worst < 1e-14, (name, nx, ny, factor, restriction, errors)
        for obj in (uf, uc, vc, transfer):
            obj.destroy()
        checked += 1
    coarse.destroy()
    fine.destroy()
assert checked >= 6, checked
print(f"rank {comm.rank}: ok ({checked} transfers)")
