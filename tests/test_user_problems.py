"""Users' problems through the one door (problems/contract.py): the examples of docs/examples/ run
under mpirun on 1 and 2 ranks for every method, a result file's config repeats its run, built-ins
take constructor arguments, installed packages add problems by entry point, data files are read
in every documented form, and every kind of bad problem or data file ends all ranks with exit 2
and one ``error:`` line, within a timeout."""
import json
import sys
import textwrap

import h5py
import numpy as np
import pytest

from conftest import ROOT, run_cli
from paraflow_hpc.config import ConfigError, build_config

EXAMPLES = ROOT / "docs" / "examples"
PENDULUM = str(EXAMPLES / "pendulum.py")
MLP = str(EXAMPLES / "tiny_mlp.py") + ":TinyMLP"
MOONS = str(EXAMPLES / "moons.npz")
RINGS = str(EXAMPLES / "rings.csv")


def read(path):
    with h5py.File(path, "r") as f:
        return dict(f.attrs), dict(f["config"].attrs), {k: f["data"][k][()] for k in f["data"]}


# --- the examples, run as docs/getting_started.md shows -----------------------------------------
@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [1, 2])
def test_user_ode_parareal_equals_serial_fine_and_repeats_from_the_file(tmp_path, nranks):
    out = tmp_path / "p.h5"
    run_cli(nranks, ["run", "parareal", "--problem", f"{PENDULUM}:Pendulum", "--problem-args",
                     '{"damping": 0.3, "theta0": 1.5}', "--intervals", "8", "--coarse-steps", "4",
                     "--fine-steps", "40", "--tol", "0", "--quiet", "--output", out], timeout=180)
    attrs, config, data = read(out)
    assert attrs["iterations"] == 8  # k = N with tol 0: Parareal is the serial fine solution
    assert json.loads(config["problem_args"]) == {"damping": 0.3, "theta0": 1.5}
    assert np.array_equal(data["y0"], [1.5, 0.0])
    with h5py.File(out, "r") as f:
        errors = f["history"]["error"][()]
        first = f["solution"]["boundaries"][()]
    assert errors[-1] < 1e-12
    # The file alone repeats the run: its recorded problem and arguments give the same boundaries.
    again = tmp_path / "again.h5"
    run_cli(nranks, ["run", "parareal", "--problem", config["problem"], "--problem-args", config["problem_args"],
                     "--intervals", "8", "--coarse-steps", "4", "--fine-steps", "40", "--tol", "0", "--quiet",
                     "--output", again], timeout=180)
    with h5py.File(again, "r") as f:
        assert np.array_equal(f["solution"]["boundaries"][()], first)


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [1, 2])
def test_user_ode_pan(tmp_path, nranks):
    out = tmp_path / "pan.h5"
    run_cli(nranks, ["run", "pan", "--problem", f"{PENDULUM}:PendulumBatched", "--problem-args", "tf=2",
                     "--n-coeffs", "20", "--rtol", "1e-8", "--atol", "1e-8", "--quiet", "--output", out], timeout=240)
    attrs, config, data = read(out)
    assert attrs["error"] < 10 * 1e-8  # dense-grid error against DOP853 at 1e-13, within 10 x the tolerance
    assert data["ts"][0] == 0.0 and data["ts"][-1] == 2.0  # the accepted subintervals cover [t0, tf]


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [1, 2])
def test_user_model_paso_reproduces_torch_optim(tmp_path, nranks):
    out = tmp_path / "paso.h5"
    run_cli(nranks, ["run", "paso", "--problem", MLP, "--data", MOONS, "--optimizer", "adam", "--lr", "0.01",
                     "--steps", "40", "--window", "4", "--batch", "16", "--tol-adapt", "fixed", "--tol", "1e-12",
                     "--quiet", "--output", out], timeout=240)
    attrs, config, _ = read(out)
    assert attrs["final_max_abs_diff"] < 1e-5 and attrs["iterations"] < 40  # torch.optim's w_T, in fewer steps
    assert attrs["paso_test_accuracy"] > 0.7  # moons.npz's own test split
    assert config["data"] == MOONS


