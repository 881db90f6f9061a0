"""Load a bundle back as a runnable program, treating it as data, never as code.

A bundle may come from anyone (a colleague, a download), so nothing in it is trusted:

* ``program.json`` is read as JSON and each predictor's state is filtered to the keys a predictor
  saves (demos, signature, fields...); its LM state is never handed to DSPy (which would import
  ``_dspy_lm_class``, an engine or ``async_engine``, and keep ``api_base``). Each LM is rebuilt here
  through an allow-list: model name, temperature, max_tokens, and for embedded or fine-tuned models
  one of our engines. A foreign LM class or engine is refused.
* An LM that talks to an ``api_base`` is built only when the caller trusts that exact URL
  (``trusted_endpoints``: ``--trust-endpoint URL`` on the CLI); only then is an API key from this
  machine's environment sent to it. Without an ``api_base`` a hosted LM uses its provider's default
  endpoint and key variable.
* Every path read from a bundle (fine-tuned weights folders, ``meta.json``'s ``file``, the GGUFs of
  local models, a user program's source) must stay inside the bundle.
* Local models the bundle carries are registered under their recorded keys before the fine-tunes
  (``core.bundles.local_models``); a key this process already knows is left as it is.
* A .zip is extracted with limits on total size, member count and compression ratio, into a
  temporary folder removed when the loaded program is released or the process exits.
* A user's own ``dspy.Module`` in a bundle runs its code only with ``allow_user_code=True``.

A hosted LM whose spec asked for ``grammar: "gbnf"`` gets its output grammar in ``predict`` as in
the run: the loaded program's ``LMRuntimes`` (``core.lms.runtime``) are kept beside it for
``StudioChatAdapter``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import dspy

from core.bundles.engines import BUILTIN_LM_CLASSES, engine_for, engine_kind, register_finetuned
from core.bundles.local_models import register_carried
from core.errors import ExportError, StudioError, shown
from core.lms.runtime import LMRuntime, LMRuntimes

BUNDLE_FORMAT = "bettertogether-studio-bundle"
BUNDLE_VERSION = 1

MAX_BUNDLE_BYTES = int(os.environ.get("STUDIO_BUNDLE_MAX_BYTES", 8 * 1024**3))
MAX_MEMBERS = 5000
MAX_RATIO = 200  # uncompressed / compressed bytes of one member (zeros compress ~1000x, GGUF ~1.1x)
RATIO_FLOOR = 1024 * 1024  # smaller members are not checked for ratio (JSON compresses well)

PREDICTOR_STATE_KEYS = frozenset({"traces", "train", "demos", "signature", "fields", "lm"})
SCRIPTED_OPTIONS = {"delay": (int, float), "fail_after": (int, type(None)), "demo_threshold": (int, float),
                    "tag": (str,), "hints": (dict,), "garble_every": (int, type(None))}


class UntrustedEndpointError(ExportError):
    """A bundle names an ``api_base`` the user has not trusted."""

    def __init__(self, message: str, endpoints: list[str]):
        super().__init__(message)
        self.endpoints = endpoints


# --- paths and zips --------------------------------------------------------------------------------


def inside(bundle: Path, relative: Any, what: str) -> Path:
    """``bundle / relative`` when it stays inside ``bundle`` (symlinks resolved); ``ExportError`` otherwise."""
    if not isinstance(relative, str) or not relative.strip():
        raise ExportError(f"{what}: {shown(relative)} is not a relative path inside the bundle")
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise ExportError(f"{what}: {shown(relative)} leaves the bundle; only paths inside the bundle are allowed")
    root = bundle.resolve()
    path = (root / pure).resolve()
    if path != root and root not in path.parents:
        raise ExportError(f"{what}: {shown(relative)} leaves the bundle (it resolves to {shown(str(path), quotes=False)}); refusing it")
    return path


def _check_zip(zf: zipfile.ZipFile, source: Path) -> None:
    members = zf.infolist()
    if len(members) > MAX_MEMBERS:
        raise ExportError(f"{source} has {len(members)} files; a bundle may hold at most {MAX_MEMBERS}")
    total = 0
    for info in members:
        inside(Path("/bundle"), info.filename.rstrip("/") or ".", f"zip member of {source}")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ExportError(f"{source}: member {shown(info.filename)} is a symbolic link; bundles hold plain files only")
        total += info.file_size
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise ExportError(f"{source}: member {shown(info.filename)} expands {info.file_size // max(info.compress_size, 1)}"
                              f"x; more than {MAX_RATIO}x looks like a zip bomb, refusing it")
    if total > MAX_BUNDLE_BYTES:
        raise ExportError(f"{source} expands to {total / 1e9:.1f} GB; a bundle may be at most "
                          f"{MAX_BUNDLE_BYTES / 1e9:.1f} GB (STUDIO_BUNDLE_MAX_BYTES)")


def _extract(zf: zipfile.ZipFile, target: Path) -> None:
    """Extract member by member, never writing more bytes than each member declares."""
    for info in zf.infolist():
        path = inside(target, info.filename.rstrip("/") or ".", "zip member")
        if info.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with zf.open(info) as src, path.open("wb") as dst:
            while chunk := src.read(1024 * 1024):
                written += len(chunk)
                if written > info.file_size:
                    raise ExportError(f"zip member {shown(info.filename)} is larger than its header says; refusing it")
                dst.write(chunk)


def _remove(folder: str) -> None:
    shutil.rmtree(folder, ignore_errors=True)


@dataclass
class OpenedBundle:
    folder: Path
    temp: Path | None = None  # the extraction folder of a .zip, removed by ``release``

    def release(self) -> None:
        if self.temp is not None:
            _remove(str(self.temp))

    def keep_until_released(self, owner: object) -> None:
        """Remove the extraction folder when ``owner`` is garbage-collected, or at process exit."""
        if self.temp is not None:
            weakref.finalize(owner, _remove, str(self.temp))


def open_bundle(path: str | Path) -> OpenedBundle:
    """A bundle folder as is, or a .zip extracted (with limits) into a temporary folder."""
    path = Path(path)
    if path.is_dir():
        return OpenedBundle(path)
    if not path.is_file():
        raise ExportError(f"{path} is not a bundle folder or .zip file (nothing exists there)")
    target = Path(tempfile.mkdtemp(prefix="bt-bundle-"))
    opened = OpenedBundle(target, target)
    try:
        with zipfile.ZipFile(path) as zf:
            _check_zip(zf, path)
            _extract(zf, target)
    except zipfile.BadZipFile as e:
        opened.release()
        raise ExportError(f"{path} is not a readable .zip bundle (truncated or corrupt: {e})") from e
    except (OSError, EOFError, ValueError, NotImplementedError) as e:
        opened.release()
        raise ExportError(f"cannot extract bundle {path}: {type(e).__name__}: {e}") from e
    except BaseException:
        opened.release()
        raise
    return opened


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ExportError(f"{what} cannot be read as JSON: {e}") from e


def check_manifest(manifest: Any, source: Any) -> dict[str, Any]:
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise ExportError(f"{source} is not a BetterTogether Studio bundle (format {shown(fmt)})")
    if manifest.get("format_version") != BUNDLE_VERSION:
        raise ExportError(f"bundle format version {manifest.get('format_version')} is not supported; "
                          f"this version reads {BUNDLE_VERSION}")
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a bundle folder or .zip (a .zip is not extracted for this)."""
    path = Path(path)
    if path.is_file():
        try:
            with zipfile.ZipFile(path) as zf:
                _check_zip(zf, path)
                try:
                    info = zf.getinfo("manifest.json")
                except KeyError:
                    raise ExportError(f"{path} has no manifest.json; it is not a BetterTogether Studio bundle") from None
                if info.file_size > 50 * 1024 * 1024:
                    raise ExportError(f"{path}: manifest.json is {info.file_size} bytes; too large for a manifest")
                manifest = json.loads(zf.read(info).decode("utf-8"))
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise ExportError(f"{path} is not a readable .zip bundle (truncated or corrupt: {e})") from e
        return check_manifest(manifest, path)
    manifest_path = path / "manifest.json"
    if not path.is_dir() or not manifest_path.is_file():
        raise ExportError(f"{path} has no manifest.json; it is not a BetterTogether Studio bundle")
    manifest_path = inside(path, "manifest.json", "bundle")  # a link to a file elsewhere is refused
    if not manifest_path.is_file():
        raise ExportError(f"{path} has no manifest.json; it is not a BetterTogether Studio bundle")
    return check_manifest(_read_json(manifest_path, f"{path}/manifest.json"), path)


