"""``paraflow-hpc bench layer-parallel``: serial SGD against layer-parallel training (Alg. 4 on all
ranks), side by side in one run, for each scheme and depth, with and without the coarse global
prediction. Two serial runs, same network, initial weights and mini-batches: the baseline a user
would run, a plain torch loop (``full_forward``, ``loss.backward()``, ``torch.optim.SGD``), against
which every speed-up is taken, and the exact coupling on one rank (Alg. 3, the same iterates),
whose cost per iteration is reported beside it.

Measured: fine iterations and training time (evaluation excluded, the coarse phase included) until
the full training set reaches ``target_accuracy``, speed-up and parallel efficiency from the time,
time per iteration, final test accuracy of both, the regression MSE and relative error per iteration,
the cosine between each rank's applied and true gradient (every ``diagnose_every`` iterations, not
timed), and the CPU time
per iteration of the slowest rank in forward, loss, regression, backward and update (what the
iteration costs on dedicated cores, without the waiting that an oversubscribed machine adds at every
synchronisation; on a GPU it measures only the launch cost). The serial baseline runs on rank 0
alone while the other ranks sleep (they poll a non-blocking barrier instead of spinning in a
blocking one, so they do not take CPU from it). Writes HDF5, a markdown table and a PNG plot.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from mpi4py import MPI

from ..algorithms.layer_parallel import COMPUTE_TIMERS, BatchStream, train
from ..comm import Progress
from ..config import option, require
from ..io.results import write_result
from ..problems.resnet import SCHEMES, full_forward, loss_value
from ..runners import layer_parallel as runner
from ..runners.common import configured_problem, problem_args_option, problem_option
from . import BenchConfig

VARIANTS = {"multilevel": True, "single-level": False}


@dataclass
class Config(BenchConfig):
    method = "layer-parallel-bench"
    problem: str = problem_option("swissroll", "dataset")
    problem_args: dict = problem_args_option()
    data: str = option("", "data file (as for run layer-parallel): replaces --problem")
    samples: int = option(1000, "samples before the 80/20 train/test split")
    depths: list[int] = field(default_factory=lambda: [16, 32, 64],
                              metadata={"help": "residual layers of the fine model (the paper: 16,...,512)",
                                        "choices": None})
    schemes: list[str] = field(default_factory=lambda: list(SCHEMES),
                               metadata={"help": "time discretisations", "choices": None})
    variants: list[str] = field(default_factory=lambda: list(VARIANTS),
                                metadata={"help": "multilevel (coarse prediction) and/or single-level",
                                          "choices": None})
    width: int = option(4, "channels per state")
    final_time: float = option(4.0, "T of the continuous model")
    iterations: int = option(400, "SGD iterations of every run")
    lr: float = option(0.5, "learning rate (serial and parallel alike)")
    batch_size: int = option(32, "mini-batch size")
    coarse_iterations: int = option(50, "H: coarse-model iterations of the multilevel variant")
    window: int = option(20, "regression window (batches of pairs)")
    ridge: float = option(1e-6, "ridge parameter of the regression")
    target_accuracy: float = option(0.95, "training accuracy whose first attainment is timed")
    eval_every: int = option(10, "evaluate the full training set every k iterations (not timed)")
    diagnose_every: int = option(10, "compute the true gradients every k iterations for the gradient cosine "
                                     "(not timed; 0: never)")
    plot: str = option("", "PNG plot (default: <output stem>.png)")

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        configured_problem(self, "dataset", n_samples=self.samples, seed=self.seed)
        require(comm_size >= 2, f"the benchmark compares 1 rank with all ranks: run it with mpirun -n 2 "
                                f"(or more), not {comm_size}")
        for s in self.schemes:
            require(s in SCHEMES, f"schemes contains {s!r}; choose from: {', '.join(SCHEMES)}")
        for v in self.variants:
            require(v in VARIANTS, f"variants contains {v!r}; choose from: {', '.join(VARIANTS)}")
        require(bool(self.depths) and bool(self.schemes) and bool(self.variants),
                "depths, schemes and variants must each name at least one value")
        for d in self.depths:
            require(d % 2 == 0 and d // 2 >= comm_size,
                    f"depths contains {d}: every depth must be even and at least {2 * comm_size} for "
                    f"{comm_size} ranks (the coarse model has half the layers, each rank at least one)")
        require(0 < self.target_accuracy <= 1, f"target_accuracy = {self.target_accuracy}: must be in (0, 1]")
        require(self.diagnose_every >= 0, f"diagnose_every = {self.diagnose_every}: must be >= 0")
        for key in ("iterations", "batch_size", "eval_every", "window", "width", "samples"):
            require(getattr(self, key) >= 1, f"{key} = {getattr(self, key)}: must be >= 1")
        for depth in self.depths:   # every case goes through the checks of `run layer-parallel`
            for scheme in self.schemes:
                runner.Config(problem=self.problem, samples=self.samples, depth=depth, width=self.width,
                              final_time=self.final_time, scheme=scheme, coarse_iterations=self.coarse_iterations,
                              iterations=self.iterations, lr=self.lr, batch_size=self.batch_size,
                              window=self.window, ridge=self.ridge, eval_every=self.eval_every,
                              seed=self.seed).validate(comm_size)

    def resolve_paths(self) -> None:
        super().resolve_paths()
        self.plot = self.plot or self.output_stem() + ".png"


def _idle_until_done(comm) -> None:
    """Ranks without work sleep until rank 0 joins the barrier (a blocking one would busy-poll)."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(0.005)