def test_user_model_paso_on_regression_data_reports_no_accuracy(tmp_path):
    """Regression targets (n, k) floats: the model is fitted by least squares and the summary names
    no test accuracy (NaN in the file: the problem has none), never 'test accuracy nan'."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3))
    np.savez(tmp_path / "reg.npz", x=x, y=np.stack([np.sin(x[:, 0]), x[:, 1] * x[:, 2]], axis=1))
    out = tmp_path / "reg.h5"
    proc = run_cli(1, ["run", "paso", "--problem", MLP, "--data", str(tmp_path / "reg.npz"), "--optimizer", "adam",
                       "--lr", "0.01", "--steps", "12", "--window", "4", "--batch", "8", "--output", out],
                   timeout=240)
    attrs, _, _ = read(out)
    assert np.isnan(attrs["paso_test_accuracy"]) and attrs["paso_train_loss"] < attrs["initial_train_loss"]
    assert "done: K = " in proc.stdout and "accuracy" not in proc.stdout, proc.stdout


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [1, 2])
def test_user_model_paraflow_lowers_the_loss(tmp_path, nranks):
    out = tmp_path / "pf.h5"
    run_cli(nranks, ["run", "paraflow", "--problem", MLP, "--problem-args", "hidden=8", "--data", MOONS,
                     "--eta", "0.1", "--budget", "8000", "--quiet", "--output", out], timeout=240)
    attrs, config, data = read(out)
    with h5py.File(out, "r") as f:
        loss = f["history"]["loss"][()]
    assert attrs["n_params"] == 2 * 8 + 8 + 8 * 2 + 2 and attrs["n_samples"] == 200
    assert attrs["final_loss"] < loss[0]


@pytest.mark.mpi
def test_user_model_paraflows_against_gd(tmp_path):
    out = tmp_path / "pfs.h5"
    run_cli(2, ["run", "paraflows", "--problem", MLP, "--data", MOONS, "--eta", "0.1", "--budget", "8000",
                "--quiet", "--output", out], timeout=240)
    attrs, _, _ = read(out)
    assert np.isfinite(attrs["ratio"]) and attrs["budget_used"] <= 8000


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [1, 2])
def test_user_data_layer_parallel(tmp_path, nranks):
    out = tmp_path / "lp.h5"
    run_cli(nranks, ["run", "layer-parallel", "--data", RINGS, "--depth", "8", "--iterations", "60", "--quiet",
                     "--output", out], timeout=240)
    attrs, config, data = read(out)
    assert attrs["final_test_accuracy"] > 0.8  # the 20% held out of rings.csv's 300 rows
    assert data["open_W"].shape == (4, 2)


@pytest.mark.mpi
def test_user_problem_in_a_benchmark(tmp_path):
    out = tmp_path / "bench.h5"
    run_cli(2, ["bench", "parareal", "--problem", f"{PENDULUM}:Pendulum", "--case", "fine_steps=200",
                "--quiet", "--output", out], timeout=180)
    _, config, data = read(out)
    assert data["problem"][0].decode().endswith("pendulum.py:Pendulum") and data["final_error"][0] < 1e-6
    assert (tmp_path / "bench.md").read_text().count("pendulum.py:Pendulum") == 1


@pytest.mark.mpi
def test_user_ivp_in_the_pan_benchmark(tmp_path):
    out = tmp_path / "bench.h5"
    run_cli(2, ["bench", "pan", "--problem", f"{PENDULUM}:PendulumBatched", "--problem-args", "tf=2",
                "--tols", "1e-8", "--plot", "false", "--quiet", "--output", out], timeout=240)
    text = (tmp_path / "bench.md").read_text()
    assert "pendulum.py:PendulumBatched" in text
    pan = [line for line in text.splitlines() if line.startswith("| PAN")]
    assert len(pan) == 1, text
    assert float(pan[0].split("|")[3]) < 10 * 1e-8  # PAN's dense error within 10 x its tolerance


@pytest.mark.mpi
@pytest.mark.parametrize("bench, options, column", [
    ("paso", ["--problem", MLP, "--data", MOONS, "--optimizers", "sgd", "--steps", "20", "--sweep-windows", "",
              "--ackley-steps", "0", "--rules-problem", ""], "tiny_mlp.py:TinyMLP | sgd"),
    ("paraflows", ["--problem", MLP, "--data", MOONS, "--etas", "0.1", "--budgets", "2000", "--n-fs", "10",
                   "--race-eta", "0.1", "--race-budget", "2000"], "| full | 0.1 | 2e+03 |"),
    ("layer-parallel", ["--data", RINGS, "--depths", "4", "--schemes", "verlet", "--variants", "single-level",
                        "--iterations", "20"], "| verlet | 4 | single-level |"),
])
def test_user_problem_in_every_training_benchmark(tmp_path, bench, options, column):
    out = tmp_path / "bench.h5"
    run_cli(2, ["bench", bench, *options, "--quiet", "--output", out], timeout=300)
    _, config, _ = read(out)
    assert column in (tmp_path / "bench.md").read_text()
    assert config["data"] in (MOONS, RINGS)


# --- built-ins through the same door --------------------------------------------------------------
def test_builtin_parameters_are_settable():
    from paraflow_hpc.runners import parareal

    cfg = build_config(parareal.Config, None, {"problem": "brusselator", "problem_args": "a=1.5,b=3.5,u0=[1,2]",
                                               "intervals": "4"}, 1)
    from paraflow_hpc.runners.common import configured_problem

    problem = configured_problem(cfg, "ode")
    assert (problem.a, problem.b) == (1.5, 3.5) and np.array_equal(problem.y0(), [1.0, 2.0])


def test_toml_problem_table_and_command_line_arguments(tmp_path):
    from paraflow_hpc.runners import parareal

    toml = tmp_path / "run.toml"
    toml.write_text('intervals = 4\n[problem]\nname = "lorenz"\nrho = 20.0\nsigma = 9.0\n')
    cfg = build_config(parareal.Config, str(toml), {"problem_args": "rho=21"}, 1)
    assert cfg.problem == "lorenz" and cfg.problem_args == {"rho": 21, "sigma": 9.0}
    assert cfg.as_dict()["problem_args"] == {"rho": 21, "sigma": 9.0}


def test_entry_point_adds_a_problem(tmp_path, monkeypatch):
    """An installed package's entry point registers through the same function as the built-ins."""
    from paraflow_hpc.problems import contract

    (tmp_path / "myprobs.py").write_text(textwrap.dedent("""
        import numpy as np
        class Decay:
            t0, tf = 0.0, 1.0
            def __init__(self, rate=1.0):
                self.rate = rate
            def y0(self):
                return np.ones(1)
            def f(self, t, y):
                return -self.rate * y
        def register(add):
            add("ode", "decay", Decay)
            add("ode", "decay-lazy", "myprobs:Decay")
    """))
    dist = tmp_path / "myprobs-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myprobs\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[paraflow_hpc.problems]\nmyprobs = myprobs:register\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(contract, "_REGISTRY", None)
    problem = contract.load_problem("decay", "ode", {"rate": 2.0})
    assert problem.f(0.0, np.ones(1))[0] == -2.0
    assert contract.load_problem("decay-lazy", "ode").tf == 1.0
    assert "lorenz" in contract.builtin_names("ode")
    monkeypatch.setattr(contract, "_REGISTRY", None)


