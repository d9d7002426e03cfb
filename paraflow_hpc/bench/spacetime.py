"""``paraflow-hpc bench spacetime``: the same PDE on every P × S split of the ranks, in one run.

On W ranks, for each S dividing W (default: all): the space-only run (P = 1, S = W: the
sequential fine solve, each step space-parallel on all ranks, which is what a user without
Parareal runs and the baseline of every speed-up) and space-time Parareal on P = W / S time
groups of S space ranks. Measured per layout: wall time, Parareal iterations K, error against
the sequential fine solution, and the inputs of the cost model:

    τ_F(S), τ_G(S)   seconds per call of F and G on S space ranks (averaged over the ranks),
    τ_msg            one boundary message between time groups (a ping-pong of a state piece),
    E(S) = τ_F(1) / (S τ_F(S))   the space-parallel efficiency of F (needs S = 1 among the layouts),

    T_space-only = N τ_F(W),
    T_space-time(P, S) = N τ_G(S) + K m (τ_F(S) + τ_G(S)) + (K + 1)(P − 1) τ_msg,   m = ⌈N / P⌉,

the pipelined schedule of ``parareal.py`` with one chain of messages per sweep. Neglecting G and
messages, space-time on P × S beats space-only on P·S ranks when K / E(S) < 1 / E(P·S): when the
space-parallel efficiency at full width has fallen below E(S) / K. With ``--coarse-grid-factor
1,2`` every P × S layout runs once per factor (G on F's grid, then on the grid coarsened by 2:
τ_G shrinks, K may grow). Writes HDF5, a markdown table and a PNG plot (measured and modelled
time per layout).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from mpi4py import MPI

from ..algorithms.parareal_st import parareal_st, serial_fine_st
from ..comm import Progress, Timers, collective, space_time_split
from ..config import option, require
from ..io.results import write_result
from ..problems.pde import petsc
from ..propagators_petsc import TS_TYPES, insert_options
from ..runners import spacetime as runner
from ..runners.common import problem_args_option, problem_option
from . import BenchConfig

PING_PONGS = 20


@dataclass
class Config(BenchConfig):
    method = "bench-spacetime"
    problem: str = problem_option("heat2d", "pde")
    problem_args: dict = problem_args_option()
    space_ranks: list[int] = field(default_factory=list,
                                   metadata={"help": "space ranks S per layout (default: every divisor of "
                                                     "the world size)", "choices": None})
    nx: int = option(48, "grid points in x")
    ny: int = option(0, "grid points in y (0: nx)")
    t0: Optional[float] = option(None, "start time (default: the problem's)")
    tf: Optional[float] = option(None, "end time (default: the problem's)")
    intervals: int = option(8, "time subintervals N")
    coarse: str = option("beuler", "PETSc TS type of G", choices=list(TS_TYPES))
    coarse_steps: int = option(2, "steps of G per subinterval")
    coarse_grid_factor: list[int] = field(default_factory=lambda: [1],
                                          metadata={"help": "G's grid coarsening factors to compare, e.g. 1,2 "
                                                            "(every P x S layout runs once per factor; 1: F's grid)",
                                                    "choices": None})
    fine: str = option("cn", "PETSc TS type of F", choices=list(TS_TYPES))
    fine_steps: int = option(16, "steps of F per subinterval")
    petsc: str = option("", "PETSc options (coarse_/fine_ prefixes), one quoted string")
    tol: float = option(1e-5, "Parareal tolerance on the max-norm update (F's own error vs the exact "
                                "solution is ~5e-6 at the defaults)")
    plot: str = option("", "PNG plot (default: <output stem>.png)")

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        if not self.space_ranks:
            self.space_ranks = [s for s in range(comm_size, 0, -1) if comm_size % s == 0]
        require(comm_size in self.space_ranks,
                f"space_ranks = {self.space_ranks} must include {comm_size} (the space-only baseline)")
        require(bool(self.coarse_grid_factor), "coarse_grid_factor: give at least one factor, e.g. 1 or 1,2")
        for s in self.space_ranks:
            for factor in self.factors(s, comm_size):
                self.run_config(s, factor).validate(comm_size)

    def factors(self, space_ranks: int, comm_size: int) -> list[int]:
        """The coarse grid factors a layout runs with: all, except for the space-only run, which has no G."""
        return [1] if space_ranks == comm_size else list(dict.fromkeys(self.coarse_grid_factor))

    def run_config(self, space_ranks: int, coarse_grid_factor: int = 1) -> runner.Config:
        keys = ("problem", "problem_args", "nx", "ny", "t0", "tf", "intervals", "coarse", "coarse_steps", "fine",
                "fine_steps", "petsc", "tol")
        return runner.Config(space_ranks=space_ranks, coarse_grid_factor=coarse_grid_factor,
                             **{key: getattr(self, key) for key in keys})

    def resolve_paths(self) -> None:
        super().resolve_paths()
        if not self.plot:
            self.plot = self.output_stem() + ".png"

    def default_output(self) -> str:
        return os.path.join("results", f"bench-spacetime-{self.problem.rsplit(':', 1)[-1]}.h5")


def message_seconds(comm_time, vec) -> float:
    """One-way time of a boundary message (this rank's piece of a state) between time groups 0 and 1."""
    if comm_time.size < 2:
        return 0.0
    buf = np.array(vec.getArray(readonly=True))
    comm_time.Barrier()
    t0 = MPI.Wtime()
    for _ in range(PING_PONGS):
        if comm_time.rank == 0:
            comm_time.Send(buf, dest=1)
            comm_time.Recv(buf, source=1)
        elif comm_time.rank == 1:
            comm_time.Recv(buf, source=0)
            comm_time.Send(buf, dest=0)
    seconds = (MPI.Wtime() - t0) / (2 * PING_PONGS)
    return comm_time.bcast(seconds, root=0)


def run_layout(comm, cfg: Config, space_ranks: int, coarse_grid_factor: int = 1) -> tuple[dict, dict]:
    """One layout: space-only sequential fine (P = 1) or space-time Parareal (P > 1), G on the grid
    coarsened by ``coarse_grid_factor``. Returns (its table row, the PETSc types G and F used)."""
    run_cfg = cfg.run_config(space_ranks, coarse_grid_factor)
    r = run_cfg.resolved()
    layout = runner.layout_of(comm, space_ranks)
    comm_time, comm_space = space_time_split(comm, space_ranks)
    runner.check_before_setup(comm, petsc(comm), run_cfg, layout)
    problem, coarse, fine, u0 = runner.make_solvers(comm, comm_space, run_cfg, layout)
    times = np.linspace(r["t0"], r["tf"], cfg.intervals + 1)
    p = comm_time.size

    timers = Timers()
    comm.Barrier()
    reference, _ = serial_fine_st(comm_time, fine, u0, times, timers)
    comm.Barrier()
    serial_seconds = comm.allreduce(timers.elapsed(), op=MPI.MAX)
    row = {"time_groups": p, "space_ranks": space_ranks, "coarse_grid_factor": coarse_grid_factor,
           "coarse_nx": coarse.grid[0], "coarse_ny": coarse.grid[1], "serial_fine_seconds": serial_seconds}
    if p == 1:
        tau_f = comm.allreduce(timers.seconds.get("fine", 0.0), op=MPI.SUM) / (comm.size * cfg.intervals)
        row.update(iterations=0, seconds=serial_seconds, error=0.0, tau_fine=tau_f, tau_coarse=float("nan"),
                   tau_message=0.0, model_seconds=cfg.intervals * tau_f)
    else:
        comm.Barrier()
        wall = Timers()
        result = parareal_st(comm_time, coarse, fine, u0, times, tol=cfg.tol, k_max=cfg.intervals,
                             reference=reference)
        comm.Barrier()
        seconds = comm.allreduce(wall.elapsed(), op=MPI.MAX)

        def per_call(name, calls):
            return (comm.allreduce(result.timings.get(name, 0.0), op=MPI.SUM)
                    / comm.allreduce(calls, op=MPI.SUM))

        tau_f, tau_g = per_call("fine", result.fine_calls), per_call("coarse", result.coarse_calls)
        tau_msg = message_seconds(comm_time, u0)
        k, m = result.iterations, -(-cfg.intervals // p)
        row.update(iterations=k, seconds=seconds, error=result.errors[-1], tau_fine=tau_f, tau_coarse=tau_g,
                   tau_message=tau_msg,
                   model_seconds=cfg.intervals * tau_g + k * m * (tau_f + tau_g) + (k + 1) * (p - 1) * tau_msg)
    solvers = {**coarse.solver_types(), **fine.solver_types()}
    # PETSc 3.18 fails (MPI_ERR_KEYVAL) destroying a SuperLU_DIST factorization that was set up but
    # never used while no other one exists (G of the space-only run, F iterative): leave it to exit
    for obj in (coarse, fine, problem):
        if getattr(obj, "calls", 1):
            obj.destroy()
    for v in [u0, *reference]:
        v.destroy()
    comm_time.Free()
    comm_space.Free()
    return row, solvers


def markdown(rows: list[dict], cfg: Config) -> str:
    head = (f"{cfg.problem} on {cfg.nx} x {cfg.ny or cfg.nx}, N = {cfg.intervals}, G = {cfg.coarse} x "
            f"{cfg.coarse_steps}, F = {cfg.fine} x {cfg.fine_steps}, tol = {cfg.tol:g}\n\n"
            "| layout P x S | G grid | K | wall [s] | speed-up vs space-only | model [s] | model / measured | "
            "tau_F [ms] | tau_G [ms] | tau_msg [ms] | E_space(S) | error vs seq. F |\n|" + "---|" * 12 + "\n")

    def ms(v):
        return "-" if not np.isfinite(v) else f"{1e3 * v:.3f}"

    def line(r):
        space_only = r["time_groups"] == 1
        efficiency = r["space_efficiency"]
        factor = int(r["coarse_grid_factor"])
        grid = "-" if space_only else f"{int(r['coarse_nx'])} x {int(r['coarse_ny'])}" + (
            f" (c = {factor})" if factor > 1 else "")
        return (f"| {r['time_groups']} x {r['space_ranks']}{' (space-only)' if space_only else ''} | {grid} | "
                f"{'-' if space_only else r['iterations']} | {r['seconds']:.3f} | {r['speedup']:.2f} | "
                f"{r['model_seconds']:.3f} | {r['model_seconds'] / r['seconds']:.2f} | {ms(r['tau_fine'])} | "
                f"{ms(r['tau_coarse'])} | {ms(r['tau_message'])} | "
                f"{'-' if not np.isfinite(efficiency) else format(efficiency, '.2f')} | {r['error']:.1e} |\n")

    return head + "".join(line(r) for r in rows)


def _plot(cfg: Config, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['time_groups']}x{r['space_ranks']}" + (f"\nc={int(r['coarse_grid_factor'])}"
                                                           if r["coarse_grid_factor"] > 1 else "") for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(x - 0.2, [r["seconds"] for r in rows], 0.4, label="measured")
    ax.bar(x + 0.2, [r["model_seconds"] for r in rows], 0.4, label="cost model")
    for xi, r in zip(x, rows):
        label = "sequential F" if r["time_groups"] == 1 else f"K={r['iterations']}"
        ax.text(xi, r["seconds"], label, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, labels)
    ax.set_xlabel("layout P (time groups) x S (space ranks)")
    ax.set_ylabel("wall time [s]")
    ax.set_title(f"{cfg.problem} {cfg.nx}x{cfg.ny or cfg.nx}, N = {cfg.intervals}: space-only vs space-time")
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(cfg.plot)), exist_ok=True)
    fig.savefig(cfg.plot, dpi=110)
    plt.close(fig)