def _run_config(cfg: Config, scheme: str, depth: int, coupling: str, coarse_iterations: int):
    return runner.Config(problem=cfg.problem, problem_args=cfg.problem_args, data=cfg.data, samples=cfg.samples,
                         depth=depth, width=cfg.width,
                         final_time=cfg.final_time, scheme=scheme, coupling=coupling,
                         coarse_iterations=coarse_iterations, iterations=cfg.iterations, lr=cfg.lr,
                         batch_size=cfg.batch_size, window=cfg.window, ridge=cfg.ridge,
                         eval_every=cfg.eval_every, seed=cfg.seed, quiet=True,
                         diagnose_every=cfg.diagnose_every if coupling == "regression" else 0)


def _run(comm, rcfg):
    spec, params, data, _ = runner.setup(rcfg, comm)
    return train(comm, spec, params, data, **runner.train_options(rcfg))


def plain_torch_sgd(rcfg) -> dict:
    """The serial baseline a user would write: the whole network as one autograd graph, ``backward()``
    and ``torch.optim.SGD``, same initial weights and mini-batches as ``train``; evaluated every
    ``eval_every`` iterations outside the timing. Returns evals like ``train``'s and the CPU seconds
    per iteration."""
    spec, params, data, _ = runner.setup(rcfg, MPI.COMM_SELF)
    weights = {n: t.clone().requires_grad_() for n, t in params.items()}
    opt = torch.optim.SGD(weights.values(), lr=rcfg.lr, weight_decay=rcfg.weight_decay)
    batches = BatchStream(len(data["y_train"]), rcfg.batch_size, rcfg.seed, stream=0)
    evals = {n: [] for n in ("iteration", "seconds", "train_accuracy", "test_accuracy")}
    wall = cpu = 0.0

    def record(k):
        with torch.no_grad():
            accuracy = [float((full_forward(spec, weights, data[f"x_{s}"]).argmax(dim=1) == data[f"y_{s}"])
                              .double().mean()) for s in ("train", "test")]
        for name, value in zip(evals, (k, wall, *accuracy)):
            evals[name].append(value)

    record(0)
    for k in range(rcfg.iterations):
        idx = batches.indices(k)
        w0, c0 = time.perf_counter(), time.thread_time()
        opt.zero_grad()
        loss_value(spec, full_forward(spec, weights, data["x_train"][idx]), data["y_train"][idx]).backward()
        opt.step()
        wall, cpu = wall + time.perf_counter() - w0, cpu + time.thread_time() - c0
        if (k + 1) % rcfg.eval_every == 0 or k + 1 == rcfg.iterations:
            record(k + 1)
    return {"evals": {n: np.array(v, dtype=float) for n, v in evals.items()}, "compute": cpu / rcfg.iterations}