def test_a_new_method_defines_its_kind(monkeypatch):
    """define_kind: a new method's problems (e.g. on a mesh) go through the same door and probe."""
    from typing import Protocol

    from paraflow_hpc.problems import contract

    class Grid(Protocol):
        n: int

    def check(problem, spec):
        if problem.n < 2:
            contract._fail(spec, f"n = {problem.n}", "use n >= 2")

    class Heat:
        def __init__(self, n=8):
            self.n = n

    saved = {name: dict(getattr(contract, name)) for name in ("METHODS", "PROTOCOLS", "CONTEXT", "PROBES")}
    monkeypatch.setattr(contract, "KINDS", contract.KINDS)
    monkeypatch.setattr(contract, "_REGISTRY", None)
    try:
        contract.define_kind("mesh", "a mesh method", Grid, probe=check)
        contract.register("mesh", "heat", Heat)
        assert contract.load_problem("heat", "mesh", {"n": 4}).n == 4
        with pytest.raises(ConfigError, match="problem 'heat': n = 1; use n >= 2"):
            contract.load_problem("heat", "mesh", {"n": 1})
    finally:
        for name, table in saved.items():
            getattr(contract, name).clear()
            getattr(contract, name).update(table)
        monkeypatch.setattr(contract, "_REGISTRY", None)


