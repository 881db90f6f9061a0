"""The LM engines a saved program may name, and the one way a fine-tuned model is served again.

A saved program (``Module.save``) records each predictor's LM state, including the class of its
engine; DSPy imports that class when it loads the state. Every reader of a saved program refuses
engines and LM classes other than this package's before that import (``check_lm_engines``), and
every reader that serves fine-tuned models (the Results page, export, resume, bundle load) registers
them with ``register_finetuned``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.errors import ExportError, shown

ENGINES = {"core.lms.embedded:LlamaEngine": "embedded", "core.lms.scripted:ScriptedEngine": "scripted"}
BUILTIN_LM_CLASSES = frozenset({"dspy.clients.lm.LM"})


def engine_kind(engine: Any, predictor: str) -> str:
    """"embedded" or "scripted" for an engine named in a saved state (``{"class": ...}`` or the class
    path itself); ``ExportError`` naming the allowed engines otherwise."""
    cls = engine.get("class") if isinstance(engine, dict) else engine
    path = str(cls)
    if ":" not in path:  # "module.Class" and "module:Class" name the same class
        module, _, name = path.rpartition(".")
        path = f"{module}:{name}"
    kind = ENGINES.get(path)
    if kind is None:
        raise ExportError(f"predictor {shown(predictor)} uses the LM engine {shown(cls)}, which is not part of BetterTogether "
                          f"Studio; allowed engines: {', '.join(ENGINES)}")
    return kind


def check_lm_engines(state: dict[str, Any]) -> None:
    """Refuse a saved program state whose LMs name a class or an engine outside this package, before
    ``allow_unsafe_lm_state`` would import them."""
    for name, entry in state.items():
        lm = (entry.get("lm") or {}) if isinstance(entry, dict) else {}
        if not isinstance(lm, dict):
            raise ExportError(f"predictor {shown(name)}: its LM state is not an object")
        if lm.get("_dspy_lm_class") not in (None, *BUILTIN_LM_CLASSES):
            raise ExportError(f"predictor {shown(name)} names the LM class {shown(lm['_dspy_lm_class'])}; refusing to import it")
        if isinstance(lm.get("engine"), dict):
            engine_kind(lm["engine"], name)


def engine_for(kind: str) -> Any:
    """The engine that serves the fine-tuned models of ``kind`` ("embedded" or "scripted") in this process."""
    if kind == "embedded":
        from core.lms.embedded import LlamaEngine

        return LlamaEngine.shared()
    if kind == "scripted":
        from core.lms.scripted import ScriptedEngine

        return ScriptedEngine
    raise ExportError(f"engine kind {shown(kind)} is unknown; allowed: {', '.join(sorted(set(ENGINES.values())))}")


def register_finetuned(engine: Any, model: str, folder: str | Path) -> bool:
    """Serve the fine-tuned ``model`` from its weights ``folder`` with ``engine`` (the one that served
    its base model). False, and nothing registered, when the engine serves no fine-tuned models (a
    hosted LM's, or none); the engine's own error when the folder does not hold its weights."""
    if engine is None or isinstance(engine, str) or not hasattr(engine, "register_finetuned"):
        return False
    engine.register_finetuned(str(model), Path(folder))
    return True