def _to_target(evals: dict, target: float) -> tuple[float, float]:
    """(training seconds, fine iterations) at the first evaluation that reaches ``target``; nan if none."""
    reached = np.nonzero(evals["train_accuracy"] >= target)[0]
    if not len(reached):
        return float("nan"), float("nan")
    return float(evals["seconds"][reached[0]]), float(evals["iteration"][reached[0]])


def _compute_per_iteration(comm, result) -> float:
    """Slowest rank's CPU time per fine iteration in forward, loss, regression, backward and update:
    the per-iteration cost on dedicated cores, without waiting for messages or for a free core."""
    mine = (sum(result.timings.get("cpu_" + name, 0.0) for name in COMPUTE_TIMERS)
            / max(result.counters["iterations_run"], 1))
    return comm.allreduce(mine, op=MPI.MAX)


def _seconds_per_iteration(evals: dict) -> float:
    return float((evals["seconds"][-1] - evals["seconds"][0]) / max(evals["iteration"][-1] - evals["iteration"][0], 1))


def _warm_up(cfg: Config) -> None:
    """Torch's first autograd calls are slow (lazy initialisation): pay for them before timing."""
    rcfg = _run_config(cfg, cfg.schemes[0], 2, "exact", 0)
    rcfg.iterations, rcfg.samples, rcfg.batch_size = 5, 50, 8
    _run(MPI.COMM_SELF, rcfg)