def test_pde_problems_are_classes_through_the_same_door():
    """Space-time's built-ins resolve through the registry as classes (the runner constructs them);
    --problem-args are checked against their parameters before any rank constructs one."""
    from paraflow_hpc.problems import contract
    from paraflow_hpc.problems.pde import AllenCahn2D, Heat2D

    assert contract.builtin_names("pde") == ["allen-cahn", "heat2d"]
    assert contract.load_class("heat2d", "pde", {"nu": 2}) is Heat2D
    assert contract.load_class("allen-cahn", "pde", {"eps": 0.05}) is AllenCahn2D
    assert AllenCahn2D.parameters() == {"eps": 0.04, "nu": 1.0, "radius0": 0.25, "t0": 0.0, "tf": 0.01}
    with pytest.raises(ConfigError, match="problem 'allen-cahn': AllenCahn2D parameter eps = True: must be a finite"):
        contract.load_class("allen-cahn", "pde", {"eps": True})
    with pytest.raises(ValueError, match="classes that space-time Parareal constructs itself: use load_class"):
        contract.load_problem("heat2d", "pde")


# --- data files ---------------------------------------------------------------------------------
def test_data_files_in_every_format_give_the_same_set(tmp_path):
    from paraflow_hpc.io.datafile import read_data

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 3)), rng.integers(0, 3, 20)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"], f["y"] = x, y
    np.savetxt(tmp_path / "d.csv", np.c_[x, y], delimiter=",", header="a,b,c,label", comments="")
    np.savetxt(tmp_path / "n.csv", np.c_[x, y], delimiter=",")
    sets = [read_data(str(tmp_path / name)) for name in ("d.npz", "d.h5", "d.csv", "n.csv")]
    for data in sets:
        assert data.n_classes == 3 and data.x_test.shape == (0, 3)
        assert np.allclose(data.x_train, x) and np.array_equal(data.y_train, y)
    np.savez(tmp_path / "r.npz", x=x[:, 0], y=x[:, 1:], x_test=x[:2, 0], y_test=x[:2, 1:])
    reg = read_data(str(tmp_path / "r.npz"))
    assert reg.n_classes == 0 and reg.out_dim == 2 and reg.x_train.shape == (20, 1) and len(reg.x_test) == 2


# --- bad problems and data: exit 2 on every rank, one message ----------------------------------------
BAD_FILES = {
    "nof.py": "import numpy as np\nclass P:\n    t0, tf = 0.0, 1.0\n    def y0(self):\n        return np.ones(2)\n",
    "shape.py": "import numpy as np\nclass P:\n    t0, tf = 0.0, 1.0\n    def y0(self):\n        return np.ones(2)\n"
                "    def f(self, t, y):\n        return np.ones(3)\n",
    "nan.py": "import numpy as np\nclass P:\n    t0, tf = 0.0, 1.0\n    def y0(self):\n        return np.ones(2)\n"
              "    def f(self, t, y):\n        return y / 0.0 * 0.0\n",
    "raises.py": "raise RuntimeError('broken on purpose')\n",
    "numpyf.py": "import numpy as np\nclass P:\n    t0, tf = 0.0, 1.0\n    y0 = np.ones(2)\n"
                 "    def f(self, t, Y):\n        return np.asarray(Y)\n",
    "impure.py": textwrap.dedent("""
        import torch
        from torch import nn
        from paraflow_hpc.problems.models import TrainingProblem
        class P(TrainingProblem):
            def __init__(self, seed, batch, device="cpu"):
                super().__init__(nn.Linear(2, 2), seed, batch, device)
                self.calls = 0
            def batch(self, step):  # not a pure function of (seed, step)
                self.calls += 1
                return torch.full((2, 2), float(self.calls), dtype=torch.float64), torch.zeros(2, dtype=torch.int64)
    """),
}


