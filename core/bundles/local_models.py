"""The local models a bundle carries, so that it runs on a machine without the user's model folder.

A run on your own model (the ``local`` LM kind) serves ``local/<key>`` from a GGUF converted from your folder
(``core.lms.local``), and its fine-tunes ``local/<key>:ft-<8 hex>`` from their own folders (``meta.json``). The
export (``carry_local_models``) puts in ``models/<key>/`` the converted GGUF of each local model that a
predictor is served by, or that a fine-tune of kind ``lora`` (an adapter applied to its base at load time)
needs; a ``merged`` fine-tune is a whole model, so its base's weights stay out and its own GGUF (same tokenizer
and chat template) registers the key. The manifest's ``local_models`` records, per key, that GGUF's path inside
the bundle and, when the GGUF's own metadata does not hold it, the chat template the run used (source, BOS and
EOS tokens).

Loading (``register_carried``) registers those keys in the fresh process before the fine-tunes (which name
their base by key), as data: each path must stay inside the bundle (the loader's ``inside``), the key must be a
plain key, the GGUF is checked by ``core.lms.local.register_local_gguf`` and a chat template is rendered in
Jinja's sandbox once before it is used. A key already known to this process is left as it is (a key names its
model's content, and a bundle never replaces a model of this process), but for a key registered from a merged
fine-tune's GGUF, which a later bundle that carries the base's own weights replaces.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import dspy

from core.config.schema import LocalLMSpec, RunConfig
from core.errors import ExportError, StudioError, shown
from core.lms import catalog, chat_template, local
from core.lms.model_files import gguf_info, read_json

logger = logging.getLogger(__name__)

MODELS_DIR = "models"
MAX_TEMPLATE_CHARS = 200_000
_BASE = ""  # in ``carry_local_models``: the key's own GGUF is needed
_without_base: set[str] = set()  # keys registered from a merged fine-tune's GGUF (not their base's weights)
_without_base_lock = threading.Lock()


def _local_key(model: str) -> str:
    """``local/<key>`` or ``local/<key>:ft-...`` -> ``<key>``."""
    return model[len(local.PREFIX):].split(":", 1)[0]


def _needed(program: dspy.Module, bundle: Path, finetuned: dict[str, dict[str, str]]) -> dict[str, str]:
    """Local key -> ``_BASE`` when its own GGUF is needed, else the bundle path of a merged fine-tune's GGUF."""
    needs: dict[str, str] = {}
    for _, predictor in program.named_predictors():
        model = getattr(predictor.lm, "model", None)
        if not isinstance(model, str) or not model.startswith(local.PREFIX):
            continue
        key = _local_key(model)
        if not catalog.is_finetuned_name(model):
            needs[key] = _BASE
            continue
        entry = finetuned.get(model)
        if entry is None:
            continue  # not in the bundle: the loader says so (as for any fine-tune without weights)
        meta = read_json(bundle / entry["folder"] / "meta.json", f"meta.json of {model}")
        if isinstance(meta, dict) and meta.get("kind") == "merged" and isinstance(meta.get("file"), str):
            needs.setdefault(key, f"{entry['folder']}/{meta['file']}")
        else:
            needs[key] = _BASE  # a LoRA adapter is applied to its base's GGUF
    return needs


def _known(key: str, config: RunConfig) -> local.LocalModel:
    """The local model ``key``: registered in this process, or the configuration's local LM whose content gives
    this key (inspected and registered now: an export runs in a process that may never have built the LM)."""
    model = local.local_model(key)
    if model is not None:
        return model
    problems = []
    for name, spec in config.lms.items():
        if not isinstance(spec, LocalLMSpec):
            continue
        try:
            found = local.inspect_local(spec.path, spec.weights, spec.quant)
        except StudioError as e:
            problems.append(f"LM {shown(name)}: {e}")
            continue
        if found.key == key:
            local.register_local(found)
            return found
        problems.append(f"LM {shown(name)} is now {found.key}")
    raise ExportError(f"the run's local model {shown(key)} cannot be exported: none of the configuration's local LMs "
                      f"has that content now ({'; '.join(problems) or 'it has no local LM'}); its files changed or "
                      "moved since the run")