def main(cfg: Config, comm) -> int:
    progress = Progress(comm, cfg.quiet)
    _warm_up(cfg)
    progress(f"layer-parallel benchmark: {cfg.problem}, depths {cfg.depths}, schemes {cfg.schemes}, "
             f"variants {cfg.variants}, 1 rank vs {comm.size} ranks, {cfg.iterations} iterations each")
    rows, history = [], {}
    for scheme in cfg.schemes:
        for depth in cfg.depths:
            serial = None
            if comm.rank == 0:
                plain = plain_torch_sgd(_run_config(cfg, scheme, depth, "exact", 0))
                res = _run(MPI.COMM_SELF, _run_config(cfg, scheme, depth, "exact", 0))
                serial = {"plain": plain, "exact": {"evals": res.evals,
                                                    "compute": _compute_per_iteration(MPI.COMM_SELF, res)}}
                comm.Ibarrier().Wait()
            else:
                _idle_until_done(comm)
            serial = comm.bcast(serial, root=0)
            plain, exact = serial["plain"], serial["exact"]
            t_serial, k_serial = _to_target(plain["evals"], cfg.target_accuracy)
            t_exact, k_exact = _to_target(exact["evals"], cfg.target_accuracy)
            it_serial, it_exact = (_seconds_per_iteration(r["evals"]) for r in (plain, exact))
            key = f"{scheme}_{depth}"
            for name, run in (("serial", plain), ("exact", exact)):
                history[f"{key}_{name}_train_accuracy"] = run["evals"]["train_accuracy"]
                history[f"{key}_{name}_seconds"] = run["evals"]["seconds"]
            progress(f"{scheme} depth {depth}: plain torch SGD {t_serial:.2f} s to {cfg.target_accuracy:.0%}, "
                     f"{1e3 * it_serial:.2f} ms/iteration; exact coupling (1 rank) {t_exact:.2f} s, "
                     f"{1e3 * it_exact:.2f} ms/iteration; test accuracy {plain['evals']['test_accuracy'][-1]:.3f}")
            for variant in cfg.variants:
                res = _run(comm, _run_config(cfg, scheme, depth, "regression",
                                             cfg.coarse_iterations if VARIANTS[variant] else 0))
                mse = res.history["regression_mse"].mean(axis=1)
                rel = res.history["regression_rel_error"]  # (iterations, boundaries)
                cosine = res.history.get("gradient_cosine", np.full((len(mse), comm.size), np.nan))
                sampled = cosine[~np.isnan(cosine).any(axis=1)]  # (diagnosed iterations, ranks)
                t_par, k_par = _to_target(res.evals, cfg.target_accuracy)
                it_par = _seconds_per_iteration(res.evals)
                compute_par = _compute_per_iteration(comm, res)
                vkey = f"{key}_{variant.replace('-', '_')}"
                history[f"{vkey}_regression_mse"] = mse
                history[f"{vkey}_regression_rel_error"] = rel
                history[f"{vkey}_gradient_cosine"] = cosine
                history[f"{vkey}_train_accuracy"] = res.evals["train_accuracy"]
                history[f"{vkey}_seconds"] = res.evals["seconds"]
                speedup = t_serial / t_par
                median_cos = np.median(sampled, axis=0) if len(sampled) else np.full(comm.size, np.nan)
                rows.append({"scheme": scheme, "depth": depth, "variant": variant, "serial_s": t_serial,
                             "exact_s": t_exact, "parallel_s": t_par, "serial_iterations": k_serial,
                             "exact_iterations": k_exact, "parallel_iterations": k_par,
                             "speedup": speedup, "efficiency": speedup / comm.size,
                             "speedup_vs_exact": t_exact / t_par,
                             "iteration_speedup": it_serial / it_par, "exact_cost": it_exact / it_serial,
                             "compute_speedup": plain["compute"] / compute_par,
                             "serial_test_acc": float(plain["evals"]["test_accuracy"][-1]),
                             "parallel_test_acc": float(res.evals["test_accuracy"][-1]),
                             "mse_first20": float(mse[:20].mean()), "mse_last20": float(mse[-20:].mean()),
                             "rel_first20": float(np.median(rel[:20])), "rel_last20": float(np.median(rel[-20:])),
                             "worse_than_zero": float((rel > 1).mean()),
                             "cosine_rank0": float(median_cos[0]), "cosine_worst_rank": float(median_cos.min()),
                             "uphill": float((sampled < 0).mean()) if len(sampled) else float("nan")})
                progress(f"{scheme} depth {depth} {variant}: {t_par:.2f} s to target, speed-up {speedup:.2f} "
                         f"against plain torch SGD, {1e3 * it_par:.2f} ms/iteration (compute CPU "
                         f"{1e3 * compute_par:.2f} ms on the slowest rank, "
                         f"plain torch {1e3 * plain['compute']:.2f} ms), "
                         f"test accuracy {rows[-1]['parallel_test_acc']:.3f}, co-state relative error (median) "
                         f"{rows[-1]['rel_first20']:.2f} (first 20) -> {rows[-1]['rel_last20']:.2f} (last 20), "
                         f"gradient cosine median {rows[-1]['cosine_rank0']:.2f} (rank 0), "
                         f"{rows[-1]['cosine_worst_rank']:.2f} (worst rank)")

    table = _markdown(cfg, rows, comm.size)
    write_result(comm, cfg.output, method="layer-parallel-bench", config=cfg.as_dict(), history=history,
                 data={name: np.array([r[name] for r in rows]) for name in rows[0]
                       if name not in ("scheme", "variant")},
                 attrs={"rows": [f"{r['scheme']}/{r['depth']}/{r['variant']}" for r in rows], "table": table})
    table_path = cfg.write_table(comm, table)
    if comm.rank == 0:
        _plot(cfg, rows, history, comm.size)
    progress("\n" + table + f"\nresults: {cfg.output}, table: {table_path}, plot: {cfg.plot}")
    return 0


