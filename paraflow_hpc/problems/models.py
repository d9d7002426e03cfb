"""Small seeded training problems for PASO: data, model, loss, and batched (vmap'ed) gradients.

Every problem is a pure function of its seed: the initial weights come from ``seed``,
and step t's mini-batch ζ_t from ``(seed, t)`` alone, so any rank can draw the batch
of any step without communication and the sequential reference sees exactly the same
batches. Everything runs in float64. No downloads: the digits come bundled with
scikit-learn, the character corpus is Python's own standard-library source. Ackley's
function (no data) is the deterministic test case of the PASO review response.
"""
from __future__ import annotations

import math
import os
import string
import sysconfig

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

DTYPE = torch.float64
SPLIT_SEED = 20240601  # the train/test split is fixed, independent of the run's seed


def load_digits_split():
    """scikit-learn's bundled 8x8 digits, pixels scaled to [0, 1], a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data.astype(np.float64) / 16.0
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_train = int(0.8 * len(y))
    return (x[order[:n_train]], y[order[:n_train]]), (x[order[n_train:]], y[order[n_train:]])


CORPUS_FILES = ("textwrap.py", "string.py", "bisect.py", "heapq.py", "fnmatch.py", "shlex.py")
VOCAB = string.printable[:95] + "\n"  # fixed vocabulary: printable ASCII and newline; others map to '?'


def load_stdlib_corpus(n_chars: int) -> np.ndarray:
    """Character ids of Python's own library sources (offline, the same on every rank)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    text = ""
    for name in CORPUS_FILES:
        path = os.path.join(stdlib, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as fh:
                text += fh.read()
        if len(text) >= n_chars:
            break
    if len(text) < 1000:
        raise RuntimeError(f"standard-library sources not found under {stdlib}: cannot build the corpus")
    index = {c: i for i, c in enumerate(VOCAB)}
    unknown = index["?"]
    return np.array([index.get(c, unknown) for c in text[:n_chars]], dtype=np.int64)


class CausalSelfAttention(nn.Module):
    """Plain-op attention (no fused kernels), so torch.func.vmap over weights works."""

    def __init__(self, width: int, heads: int, context: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.register_buffer("mask", torch.triu(torch.ones(context, context, dtype=torch.bool), 1))

    def forward(self, x):
        b, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=-1)
        shape = (b, length, self.heads, width // self.heads)
        q, k, v = (z.reshape(shape).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(width // self.heads)
        scores = scores.masked_fill(self.mask[:length, :length], float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, length, width))


class TinyDecoderLM(nn.Module):
    """One pre-norm decoder block: token + position embeddings, causal attention, MLP, head."""

    def __init__(self, vocab: int, context: int, width: int = 32, heads: int = 2):
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Parameter(0.02 * torch.randn(context, width))
        self.norm1 = nn.LayerNorm(width)
        self.attention = CausalSelfAttention(width, heads, context)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.norm_out = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids):
        h = self.tokens(ids) + self.positions[: ids.shape[-1]]
        h = h + self.attention(self.norm1(h))
        h = h + self.mlp(self.norm2(h))
        return self.head(self.norm_out(h))


def _classifier(kind: str) -> nn.Module:
    if kind == "logreg":
        return nn.Linear(64, 10)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    if kind == "cnn":
        return nn.Sequential(nn.Unflatten(-1, (1, 8, 8)), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(-3), nn.Linear(8 * 4 * 4, 10))
    raise ValueError(f"unknown classifier {kind!r}")


class TrainingProblem:
    """Model + data + mean cross-entropy loss; weights handled as one flat float64 vector."""

    description = ""

    def __init__(self, model: nn.Module, seed: int, batch: int, device):
        self.device = torch.device(device)
        self.model = model.to(device=self.device, dtype=DTYPE)
        self.seed, self.batch_size = seed, batch
        self.names = [name for name, _ in self.model.named_parameters()]
        self.shapes = [p.shape for _, p in self.model.named_parameters()]
        self.sizes = [p.numel() for _, p in self.model.named_parameters()]
        self.n_params = sum(self.sizes)
        self._grad = grad_and_value(self._loss_of_flat)

    # --- weights as one flat vector -------------------------------------------------
    def initial_weights(self) -> np.ndarray:
        return self.flatten(self.model.parameters())

    def flatten(self, tensors) -> np.ndarray:
        return torch.cat([t.detach().reshape(-1) for t in tensors]).cpu().numpy().astype(np.float64)

    def unflatten(self, flat: torch.Tensor) -> dict:
        parts = torch.split(flat, self.sizes)
        return {name: part.view(shape) for name, part, shape in zip(self.names, parts, self.shapes)}

    def _loss_of_flat(self, flat, x, y):
        return self.loss(functional_call(self.model, self.unflatten(flat), (x,)), y)

    # --- data ---------------------------------------------------------------------------
    def step_rng(self, step: int) -> np.random.Generator:
        """ζ_t depends on (seed, t) only: no iterator state anywhere."""
        return np.random.default_rng([self.seed, step])

    def batch(self, step: int):
        raise NotImplementedError

    def loss(self, logits, y):
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    # --- gradients ------------------------------------------------------------------------
    def window_gradients(self, weights: np.ndarray, steps, chunk: int = 0):
        """Gradients and losses of the mini-batch losses L(ŵ_τ, ζ_τ) for several steps τ at once.

        ``weights``: (s, n) guesses; one vmap'ed functional_call evaluates all s positions
        (``chunk`` > 0 bounds how many are held in memory at once).
        """
        w = torch.as_tensor(weights, dtype=DTYPE, device=self.device)
        batches = [self.batch(step) for step in steps]
        x = torch.stack([b[0] for b in batches])
        y = torch.stack([b[1] for b in batches])
        grads, losses = vmap(self._grad, chunk_size=chunk or None)(w, x, y)
        return grads.cpu().numpy(), losses.cpu().numpy()

    def evaluate(self, flat: np.ndarray) -> dict:
        """Full training-set loss and test accuracy at the weights ``flat``."""
        with torch.no_grad():
            params = self.unflatten(torch.as_tensor(flat, dtype=DTYPE, device=self.device))
            x, y = self.train_set
            train_loss = float(self.loss(functional_call(self.model, params, (x,)), y))
            x, y = self.test_set
            logits = functional_call(self.model, params, (x,))
            accuracy = float((logits.argmax(-1) == y).double().mean())
        return {"train_loss": train_loss, "test_accuracy": accuracy}


class DigitsProblem(TrainingProblem):
    def __init__(self, kind: str, seed: int, batch: int, device="cpu"):
        torch.manual_seed(seed)
        super().__init__(_classifier(kind), seed, batch, device)
        (xtr, ytr), (xte, yte) = load_digits_split()
        if batch > len(ytr):
            raise ValueError(f"batch = {batch} exceeds the {len(ytr)} training images")
        as_t = lambda a: torch.as_tensor(a, device=self.device)
        self.train_set = (as_t(xtr).to(DTYPE), as_t(ytr))
        self.test_set = (as_t(xte).to(DTYPE), as_t(yte))
        self.description = f"{kind} on digits ({len(ytr)} train / {len(yte)} test), {self.n_params} weights"

    def batch(self, step: int):
        idx = torch.as_tensor(self.step_rng(step).choice(len(self.train_set[1]), self.batch_size, replace=False),
                              device=self.device)
        return self.train_set[0][idx], self.train_set[1][idx]


class CharLMProblem(TrainingProblem):
    CONTEXT, CORPUS_CHARS, TEST_WINDOWS = 32, 40000, 64

    def __init__(self, seed: int, batch: int, device="cpu"):
        torch.manual_seed(seed)
        super().__init__(TinyDecoderLM(len(VOCAB), self.CONTEXT), seed, batch, device)
        ids = torch.as_tensor(load_stdlib_corpus(self.CORPUS_CHARS), device=self.device)
        cut = int(0.9 * len(ids))
        self.train_ids, test_ids = ids[:cut], ids[cut:]
        self.train_set = self._windows(self.train_ids, np.linspace(0, cut - self.CONTEXT - 1, 256).astype(int))
        starts = np.arange(self.TEST_WINDOWS) * self.CONTEXT
        self.test_set = self._windows(test_ids, starts[starts + self.CONTEXT < len(test_ids)])
        self.description = (f"decoder-only transformer LM on {len(ids)} characters of stdlib source, "
                            f"context {self.CONTEXT}, {self.n_params} weights")

    def _windows(self, ids, starts):
        idx = torch.as_tensor(starts, device=self.device)[:, None] + torch.arange(self.CONTEXT + 1, device=self.device)
        chunk = ids[idx]
        return chunk[:, :-1], chunk[:, 1:]

    def batch(self, step: int):
        starts = self.step_rng(step).integers(0, len(self.train_ids) - self.CONTEXT - 1, self.batch_size)
        return self._windows(self.train_ids, starts)


class AckleyPoint(nn.Module):
    """The weights are the point w itself; the input is ignored."""

    def __init__(self, w0: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w0)

    def forward(self, x):
        return self.w


class AckleyProblem(TrainingProblem):
    """Ackley's function f(w) = −20 exp(−0.2 √(mean w²)) − exp(mean cos 2πw) + 20 + e, minimum
    f(0) = 0, deterministic (no data: every "batch" is the same dummy input, ignored), so the
    batch loss is f itself. The PASO review-response case: d = 10⁴, Adam, lr 1e-3, T = 1000.
    w_0 is uniform on the usual domain [−32.768, 32.768]^d, drawn from the seed."""

    DOMAIN = 32.768

    def __init__(self, seed: int, dim: int = 10_000, device="cpu"):
        w0 = np.random.default_rng(seed).uniform(-self.DOMAIN, self.DOMAIN, dim)
        super().__init__(AckleyPoint(torch.as_tensor(w0)), seed, 1, device)
        self.dummy = torch.zeros(1, dtype=DTYPE, device=self.device)
        self.description = f"Ackley function, d = {dim} (no data)"

    def batch(self, step: int):
        return self.dummy, self.dummy

    def loss(self, w, y):
        mean_sq = torch.mean(w * w)
        return (-20.0 * torch.exp(-0.2 * torch.sqrt(mean_sq)) - torch.exp(torch.mean(torch.cos(2 * math.pi * w)))
                + 20.0 + math.e)

    def evaluate(self, flat: np.ndarray) -> dict:
        """f(w) as the "train loss"; there is no test set (accuracy NaN)."""
        with torch.no_grad():
            f = float(self.loss(torch.as_tensor(flat, dtype=DTYPE, device=self.device), None))
        return {"train_loss": f, "test_accuracy": float("nan")}


PROBLEMS = ("logreg", "mlp", "cnn", "lm", "ackley")


def make_problem(name: str, seed: int, batch: int, device="cpu") -> TrainingProblem:
    if name == "lm":
        return CharLMProblem(seed, batch, device)
    if name == "ackley":
        return AckleyProblem(seed, device=device)
    if name in PROBLEMS:
        return DigitsProblem(name, seed, batch, device)
    raise ValueError(f"unknown problem {name!r}; choose one of: {', '.join(PROBLEMS)}")


class ModelTrainingProblem(TrainingProblem):
    """A user's torch model on a data set (``--data``) as a PASO problem.

    Batch t: ``batch`` training samples without replacement from np.random.default_rng([seed, t]).
    Loss: mean cross-entropy for integer labels, mean ½‖y − model(x)‖² for float targets (n, k).
    Test accuracy on x_test/y_test (NaN without a test split or for float targets). ``make(seed)``
    builds the model under torch.manual_seed(seed). Built by
    :func:`paraflow_hpc.problems.contract.load_problem`.
    """

    def __init__(self, make, data, name: str, seed: int, batch: int, device="cpu"):
        super().__init__(make(seed), seed, batch, device)
        self.name = name
        self.classify = data.n_classes > 0
        n = len(data.y_train)
        if batch > n:
            from ..config import ConfigError

            raise ConfigError(f"batch = {batch} exceeds the {n} training samples of {data.name}; use --batch <= {n}")
        self.train_set = (self._x(data.x_train), self._y(data.y_train))
        self.test_set = None
        if data.x_test is not None and len(data.x_test):
            self.test_set = (self._x(data.x_test), self._y(data.y_test))
        self.description = (f"{name} on {data.name} ({n} train / "
                            f"{0 if self.test_set is None else len(self.test_set[1])} test), {self.n_params} weights")

    def _x(self, a):
        return torch.as_tensor(a, dtype=DTYPE, device=self.device)

    def _y(self, a):
        return torch.as_tensor(a, dtype=torch.int64 if self.classify else DTYPE, device=self.device)

    def batch(self, step: int):
        idx = torch.as_tensor(self.step_rng(step).choice(len(self.train_set[1]), self.batch_size, replace=False),
                              device=self.device)
        return self.train_set[0][idx], self.train_set[1][idx]

    def loss(self, out, y):
        if self.classify:
            return nn.functional.cross_entropy(out, y)
        r = y - out
        return 0.5 * (r * r).sum(-1).mean()

    def evaluate(self, flat: np.ndarray) -> dict:
        with torch.no_grad():
            params = self.unflatten(torch.as_tensor(flat, dtype=DTYPE, device=self.device))
            x, y = self.train_set
            train_loss = float(self.loss(functional_call(self.model, params, (x,)), y))
            accuracy = float("nan")
            if self.test_set is not None and self.classify:
                x, y = self.test_set
                accuracy = float((functional_call(self.model, params, (x,)).argmax(-1) == y).double().mean())
        return {"train_loss": train_loss, "test_accuracy": accuracy}
