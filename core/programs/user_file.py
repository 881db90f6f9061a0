"""Programs from a user's Python file: a ``dspy.Module`` subclass. Importing it runs its code, so it is
opt-in (``allow_user_code``) and never done on page render."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import itertools
import logging
import sys
from pathlib import Path
from types import ModuleType

import dspy

from core.errors import ProgramError, shown

logger = logging.getLogger(__name__)


_user_module_counter = itertools.count(1)


def resolve_path(path: str, base_dir: Path | None) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.is_absolute() and base_dir is not None:
        resolved = Path(base_dir) / resolved
    return resolved


def load_user_program(path: Path, class_name: str | None, *, allow_user_code: bool) -> dspy.Module:
    """Import ``path`` (opt-in only), pick the ``dspy.Module`` subclass and instantiate it."""
    if not allow_user_code:
        raise ProgramError(f"Loading a Python file runs its code; enable 'allow user code' to load {path}")
    check_user_file(path)
    module = _import_user_file(path)
    program_class = _pick_module_class(module, path, class_name)
    try:
        program = program_class()
    except Exception as e:
        raise ProgramError(
            f"Creating {program_class.__name__}() from {path} failed: {type(e).__name__}: {e}. "
            "The class must be constructible with no arguments."
        ) from e
    if not program.named_predictors():
        raise ProgramError(
            f"{program_class.__name__} in {path} has no predictors; give it at least one "
            "dspy.Predict or dspy.ChainOfThought attribute in __init__."
        )
    return program


def check_user_file(path: Path) -> None:
    if not path.exists():
        raise ProgramError(f"Program file not found: {shown(str(path), quotes=False)}")
    if not path.is_file():
        raise ProgramError(f"Program path {shown(str(path), quotes=False)} is not a file; give the path of a .py file.")
    if path.suffix != ".py":
        raise ProgramError(f"Program file {shown(str(path), quotes=False)} is not a Python file; only .py files can be loaded.")


def _import_user_file(path: Path) -> ModuleType:
    """Run the file as a fresh module under a unique name (two loads never share state)."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
    module_name = f"studio_user_program_{digest}_{next(_user_module_counter)}"
    import_spec = importlib.util.spec_from_file_location(module_name, path)
    if import_spec is None or import_spec.loader is None:
        raise ProgramError(f"Cannot import {path}; only .py files can be loaded.")
    module = importlib.util.module_from_spec(import_spec)
    sys.modules[module_name] = module  # dataclasses, pickling and typing look classes up here
    logger.info("Loading user program file %s as %s", path, module_name)
    try:
        import_spec.loader.exec_module(module)
    except SyntaxError as e:
        del sys.modules[module_name]
        raise ProgramError(f"Syntax error in {e.filename or path}:{e.lineno}: {e.msg}") from e
    except ImportError as e:
        del sys.modules[module_name]
        raise ProgramError(f"Import error while loading {path}: {e}") from e
    except Exception as e:
        del sys.modules[module_name]
        raise ProgramError(f"Running {path} raised {type(e).__name__}: {e}") from e
    return module


def _pick_module_class(module: ModuleType, path: Path, class_name: str | None) -> type[dspy.Module]:
    """``class_name`` if given, else the single ``dspy.Module`` subclass defined in the file."""
    defined = [
        obj for obj in vars(module).values() if inspect.isclass(obj) and obj.__module__ == module.__name__
    ]
    candidates = [cls for cls in defined if issubclass(cls, dspy.Module)]
    if class_name is not None:
        chosen = getattr(module, class_name, None)
        if not (inspect.isclass(chosen) and issubclass(chosen, dspy.Module)):
            available = ", ".join(cls.__name__ for cls in candidates) or "(none)"
            raise ProgramError(
                f"Class {shown(class_name)} is not a dspy.Module subclass defined in {path}; "
                f"available: {available}."
            )
        return chosen
    if not candidates:
        found = ", ".join(cls.__name__ for cls in defined) or "(none)"
        raise ProgramError(f"No dspy.Module subclass is defined in {path}; classes found: {found}.")
    if len(candidates) > 1:
        names = ", ".join(cls.__name__ for cls in candidates)
        raise ProgramError(
            f"{path} defines several dspy.Module subclasses ({names}); set class_name to one of them."
        )
    return candidates[0]

