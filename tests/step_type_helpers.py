"""A step type added from outside the package, as a plugin would add one, for tests that need a new
optimizer end to end: no source file of ``core/`` is edited.

The configuration, the document and the estimate read the declarations (``core.config.steps``) and
the table of optimizers once, when they are imported; a run reads them again in its worker process.
So the new row goes in before anything imports them, in every interpreter: ``plugin_env`` writes a
``sitecustomize`` module (Python runs it at the start of every interpreter that has it on its path,
the run's worker included) that imports the table, then adds the declaration of the plugin module's
``DECLARATION`` to ``STEP_TYPES`` and its behaviour (``build``, ``estimate``) to ``OPTIMIZERS``.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SITECUSTOMIZE = '''
"""Adds the step type of {module}.py to the declarations and the table of optimizers (tests only)."""
import sys

if "core.config.schema" in sys.modules:  # too late: the configuration read the declarations already
    raise RuntimeError("the test step type must be added before core.config.schema is imported")

from core.config.steps import STEP_TYPES
from core.optimizers.entry import Optimizer
from core.optimizers.table import OPTIMIZERS  # imported first: its own check sees the declared types

import {module} as plugin

STEP_TYPES[plugin.DECLARATION.key] = plugin.DECLARATION
OPTIMIZERS[plugin.DECLARATION.key] = Optimizer(plugin.DECLARATION, build=plugin.build, estimate=plugin.estimate)
'''


def plugin_env(folder: Path, module: str, source: str) -> dict[str, str]:
    """The environment of a subprocess (and its run workers) in which the step type that ``source``
    declares (as module ``module``) is one more row of the tables; written under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(source, encoding="utf-8")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(module=module), encoding="utf-8")
    path = os.pathsep.join(p for p in (str(folder), str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}
