"""petsc4py set-up and the PETSc options database, shared by PAN and the space-time propagators.

Kept apart from both so that neither imports the other (algorithms, propagators and problems
all sit above it).
"""
from __future__ import annotations

import shlex
import sys


def petsc(comm):
    """petsc4py's PETSc module, initialised on ``comm`` if nothing initialised it before."""
    if "petsc4py.PETSc" not in sys.modules:
        import petsc4py

        petsc4py.init(comm=comm)
    from petsc4py import PETSc

    return PETSc


def is_number(token: str) -> bool:
    """True for a token such as ``-1e-3``: an option's value, not an option name."""
    try:
        float(token)
        return True
    except ValueError:
        return False


def option_names(options: str) -> list[str]:
    """The option names (without '-') in a ``-key value`` string; raises ValueError if unparsable."""
    return [token.lstrip("-") for token in shlex.split(options or "")
            if token.startswith("-") and not is_number(token)]