def register_named(program: dspy.Module, config: RunConfig) -> None:
    """Register the local models ``program``'s predictors are served by, from the run's configuration (a restarted
    app, an export: a process that never built the LMs); one whose files changed since the run is logged and left
    out (its calls then name it)."""
    keys = {_local_key(model) for _, predictor in program.named_predictors()
            if isinstance(model := getattr(predictor.lm, "model", None), str) and model.startswith(local.PREFIX)}
    for key in sorted(keys):
        try:
            _known(key, config)
        except StudioError as e:
            logger.warning("%s", e)


def carry_local_models(program: dspy.Module, config: RunConfig, bundle: Path,
                       finetuned: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Copy the GGUFs of the local models ``program`` needs into ``bundle/models/<key>/``; the manifest's
    ``local_models`` (key -> what ``register_carried`` reads). ``finetuned``: the manifest's fine-tunes, their
    weights already in ``bundle``. A folder's GGUF not yet converted is converted now (once, cached)."""
    carried: dict[str, dict[str, Any]] = {}
    for key, merged_gguf in sorted(_needed(program, bundle, finetuned).items()):
        model = _known(key, config)
        if merged_gguf == _BASE:
            source = local.local_gguf(key)
            relative = f"{MODELS_DIR}/{key}/{source.name}"
            (bundle / MODELS_DIR / key).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, bundle / relative)
        else:
            source = bundle / merged_gguf
            relative = merged_gguf
        entry: dict[str, Any] = {"gguf": relative, "base_weights": merged_gguf == _BASE,
                                 "display_name": model.display_name, "architecture": model.arch,
                                 "parameters": model.n_params}
        info = gguf_info(source)
        if chat_template.ChatTemplate(info["chat_template"] or "", info["bos"] or "", info["eos"] or "") != model.template:
            entry["chat_template"] = asdict(model.template)
        carried[key] = entry
        logger.info("bundle carries local model %s (%s)", key, relative)
    return carried


# --- loading ---------------------------------------------------------------------------------------------------


def _template(key: str, value: Any) -> chat_template.ChatTemplate | None:
    """A recorded chat template, checked to render a turn (in Jinja's sandbox); None when none is recorded."""
    if value is None:
        return None
    fields = ("source", "bos_token", "eos_token")
    if not isinstance(value, dict) or set(value) - set(fields) or not all(isinstance(value.get(f, ""), str)
                                                                          for f in fields):
        raise ExportError(f"manifest.json: local_models[{shown(key)}].chat_template must be an object of strings "
                          f"with {', '.join(fields)}")
    if not value.get("source") or len(value["source"]) > MAX_TEMPLATE_CHARS:
        raise ExportError(f"manifest.json: local_models[{shown(key)}].chat_template.source must be a template of 1 to "
                          f"{MAX_TEMPLATE_CHARS} characters")
    template = chat_template.ChatTemplate(value["source"], value.get("bos_token", ""), value.get("eos_token", ""))
    chat_template.end_of_turn(template)  # LMError when it cannot render a turn
    return template


def register_carried(entries: Any, resolve: Callable[[Any, str], Path]) -> list[str]:
    """Register the bundle's local models (the manifest's ``local_models``) in this process; their keys.
    ``resolve(relative, what)``: the path inside the bundle, or ``ExportError`` (the loader's ``inside``)."""
    if entries is None:
        return []  # a bundle of a run without local models, or from before them
    if not isinstance(entries, dict):
        raise ExportError("manifest.json: 'local_models' must map model keys to objects with 'gguf'")
    for key, entry in entries.items():
        if not isinstance(entry, dict):
            raise ExportError(f"manifest.json: local_models[{shown(key)}] must be an object with 'gguf'")
        base_weights = entry.get("base_weights", True) is not False
        with _without_base_lock:
            if local.local_model(key) is not None and not (base_weights and key in _without_base):
                continue
        gguf = resolve(entry.get("gguf"), f"manifest.json local_models[{shown(key)}].gguf")
        if gguf.suffix.lower() != ".gguf" or not gguf.is_file():
            raise ExportError(f"manifest.json: local_models[{shown(key)}].gguf {shown(entry.get('gguf'))} is not a .gguf "
                              "file of the bundle")
        try:
            template = _template(key, entry.get("chat_template"))
            name = entry.get("display_name")
            model = local.register_local_gguf(key, gguf, name[:200] if isinstance(name, str) and name else None)
        except ExportError:
            raise
        except StudioError as e:
            raise ExportError(f"the bundle's local model {shown(key)} cannot be served: {e}") from e
        if template is not None:
            local.register_local(replace(model, template=template))
        with _without_base_lock:
            (_without_base.discard if base_weights else _without_base.add)(key)
    return list(entries)