# --- LMs from an allow-list ------------------------------------------------------------------------


def _norm(url: str) -> str:
    return url.strip().rstrip("/")


def _number(value: Any, low: float, high: float, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high \
        else default


def _lm_endpoints(state: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    found = [state.get("api_base"), state.get("base_url"), spec.get("api_base")]
    return sorted({_norm(u) for u in found if isinstance(u, str) and u.strip()})


def _check_lm_state(predictor: str, state: dict[str, Any]) -> None:
    cls = state.get("_dspy_lm_class")
    if cls is not None and cls not in BUILTIN_LM_CLASSES:
        raise ExportError(f"predictor {shown(predictor)} names the LM class {shown(cls)}; a bundle may only use "
                          f"{', '.join(sorted(BUILTIN_LM_CLASSES))}, refusing to import it")
    if state.get("async_engine") is not None:
        raise ExportError(f"predictor {shown(predictor)} names an async_engine; bundles may not bring engines of their own")
    if state.get("model_list"):
        raise ExportError(f"predictor {shown(predictor)} names a model_list (LiteLLM router); bundles may not route calls")
    if not isinstance(state.get("model"), str) or not state["model"].strip() or len(state["model"]) > 300:
        raise ExportError(f"predictor {shown(predictor)}: its LM has no valid model name")


@dataclass
class LMRebuilder:
    """Builds each predictor's LM from the allow-listed fields of its saved state."""

    manifest: dict[str, Any]
    trusted_endpoints: frozenset[str]
    finetuned: dict[str, str]  # fine-tuned model name -> its engine kind, registered from this bundle
    runtimes: LMRuntimes = field(default_factory=LMRuntimes)  # the grammar of each hosted LM, for ``predict``

    def config_spec(self, predictor: str) -> dict[str, Any]:
        """The LM spec the run's configuration gave this predictor (data only, may be empty)."""
        table = self.manifest.get("predictors") if isinstance(self.manifest.get("predictors"), dict) else {}
        lm_name = (table.get(predictor) or {}).get("lm") if isinstance(table.get(predictor), dict) else None
        lms = (self.manifest.get("config") or {}).get("lms") if isinstance(self.manifest.get("config"), dict) else None
        spec = (lms or {}).get(lm_name) if isinstance(lms, dict) and isinstance(lm_name, str) else None
        return spec if isinstance(spec, dict) else {}

    def build(self, predictor: str, state: dict[str, Any]) -> Any:
        _check_lm_state(predictor, state)
        model = state["model"].strip()
        temperature = _number(state.get("temperature"), 0.0, 2.0, 0.0)
        max_tokens = int(_number(state.get("max_tokens"), 1, 32768, 512))
        if state.get("engine") is not None:
            kind = engine_kind(state["engine"], predictor)
            engine_state = state["engine"].get("state") if isinstance(state["engine"], dict) else None
            if kind == "embedded":
                return self._embedded(predictor, model, temperature, max_tokens)
            return self._scripted(model, temperature, max_tokens, engine_state)
        return self._hosted(predictor, model, temperature, max_tokens, state)

    def _embedded(self, predictor: str, model: str, temperature: float, max_tokens: int) -> Any:
        from core.lms import catalog
        from core.lms.registry import make_embedded_lm

        key = catalog.base_key(model)  # a shipped model, or a local one this bundle carries
        if key is not None:
            return make_embedded_lm(key, temperature=temperature, max_tokens=max_tokens)
        if self.finetuned.get(model) != "embedded":
            raise ExportError(f"predictor {shown(predictor)} uses the model {shown(model)}, which is neither an embedded model, "
                              "a local model carried by this bundle nor a fine-tuned model with weights in this bundle")
        # The shared engine serves by model name: any catalogue key gives the LM, renamed to the tuned model.
        base = next(iter(catalog.MODELS))
        return make_embedded_lm(base, temperature=temperature, max_tokens=max_tokens).copy(model=model)

    @staticmethod
    def _scripted(model: str, temperature: float, max_tokens: int, engine_state: Any) -> Any:
        from core.lms.scripted import ScriptedEngine, ScriptedProvider

        options = {k: v for k, v in (engine_state or {}).items()
                   if k in SCRIPTED_OPTIONS and isinstance(v, SCRIPTED_OPTIONS[k]) and not isinstance(v, bool)}
        if "delay" in options:
            options["delay"] = min(max(float(options["delay"]), 0.0), 1.0)
        engine = ScriptedEngine.shared(**options)
        return dspy.LM(model, engine=engine, provider=ScriptedProvider(), cache=False, num_retries=0,
                       temperature=temperature, max_tokens=max_tokens)

    def _hosted(self, predictor: str, model: str, temperature: float, max_tokens: int,
                state: dict[str, Any]) -> Any:
        from core.config.schema import LiteLLMSpec
        from core.lms.registry import build_lm

        spec = self.config_spec(predictor)
        endpoints = _lm_endpoints(state, spec)
        if len(endpoints) > 1:
            raise ExportError(f"predictor {shown(predictor)} names several endpoints {shown(endpoints)}; a bundle names one")
        untrusted = [u for u in endpoints if u not in self.trusted_endpoints]
        if untrusted:
            raise UntrustedEndpointError(
                f"the bundle sends predictor {shown(predictor)}'s requests to {untrusted[0]}, an endpoint you have not "
                f"trusted; to allow it (and send it the API key from your environment) pass "
                f"--trust-endpoint {untrusted[0]}", untrusted)
        key_env = spec.get("api_key_env") if endpoints and isinstance(spec.get("api_key_env"), str) else None
        try:
            parsed = LiteLLMSpec(kind="litellm", model=model, api_base=endpoints[0] if endpoints else None,
                                 api_key_env=key_env, temperature=temperature, max_tokens=max_tokens,
                                 grammar="gbnf" if spec.get("grammar") == "gbnf" else "none")
        except Exception as e:  # noqa: BLE001 - pydantic's message names the field
            raise ExportError(f"predictor {shown(predictor)}: the bundle's LM {shown(model)} is not a valid hosted LM: {e}") from e
        lm = build_lm(predictor, parsed)
        self.runtimes.add(lm, LMRuntime(predictor, 0, parsed.grammar == "gbnf"))
        return lm


def bundle_endpoints(manifest: dict[str, Any], program_state: dict[str, Any]) -> list[str]:
    """Every ``api_base`` a bundle would send requests to (to show the user before loading)."""
    found: set[str] = set()
    for entry in program_state.values():
        lm = entry.get("lm") if isinstance(entry, dict) else None
        if isinstance(lm, dict):
            found.update(_lm_endpoints(lm, {}))
    lms = (manifest.get("config") or {}).get("lms") if isinstance(manifest.get("config"), dict) else None
    for spec in (lms or {}).values() if isinstance(lms, dict) else []:
        if isinstance(spec, dict):
            found.update(_lm_endpoints({}, spec))
    return sorted(found)


# --- loading ---------------------------------------------------------------------------------------

# A loaded program -> its LMs' runtime options (read by ``predict``; forgotten with the program).
_RUNTIMES: weakref.WeakKeyDictionary[dspy.Module, LMRuntimes] = weakref.WeakKeyDictionary()


def _finetuned_models(manifest: dict[str, Any], bundle: Path) -> dict[str, str]:
    """Serve the bundle's fine-tuned models (their weights checked to lie inside the bundle) with our
    engines; model name -> engine kind."""
    finetuned = manifest.get("finetuned") or {}
    if not isinstance(finetuned, dict):
        raise ExportError("manifest.json: 'finetuned' must map model names to weights folders")
    kinds: dict[str, str] = {}
    for model, entry in finetuned.items():
        if not isinstance(entry, dict):
            raise ExportError(f"manifest.json: finetuned[{shown(model)}] must be an object with 'folder' and 'engine'")
        kind = engine_kind(entry.get("engine"), f"fine-tuned model {model}")
        folder = inside(bundle, entry.get("folder"), f"manifest.json finetuned[{shown(model)}].folder")
        if not folder.is_dir():
            raise ExportError(f"manifest.json: the weights folder {shown(entry.get('folder'))} of {shown(model)} is missing")
        if kind == "embedded":
            meta = _read_json(inside(folder, "meta.json", f"weights of {shown(model)}"), f"{entry['folder']}/meta.json")
            inside(folder, meta.get("file") if isinstance(meta, dict) else None, f"{entry['folder']}/meta.json file")
        else:
            inside(folder, "rows.json", f"weights of {shown(model)}")
        register_finetuned(engine_for(kind), str(model), folder)
        kinds[str(model)] = kind
    return kinds


def _program_state(bundle: Path, which: str) -> dict[str, Any]:
    if which not in ("program", "baseline"):
        raise ExportError(f"which={shown(which)}: allowed values are 'program' and 'baseline'")
    path = inside(bundle, f"{which}.json", "bundle")
    if not path.is_file():
        raise ExportError(f"the bundle has no {which}.json")
    state = _read_json(path, f"{which}.json")
    if not isinstance(state, dict):
        raise ExportError(f"{which}.json must be a JSON object of predictor states")
    return state


def _load_predictors(program: dspy.Module, state: dict[str, Any], rebuild: LMRebuilder) -> None:
    for name, predictor in program.named_predictors():
        entry = state.get(name)
        if not isinstance(entry, dict):
            raise ExportError(f"program.json has no state for predictor {shown(name)}; the bundle does not fit its program")
        unknown = sorted(set(entry) - PREDICTOR_STATE_KEYS)
        if unknown:
            raise ExportError(f"program.json: predictor {shown(name)} has unknown keys {shown(unknown)}; "
                              f"allowed: {sorted(PREDICTOR_STATE_KEYS)}")
        lm_state = entry.get("lm")
        lm = rebuild.build(name, lm_state) if isinstance(lm_state, dict) else None
        predictor.load_state({**entry, "lm": None})
        predictor.lm = lm


def load_bundle(path: str | Path, *, allow_user_code: bool = False, which: str = "program",
                trusted_endpoints: list[str] | tuple[str, ...] = ()) -> dspy.Module:
    """A runnable program from a bundle; ``which`` is "program" (best) or "baseline".

    A bundle of a user's own ``dspy.Module`` runs that file's code: pass ``allow_user_code=True``.
    An LM with an ``api_base`` needs that URL in ``trusted_endpoints``.
    """
    from core.programs import apply_label_choices, build_program_from_definition

    opened = open_bundle(path)
    try:
        manifest = read_manifest(opened.folder)
        bundle = opened.folder
        state = _program_state(bundle, which)
        definition = manifest.get("program")
        if isinstance(definition, dict) and definition.get("kind") == "user_file":
            inside(bundle / "source", definition.get("file_name"), "manifest.json program.file_name")
        program = build_program_from_definition(definition, allow_user_code=allow_user_code, source_dir=bundle / "source")
        register_carried(manifest.get("local_models"), lambda relative, what: inside(bundle, relative, what))
        rebuild = LMRebuilder(manifest, frozenset(_norm(u) for u in trusted_endpoints),
                              _finetuned_models(manifest, bundle))  # after the local models: fine-tunes name them
        _load_predictors(program, state, rebuild)
        _RUNTIMES[program] = rebuild.runtimes
        apply_label_choices(program, manifest.get("label_choices") or {})
    except StudioError:
        opened.release()
        raise
    except Exception as e:  # noqa: BLE001 - a broken bundle is a user-facing error
        opened.release()
        raise ExportError(f"cannot load bundle {path}: {type(e).__name__}: {e}") from e
    opened.keep_until_released(program)
    return program


def predict(program: dspy.Module, inputs: dict[str, Any]) -> dict[str, Any]:
    """Run one input through a loaded program; returns its outputs as plain JSON values.

    The adapter is the runs' own (ChatAdapter, no JSON fallback), with the grammar of the bundle's hosted LMs."""
    from core.lms.adapter import StudioChatAdapter

    with dspy.context(adapter=StudioChatAdapter(_RUNTIMES.get(program))):
        prediction = program(**inputs)
    return {k: v for k, v in prediction.toDict().items()}
