"""``paraflow-hpc bench paraflows``: the paper's Tables 1-3 (R = L_ParaFlowS / L_GD at equal budget),
and ParaFlow (all ranks) vs ParaFlowS vs GD wall-clock to the same loss, in one run.

With ``optim_problems``, also the optimisers a SciML user runs instead (Adam, then L-BFGS, as
torch.optim) against GD, ParaFlowS and ParaFlow at the same full-batch gradient budget.

The table rows (problem, batch size, eta_F, budget: one GD run and one ParaFlowS run per N_F) are
independent: they are dealt round-robin to the ranks, largest budget first, and gathered on rank 0.
The race then runs the three methods one after the other, timed between barriers: ParaFlowS and GD
on rank 0 (the other ranks wait), ParaFlow on all ranks. The paper's numbers come from
``paraflow_hpc/data/paraflow_tables.json``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from types import SimpleNamespace

import h5py
import numpy as np
import torch
from mpi4py import MPI

from ..algorithms.paraflow import SELECTIONS, baseline, paraflow, paraflows
from ..comm import Progress, Timers
from ..config import option, require
from ..io.results import write_result
from ..io.datafile import read_data
from ..problems.contract import load_problem
from ..problems.networks import PROBLEMS
from ..runners.common import data_option, problem_args_option
from ..steppers import BatchSchedule, Coarse, Fine
from . import BenchConfig


def paper_tables() -> dict:
    return json.loads(resources.files("paraflow_hpc.data").joinpath("paraflow_tables.json").read_text())


@dataclass
class Config(BenchConfig):
    method = "bench-paraflows"
    # grid options are comma-separated lists; the defaults are tuples because dataclass defaults must be immutable
    problems: list[str] = option(("classification", "approximation"),
                                 f"problems to tabulate (of: {', '.join(sorted(PROBLEMS))})")
    batches: list[str] = option(("full",), "batch sizes: full, half (the paper's 724 for the PINN) or a number")
    etas: list[float] = option((0.1, 0.01), "eta_F values")
    budgets: list[int] = option((10000, 100000), "budgets (per-sample gradient evaluations)")
    n_fs: list[int] = option((10, 50, 100), "N_F values (the paper's: 10, 50, 100, 500, 1000, 2000)")
    n_g: int = option(50, "ParaFlowS: most candidates per window")
    selection: str = option("break", "ParaFlowS selection", choices=list(SELECTIONS))
    grid: bool = option(True, "run the table rows (false: the race only)")
    race: bool = option(True, "also time ParaFlow vs ParaFlowS vs GD to the same loss")
    race_problem: str = option("approximation", f"problem of the race (of: {', '.join(sorted(PROBLEMS))})")
    problem: str = option("", "one problem for the grid and the race instead: package.module:name or "
                              "path/to/file.py:name (or a built-in name)")
    problem_args: dict = problem_args_option()
    data: str = data_option()
    race_eta: float = option(0.01, "eta_F of the race")
    race_n_f: int = option(10, "N_F of the race")
    race_budget: int = option(30000, "the target loss is what full-batch GD reaches with this budget")
    optim_problems: list[str] = option((), "problems on which to compare with torch.optim Adam and L-BFGS at "
                                           "equal budget (e.g. approximation,pinn; empty: skip)")
    optim_budget: int = option(30000, "full-batch gradient budget (per-sample evaluations) of that comparison")
    optim_lrs: list[float] = option((1e-3, 1e-2), "Adam learning rates tried")

    def default_output(self) -> str:
        return os.path.join("results", "bench-paraflows.h5")

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        if self.problem:
            self.problems, self.race_problem = [self.problem], self.problem
        for name in self.problems:
            require(name in PROBLEMS or name == self.problem,
                    f"problems: {name!r} is unknown; choose from {', '.join(sorted(PROBLEMS))} or give --problem")
        n_samples = {name: make_problem(self, name, check=True).n_samples
                     for name in {*self.problems, self.race_problem}}
        for batch in self.batches:
            require(batch in ("full", "half") or batch.isdigit() and int(batch) >= 1,
                    f"batches: {batch!r} must be full, half or a positive integer")
            for name in self.problems:
                n = n_samples[name]
                require(not batch.isdigit() or int(batch) <= n,
                        f"batches: {batch} exceeds the {n} samples of {name}; use full or a smaller size")
        require(all(eta > 0 for eta in [*self.etas, self.race_eta]), f"etas = {self.etas}: every eta_F must be > 0")
        require(all(b > 0 for b in [*self.budgets, self.race_budget]), "budgets must be > 0")
        require(all(n >= 1 for n in [*self.n_fs, self.race_n_f]), f"n_fs = {self.n_fs}: every N_F must be >= 1")
        require(self.n_g >= 0, f"n_g = {self.n_g}: must be >= 0")
        for name in self.optim_problems:
            require(name in PROBLEMS, f"optim_problems: {name!r} is unknown; choose from {', '.join(sorted(PROBLEMS))}")
        require(self.optim_budget > 0, f"optim_budget = {self.optim_budget}: must be > 0")
        require(all(lr > 0 for lr in self.optim_lrs), f"optim_lrs = {self.optim_lrs}: every rate must be > 0")
        require(self.grid or self.race or bool(self.optim_problems),
                "grid = race = false and no optim_problems leaves nothing to run; set one of them")


def make_problem(cfg: Config, name: str, check: bool = False):
    """The problem ``name``: a built-in, or ``cfg.problem`` with its arguments and data."""
    if cfg.problem and name == cfg.problem:
        return load_problem(name, "network", cfg.problem_args, data=read_data(cfg.data) if cfg.data else None,
                            check=check)
    return load_problem(name, "network", {}, check=check)


def batch_size(label: str, n_samples: int) -> int:
    return {"full": n_samples, "half": n_samples // 2}.get(label) or int(label)


def paper_row(tables: dict, problem: str, label: str, eta: float, budget: int):
    if problem not in tables["full_batch"]:
        return None
    full = tables["full_batch"][problem]
    size = {"full": full, "half": full // 2}.get(label) or int(label)
    for row in tables["tables"][problem]:
        if row["batch_size"] == size and math.isclose(row["eta"], eta) and row["budget"] == budget:
            return row
    return None


def run_row(cfg: Config, problem_name: str, label: str, eta: float, budget: int, seed: int) -> dict:
    """GD at the budget and ParaFlowS for every N_F, from the same W_0 with the same batches."""
    problem = make_problem(cfg, problem_name)
    W0 = problem.initial_weights(seed)
    schedule = BatchSchedule(problem.n_samples, batch_size(label, problem.n_samples), seed)
    timers = Timers()
    with timers("gd"):
        gd = baseline(problem, Fine(problem, schedule, 1, eta), W0, budget=budget)
    ratios, losses = [], []
    for n_f in cfg.n_fs:
        fine = Fine(problem, schedule, n_f, eta)
        if fine.cost() > budget:   # the paper's "-": not even one F fits in the budget
            ratios.append(math.nan)
            losses.append(math.nan)
            continue
        with timers("paraflows"):
            result = paraflows(problem, fine, Coarse(problem, n_f * eta), W0, n_g=cfg.n_g,
                               selection=cfg.selection, budget=budget)
        losses.append(result.loss)
        ratios.append(result.loss / gd.loss)
    return {"problem": problem_name, "batch": label, "eta": eta, "budget": budget, "gd": gd.loss,
            "initial": gd.history["loss"][0], "loss": losses, "R": ratios, "seconds": timers.elapsed()}


def fmt(x, digits=4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}" if 1e-3 <= abs(x) < 100 else f"{x:.2e}"


def classify(values) -> list[int]:
    """Counts of R < 0.9, 0.9 <= R <= 1.1, R > 1.1 (the paper's dark gray / light gray / white)."""
    v = [x for x in values if x is not None and not math.isnan(x)]
    return [sum(x < 0.9 for x in v), sum(0.9 <= x <= 1.1 for x in v), sum(x > 1.1 for x in v)]


def markdown(cfg, rows: list[dict], tables: dict, race: dict | None, where: str) -> str:
    """The tables of ``rows``; a row's R is aligned with ``cfg.n_fs`` (None: that N_F was not run)."""
    lines = [f"# ParaFlowS vs GD at equal budget (paper Tables 1-3), {where}", "",
             "Each cell: R = L_ParaFlowS / L_GD, ours / paper's (– : not even one F fits in the budget; "
             "n/r: not run). "
             f"ParaFlowS: N_G = {cfg.n_g}, selection {cfg.selection}, F = N_F SGD steps of eta_F, "
             "G = one full-batch GD step of N_F eta_F; same W_0 and batches as GD.", ""]
    ours_full, paper_full = [], []
    for name in (p for p in cfg.problems if any(r["problem"] == p for r in rows)):
        lines += [f"## {name}", "",
                  "| batch | eta_F | budget | L_0 | L_GD ours | L_GD paper | " +
                  " | ".join(f"N_F={n}" for n in cfg.n_fs) + " |",
                  "|---" * (6 + len(cfg.n_fs)) + "|"]
        for row in (r for r in rows if r["problem"] == name):
            paper = paper_row(tables, name, row["batch"], row["eta"], row["budget"])
            paper_r = [paper["R"][tables["n_f"].index(n)] if paper and n in tables["n_f"] else None
                       for n in cfg.n_fs]
            cells = [f"{'n/r' if r is None else fmt(r)} / {fmt(p)}" for r, p in zip(row["R"], paper_r)]
            lines.append(f"| {row['batch']} | {row['eta']:g} | {row['budget']:.0e} | {fmt(row['initial'])} | "
                         f"{fmt(row['gd'])} | {fmt(paper['gd'] if paper else None)} | " + " | ".join(cells) + " |")
            if row["batch"] == "full":
                pairs = [(r, p) for r, p in zip(row["R"], paper_r)
                         if p is not None and r is not None and not math.isnan(r)]
                ours_full += [r for r, _ in pairs]
                paper_full += [p for _, p in pairs]
        lines.append("")
    ours_c, paper_c = classify(ours_full), classify(paper_full)
    if rows:
        lines += ["## Full-batch cells (the same cells, ours vs paper)", "",
                  "| | R < 0.9 | 0.9 <= R <= 1.1 | R > 1.1 |", "|---|---|---|---|",
                  f"| ours | {ours_c[0]} | {ours_c[1]} | {ours_c[2]} |",
                  f"| paper | {paper_c[0]} | {paper_c[1]} | {paper_c[2]} |", ""]
    if race:
        lines += [f"## Wall-clock to the same loss ({race['problem']}, full batch, eta_F = {race['eta']:g}, "
                  f"N_F = {race['n_f']}, target L = {race['target']:.6e}: GD's loss after {race['gd_budget']} "
                  f"gradients)", "",
                  "| method | ranks | windows / steps | gradients (all ranks) | final L | seconds | speed-up vs GD |",
                  "|---|---|---|---|---|---|---|"]
        for entry in race["entries"]:
            lines.append(f"| {entry['method']} | {entry['ranks']} | {entry['iterations']} | {entry['gradients']} | "
                         f"{entry['loss']:.6e} | {entry['seconds']:.3f} | "
                         f"{race['entries'][0]['seconds'] / entry['seconds']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def merged_markdown(paths: list[str]) -> str:
    """One set of tables from several ``bench paraflows`` result files (e.g. the grid's array tasks).

    Rows are sorted like the paper's; a row in several files gets each N_F's cell from the last file
    that has it; the race is the last file's that has one. All files must share N_G, the selection
    rule and the seed (GD and ParaFlowS are deterministic, so a row's GD is then the same in each).
    """
    by_key, race, settings = {}, None, set()
    for path in paths:
        with h5py.File(path, "r") as f:
            if f.attrs.get("method") != "bench-paraflows":
                raise ValueError(f"{path} is not a 'bench paraflows' result (method {f.attrs.get('method')!r})")
            config = json.loads(f.attrs["config"])
            settings.add((config["n_g"], config["selection"], config["seed"]))
            data = {k: f["data"][k][()] for k in f["data"]}
            n_fs = [int(n) for n in data["n_f"]]
            for i, (problem, label, eta, budget) in enumerate(json.loads(f.attrs["rows"])):
                row = by_key.setdefault((problem, label, eta, budget), {
                    "problem": problem, "batch": label, "eta": eta, "budget": budget, "R": {}})
                row.update(gd=float(data["loss_gd"][i]), initial=float(data["initial_loss"][i]))
                row["R"].update(zip(n_fs, (float(r) for r in data["ratio"][i])))
            race = json.loads(f.attrs["race"]) if f.attrs["race"] else race
    if len(settings) > 1:
        raise ValueError(f"the files differ in (N_G, selection, seed): {sorted(settings)}; merge like with like")
    all_n_fs = sorted({n for row in by_key.values() for n in row["R"]})
    rank = {name: i for i, name in enumerate(PROBLEMS)}  # a user's problem after the paper's
    rows = sorted(by_key.values(), key=lambda r: (rank.get(r["problem"], len(rank)), r["batch"] != "full", r["batch"],
                                                  -r["eta"], r["budget"]))
    for row in rows:
        row["R"] = [row["R"].get(n) for n in all_n_fs]
    n_g, selection, _ = settings.pop()
    problems = sorted({r["problem"] for r in rows}, key=lambda p: (rank.get(p, len(rank)), p))
    cfg = SimpleNamespace(problems=problems, n_fs=all_n_fs, n_g=n_g, selection=selection)
    return markdown(cfg, rows, paper_tables(), race, f"merged from {len(paths)} result files")


def run_race(cfg: Config, comm, progress) -> dict:
    """GD, ParaFlowS (rank 0) and ParaFlow (all ranks) until L <= GD's loss at race_budget."""
    problem = make_problem(cfg, cfg.race_problem)
    W0 = problem.initial_weights(cfg.seed)
    schedule = BatchSchedule(problem.n_samples, problem.n_samples, cfg.seed)
    fine = Fine(problem, schedule, cfg.race_n_f, cfg.race_eta)
    coarse = Coarse(problem, cfg.race_n_f * cfg.race_eta)
    target = comm.bcast(baseline(problem, Fine(problem, schedule, 1, cfg.race_eta), W0,
                                 budget=cfg.race_budget).loss if comm.rank == 0 else None, root=0)
    cap = 10 * cfg.race_budget
    entries = []

    def timed(method, ranks, run):
        comm.Barrier()
        t0 = MPI.Wtime()
        result = run() if comm.rank < ranks else None
        comm.Barrier()
        seconds = MPI.Wtime() - t0
        result = comm.bcast(result, root=0)
        entries.append({"method": method, "ranks": ranks, "iterations": result.iterations,
                        "gradients": result.budget_used, "loss": result.loss, "seconds": seconds,
                        "reached": result.stop_reason == "loss_tol"})
        progress(f"race: {method} on {ranks} rank(s): L = {result.loss:.6e} ({result.stop_reason}) "
                 f"in {seconds:.3f} s")

    timed("GD", 1, lambda: baseline(problem, Fine(problem, schedule, 1, cfg.race_eta), W0, budget=cap,
                                    loss_tol=target))
    timed(f"ParaFlowS (N_G = {cfg.n_g}, {cfg.selection})", 1,
          lambda: paraflows(problem, fine, coarse, W0, n_g=cfg.n_g, selection=cfg.selection, budget=cap,
                            loss_tol=target))
    timed(f"ParaFlowS (N_G = {comm.size}, argmin)", 1,
          lambda: paraflows(problem, fine, coarse, W0, n_g=comm.size, selection="argmin", budget=cap,
                            loss_tol=target))
    comm.Barrier()
    t0 = MPI.Wtime()
    par = paraflow(comm, problem, fine, coarse, W0, n_intervals=comm.size, init="coarse", budget=cap,
                   loss_tol=target)
    comm.Barrier()
    entries.append({"method": f"ParaFlow (N_G = {comm.size}, init a)", "ranks": comm.size,
                    "iterations": par.iterations, "gradients": par.budget_used, "loss": par.loss,
                    "seconds": MPI.Wtime() - t0, "reached": par.stop_reason == "loss_tol"})
    progress(f"race: ParaFlow on {comm.size} ranks: L = {par.loss:.6e} ({par.stop_reason}) "
             f"in {entries[-1]['seconds']:.3f} s")
    return {"problem": cfg.race_problem, "eta": cfg.race_eta, "n_f": cfg.race_n_f, "target": target,
            "gd_budget": cfg.race_budget, "entries": entries}


def torch_optimizer(problem, W0, name: str, lr: float, budget: int) -> dict:
    """Full-batch ``torch.optim`` Adam or L-BFGS (strong-Wolfe line search, lr 1) from W0 until the
    next gradient would exceed ``budget`` per-sample gradient evaluations (an L-BFGS line search
    started within the budget finishes). Returns the final full loss, steps and gradients used."""
    W = W0.clone().requires_grad_(True)
    opt = (torch.optim.Adam([W], lr=lr) if name == "adam"
           else torch.optim.LBFGS([W], lr=lr, max_iter=1, history_size=20, line_search_fn="strong_wolfe"))
    start, n, steps = problem.gradient_evaluations, problem.n_samples, 0

    def closure():
        value, gradient = problem.value_and_grad(W)
        W.grad = gradient
        return value

    while problem.gradient_evaluations - start + n <= budget:
        opt.step(closure)
        steps += 1
    return {"loss": problem.loss(W.detach()), "steps": steps, "gradients": problem.gradient_evaluations - start}


def run_optimizers(cfg: Config, comm, name: str, progress) -> dict:
    """Final full-batch loss at ``optim_budget`` gradients: GD, ParaFlowS (N_G = n_g), Adam and
    ParaFlowS with F = Adam per rate, L-BFGS on rank 0, and ParaFlow on all ranks (its budget counts
    every rank's gradients)."""
    problem = make_problem(cfg, name)
    W0 = problem.initial_weights(cfg.seed)
    schedule = BatchSchedule(problem.n_samples, problem.n_samples, cfg.seed)
    fine = Fine(problem, schedule, cfg.race_n_f, cfg.race_eta)
    coarse = Coarse(problem, cfg.race_n_f * cfg.race_eta)
    budget, entries = cfg.optim_budget, []

    def timed(method, ranks, run):
        comm.Barrier()
        t0 = MPI.Wtime()
        result = run() if comm.rank < ranks else None
        comm.Barrier()
        entry = comm.bcast(result, root=0)
        entry.update(method=method, ranks=ranks, seconds=MPI.Wtime() - t0)
        entries.append(entry)
        progress(f"{name}, budget {budget}: {method}: L = {entry['loss']:.6e}, {entry['gradients']} gradients, "
                 f"{entry['seconds']:.2f} s")

    def flow(result):
        return {"loss": result.loss, "steps": result.iterations, "gradients": result.budget_used}

    timed(f"GD (eta {cfg.race_eta:g})", 1,
          lambda: flow(baseline(problem, Fine(problem, schedule, 1, cfg.race_eta), W0, budget=budget)))
    timed(f"ParaFlowS (N_F = {cfg.race_n_f}, N_G = {cfg.n_g}, {cfg.selection})", 1,
          lambda: flow(paraflows(problem, fine, coarse, W0, n_g=cfg.n_g, selection=cfg.selection, budget=budget)))
    comm.Barrier()
    t0 = MPI.Wtime()
    par = paraflow(comm, problem, fine, coarse, W0, n_intervals=comm.size, init="coarse", budget=budget)
    comm.Barrier()
    entries.append({**flow(par), "method": f"ParaFlow (N_F = {cfg.race_n_f}, N_G = {comm.size}, init a)",
                    "ranks": comm.size, "seconds": MPI.Wtime() - t0})
    for lr in cfg.optim_lrs:
        timed(f"Adam (lr {lr:g})", 1, lambda: torch_optimizer(problem, W0, "adam", lr, budget))
        adam_fine = Fine(problem, schedule, cfg.race_n_f, lr, "adam")  # F = N_F Adam steps, state fresh per F
        timed(f"ParaFlowS with F = Adam (lr {lr:g}, N_F = {cfg.race_n_f}, N_G = {cfg.n_g}, {cfg.selection})", 1,
              lambda: flow(paraflows(problem, adam_fine, Coarse(problem, cfg.race_n_f * lr), W0, n_g=cfg.n_g,
                                     selection=cfg.selection, budget=budget)))
    timed("L-BFGS (strong Wolfe)", 1, lambda: torch_optimizer(problem, W0, "lbfgs", 1.0, budget))
    return {"problem": name, "budget": budget, "initial": problem.loss(W0), "entries": entries}


def optimizer_markdown(comparisons: list[dict]) -> str:
    lines = []
    for c in comparisons:
        best = min(e["loss"] for e in c["entries"])
        lines += [f"## {c['problem']}: ParaFlow against torch.optim at {c['budget']} full-batch gradient "
                  f"evaluations (L_0 = {c['initial']:.6e})", "",
                  "Baseline: GD with the same step; lower L is better; ratio = L / L_GD.", "",
                  "| method | ranks | steps / windows | gradients (all ranks) | final L | L / L_GD | best? | seconds |",
                  "|---|---|---|---|---|---|---|---|"]
        gd = c["entries"][0]["loss"]
        for e in c["entries"]:
            lines.append(f"| {e['method']} | {e['ranks']} | {e['steps']} | {e['gradients']} | {e['loss']:.6e} | "
                         f"{e['loss'] / gd:.3g} | {'best' if e['loss'] == best else ''} | {e['seconds']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(cfg: Config, comm) -> int:
    progress = Progress(comm, cfg.quiet)
    tables = paper_tables()
    rows = [(p, b, eta, budget) for p in cfg.problems for b in cfg.batches for eta in cfg.etas
            for budget in cfg.budgets] if cfg.grid else []
    order = sorted(range(len(rows)), key=lambda i: -rows[i][3])   # largest budgets first, dealt round-robin
    mine = [rows[i] for i in order[comm.rank::comm.size]]
    progress(f"ParaFlowS table: {len(rows)} rows x {len(cfg.n_fs)} N_F on {comm.size} ranks")
    timers = Timers()
    done = []
    with timers("table"):
        for row in mine:
            done.append(run_row(cfg, *row, seed=cfg.seed))
            progress(f"row {row}: R = {[fmt(r) for r in done[-1]['R']]} ({done[-1]['seconds']:.1f} s on rank 0)")
    gathered = comm.gather(done, root=0)
    results = None
    if comm.rank == 0:
        by_key = {(r["problem"], r["batch"], r["eta"], r["budget"]): r for part in gathered for r in part}
        results = [by_key[row] for row in rows]
    results = comm.bcast(results, root=0)
    race = None
    if cfg.race:
        with timers("race"):
            race = run_race(cfg, comm, progress)
    comparisons = []
    with timers("optimizers"):
        for name in cfg.optim_problems:
            comparisons.append(run_optimizers(cfg, comm, name, progress))
    text = markdown(cfg, results, tables, race, f"{comm.size} MPI ranks")
    if comparisons:
        text += "\n" + optimizer_markdown(comparisons)
    data = {"budget": np.array([r["budget"] for r in results]), "eta": np.array([r["eta"] for r in results]),
            "loss_gd": np.array([r["gd"] for r in results]), "initial_loss": np.array([r["initial"] for r in results]),
            "loss_paraflows": np.array([r["loss"] for r in results]).reshape(len(results), len(cfg.n_fs)),
            "ratio": np.array([r["R"] for r in results]).reshape(len(results), len(cfg.n_fs)),
            "n_f": np.array(cfg.n_fs)}
    attrs = {"rows": json.dumps([[r["problem"], r["batch"], r["eta"], r["budget"]] for r in results]),
             "paper_source": tables["source"], "race": json.dumps(race) if race else "",
             "optimizers": json.dumps(comparisons)}
    write_result(comm, cfg.output, method="bench-paraflows", config=cfg.as_dict(), timings=timers.as_dict(),
                 counters={"table_rows": len(mine)}, data=data, attrs=attrs)
    table_path = cfg.write_table(comm, text)
    progress("\n" + text + f"\nwrote {cfg.output} and {table_path}")
    return 0