def _bad_data(tmp_path) -> None:
    (tmp_path / "text.csv").write_text("a,b,label\n1,2,0\n3,x,1\n")
    np.savez(tmp_path / "noy.npz", x=np.ones((4, 2)))
    np.savez(tmp_path / "short.npz", x=np.ones((4, 2)), y=np.array([0, 1, 0]))
    np.savez(tmp_path / "nan.npz", x=np.array([[1.0, np.nan], [0.0, 1.0]]), y=np.array([0, 1]))
    (tmp_path / "notdata.h5").write_text("not HDF5")
    np.savez(tmp_path / "floaty.npz", x=np.eye(6), y=np.linspace(0.0, 1.0, 6))


CASES = [  # (method, options, message)
    ("parareal", ["--problem", "no_such_module_xyz:P"], "module 'no_such_module_xyz' does not import"),
    ("parareal", ["--problem", "missing.py:P"], "the file 'missing.py' does not exist"),
    ("parareal", ["--problem", f"{PENDULUM}:Nope"], "has no 'Nope'; it defines: "),
    ("parareal", ["--problem", "nof.py:P"], "lacks f of the Parareal/MGRIT contract"),
    ("parareal", ["--problem", "shape.py:P"], "has shape (3,), expected (2,)"),
    ("parareal", ["--problem", "nan.py:P"], "is not finite"),
    ("parareal", ["--problem", "raises.py:P"], "running 'raises.py' failed: RuntimeError: broken on purpose"),
    ("parareal", ["--problem", f"{PENDULUM}:Pendulum", "--problem-args", "mass=2"], "do not fit Pendulum("),
    ("parareal", ["--problem", "lorenz", "--problem-args", "{rho: 1}"], "is not valid JSON"),
    ("parareal", ["--problem", "kepler"], "problem = 'kepler' is not allowed; choose one of"),
    ("pan", ["--problem", "numpyf.py:P"], "f(t, Y) returned ndarray; return a torch tensor (PAN differentiates f "
                                          "with torch.func); PAN calls f(t, Y) with t (m,) and Y (m, L)"),
    ("paso", ["--problem", "impure.py:P"], "batch(0) differs between two calls"),
    ("paso", ["--problem", MLP], "is a torch model: give the data"),
    ("paso", ["--problem", "mlp", "--data", MOONS], "brings its own data"),
    ("paraflow", ["--problem", MLP, "--data", "nowhere.npz"], "data file 'nowhere.npz': does not exist"),
    ("paraflow", ["--problem", MLP, "--data", "noy.npz"], "data file 'noy.npz': has no 'y'"),
    ("paraflow", ["--problem", MLP, "--data", "short.npz"], "'y' has shape (3,) for 4 samples"),
    ("paso", ["--problem", MLP, "--data", "nan.npz"], "'x' holds 1 non-finite values"),
    ("layer-parallel", ["--data", "text.csv"], "holds a cell that is not a number"),
    ("layer-parallel", ["--data", "notdata.h5"], "cannot be read as HDF5"),
    ("layer-parallel", ["--data", "floaty.npz"], "data file 'floaty.npz': y holds float targets (1 per sample: regression)"),
]


@pytest.mark.mpi
@pytest.mark.parametrize("method, options, message", CASES, ids=[c[2][:40] for c in CASES])
def test_bad_problem_ends_every_rank_with_one_message(tmp_path, method, options, message):
    for name, text in BAD_FILES.items():
        (tmp_path / name).write_text(text)
    _bad_data(tmp_path)
    proc = run_cli(2, ["run", method, *options, "--output", tmp_path / "x.h5"], check=False, timeout=120,
                   cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]  # agreed, printed once (rank 0)
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.h5").exists()


def test_problem_args_parsing():
    from paraflow_hpc.config import parse_mapping

    assert parse_mapping("p", 'a=1,u0=[1.5,3],lam="-1+2j",name=x') == {"a": 1, "u0": [1.5, 3], "lam": "-1+2j",
                                                                       "name": "x"}
    assert parse_mapping("p", '{"a": {"b": 1}}') == {"a": {"b": 1}}
    with pytest.raises(ConfigError, match="is not key=value"):
        parse_mapping("p", "a=1,b")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