def main(cfg: Config, comm) -> int:
    progress = Progress(comm, cfg.quiet)
    with collective(comm, "PETSc initialisation"):
        insert_options(petsc(comm), cfg.petsc)
    rows = []
    for s in sorted(cfg.space_ranks, reverse=True):
        for factor in cfg.factors(s, comm.size):
            row, solvers = run_layout(comm, cfg, s, factor)   # the same types in every layout
            progress(f"P = {row['time_groups']} x S = {row['space_ranks']}"
                     + (f", G on {row['coarse_nx']} x {row['coarse_ny']}" if factor > 1 else "")
                     + f": K = {row['iterations']}, {row['seconds']:.3f} s (model {row['model_seconds']:.3f} s)")
            rows.append(row)
    baseline = rows[0]["seconds"]  # P = 1, S = W: the space-only run
    tau_f1 = next((r["tau_fine"] for r in rows if r["space_ranks"] == 1), float("nan"))
    for r in rows:
        r["speedup"] = baseline / r["seconds"]
        # 1 by definition on one space rank (τ_F(1) of another layout differs by its noise)
        r["space_efficiency"] = 1.0 if r["space_ranks"] == 1 else tau_f1 / (r["space_ranks"] * r["tau_fine"])
    with collective(comm, f"writing result {cfg.output}"):
        write_result(comm, cfg.output, method="bench-spacetime", config=cfg.as_dict(),
                     data={k: np.array([r[k] for r in rows]) for k in rows[0]}, attrs=solvers)   # counts stay ints
    table = markdown(rows, cfg)
    path = cfg.write_table(comm, table)
    if comm.rank == 0:
        _plot(cfg, rows)
    progress("\n" + table + f"\nHDF5: {cfg.output}, table: {path}, plot: {cfg.plot}")
    return 0