def _markdown(cfg: Config, rows: list[dict], size: int) -> str:
    target = f"{cfg.target_accuracy:.0%}"
    head = (f"Baseline of every speed-up: a plain torch SGD loop on one core (whole network as one autograd "
            f"graph, `backward()`, `torch.optim.SGD`; same weights and mini-batches). The exact coupling on one "
            f"rank (Alg. 3) has the same iterates; its cost per iteration is given relative to the plain loop. "
            f"Co-state error: median of |P_hat - P| / |P| at the rank boundaries; gradient cosine: median over "
            f"every {cfg.diagnose_every}-th iteration of cos(applied, true gradient) per rank.\n\n"
            f"| scheme | depth | variant | iterations to {target}, plain / parallel "
            f"| plain torch SGD s to {target} | exact coupling (1 rank) s | layer-parallel s "
            f"| speed-up vs plain torch | efficiency ({size} ranks) | speed-up per iteration vs plain torch "
            f"| exact coupling cost per iteration / plain | compute (CPU time) speed-up per iteration vs plain torch "
            f"| test acc. plain | test acc. parallel | co-state rel. error, first 20 it. | last 20 it. "
            f"| iterations with rel. error > 1 | gradient cosine rank 0 | worst rank | cosine < 0 |\n|"
            + "---|" * 19 + "\n")

    def cell(v, fmt):
        return "not reached" if np.isnan(v) else format(v, fmt)

    lines = [f"| {r['scheme']} | {r['depth']} | {r['variant']} | "
             f"{cell(r['serial_iterations'], '.0f')} / {cell(r['parallel_iterations'], '.0f')} | "
             f"{cell(r['serial_s'], '.2f')} | {cell(r['exact_s'], '.2f')} | {cell(r['parallel_s'], '.2f')} | "
             f"{cell(r['speedup'], '.2f')} | {cell(r['efficiency'], '.0%')} | "
             f"{r['iteration_speedup']:.2f} | {r['exact_cost']:.2f} | {r['compute_speedup']:.2f} | "
             f"{r['serial_test_acc']:.3f} | {r['parallel_test_acc']:.3f} | "
             f"{r['rel_first20']:.2f} | {r['rel_last20']:.2f} | {r['worse_than_zero']:.0%} | "
             f"{cell(r['cosine_rank0'], '.2f')} | {cell(r['cosine_worst_rank'], '.2f')} | "
             f"{cell(r['uphill'], '.0%')} |" for r in rows]
    return head + "\n".join(lines) + "\n"


def _plot(cfg: Config, rows: list[dict], history: dict, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for scheme in cfg.schemes:
        for variant in cfg.variants:
            sel = [r for r in rows if r["scheme"] == scheme and r["variant"] == variant]
            ax1.plot([r["depth"] for r in sel], [r["speedup"] for r in sel], "o-", label=f"{variant} {scheme}")
            deepest = max(cfg.depths)
            mse = history[f"{scheme}_{deepest}_{variant.replace('-', '_')}_regression_mse"]
            ax2.semilogy(np.arange(1, len(mse) + 1), mse, label=f"{variant} {scheme} ({deepest} layers)")
    ax1.axhline(1.0, color="grey", lw=0.8)
    ax1.axhline(size, color="grey", lw=0.8, ls="--", label=f"ideal ({size} ranks)")
    if any(np.isfinite(r["speedup"]) for r in rows):
        ax1.set_xscale("log", base=2)
    else:
        ax1.text(0.5, 0.5, "target accuracy not reached", transform=ax1.transAxes, ha="center")
    ax1.set_xlabel("layers (fine model)")
    ax1.set_ylabel(f"speed-up to {cfg.target_accuracy:.0%} train accuracy")
    ax1.set_title(f"{cfg.problem}: layer-parallel ({size} ranks) vs plain torch SGD")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("regression MSE |P_hat - P|^2 (per sample)")
    ax2.set_title("co-state regression error at the rank boundary")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(cfg.plot)), exist_ok=True)
    fig.savefig(cfg.plot, dpi=110)
    plt.close(fig)
