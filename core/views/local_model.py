"""What was found in a model on disk, before it is used: the Models page's "Your own model" and
``python -m core models --inspect PATH``.

``inspect_report`` checks the model with ``core.lms.local.inspect_local`` (cheap: file headers and cached
digests, nothing converted, no weight loaded) and adds what a user decides on: its size on disk, whether
the GGUF it will be served from is already in the model cache (else llama.cpp's converter makes it on the
model's first use in a run), and the memory it needs to be served and to be fine-tuned against the memory
free now. A bad model raises the ``LMError`` of the check, which names what is wrong and what is allowed.

``convert_in_background`` makes that GGUF ahead of the run (the page's "Convert now"), in a thread of this
process; ``conversion_state`` says how it goes. A run started meanwhile waits for it (``core.lms.local``
converts under a lock across processes) instead of converting twice.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import StudioError
from core.lms import chat_template, local
from core.lms.model_files import weight_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalReport:
    """A checked local model and the facts shown about it (``to_json`` for ``--json``)."""

    model: local.LocalModel
    size_bytes: int
    end_of_turn: str
    served_gguf: Path
    cached: bool
    serve_bytes: int
    train_bytes: int | None
    free_bytes: int | None

    @property
    def converts(self) -> bool:
        """Whether the model is converted (a Hugging Face folder) rather than served as the user's .gguf."""
        return self.model.gguf_source is None

    def spec(self) -> dict[str, Any]:
        """The configuration's LM entry for this model (``{"kind": "local", "path": ...}``)."""
        entry: dict[str, Any] = {"kind": "local", "path": str(self.model.path)}
        if self.model.gguf_source is not None and self.model.hf_dir is not None:
            entry["weights"] = str(self.model.hf_dir)
        if self.model.quant != local.DEFAULT_QUANT:
            entry["quant"] = self.model.quant
        return entry

    def to_json(self) -> dict[str, Any]:
        return {**self.model.summary(), "size_bytes": self.size_bytes, "chat_template": True,
                "end_of_turn": self.end_of_turn, "served_gguf": str(self.served_gguf), "converts": self.converts,
                "cached": self.cached, "memory_serve_bytes": self.serve_bytes, "memory_train_bytes": self.train_bytes,
                "memory_free_bytes": self.free_bytes, "spec": self.spec()}

    def rows(self) -> list[tuple[str, str]]:
        """(what, found) lines, in the order a user reads them."""
        m = self.model
        if self.converts:
            served = (f"{self.served_gguf} (already converted: cached)" if self.cached else
                      f"{self.served_gguf} (not yet: llama.cpp's converter makes it on first use in a run, then it "
                      "is cached by content)")
        else:
            served = f"{self.served_gguf} (your .gguf, served as it is)"
        if m.finetunable:
            tuning = f"yes: LoRA on the Hugging Face folder {m.hf_dir} (any role, 'small' included)"
        else:
            tuning = ("no, inference only (a .gguf without its Hugging Face folder as weights): roles other than "
                      "'small'")
        return [
            ("model", f"{m.display_name}, served as {m.model_name}"),
            ("path", str(m.path)),
            ("architecture", m.arch),
            ("parameters", _count(m.n_params)),
            ("size on disk", _size(self.size_bytes)),
            ("chat template", f"found (a turn ends with {self.end_of_turn!r})"),
            ("fine-tunable", tuning),
            ("served from", served),
            ("memory", self._memory()),
        ]

    def _memory(self) -> str:
        need = f"about {_size(self.serve_bytes)} to serve as {self.model.quant}" if self.converts else \
            f"about {_size(self.serve_bytes)} to serve"
        if self.train_bytes is not None:
            need += f", {_size(self.train_bytes)} to fine-tune"
        if self.free_bytes is None:
            return f"{need}; the free memory cannot be read on this system"
        verdict = "fits" if (self.train_bytes or self.serve_bytes) <= self.free_bytes else \
            "fine-tuning needs more than is free" if self.serve_bytes <= self.free_bytes else "does not fit"
        return f"{need}; {_size(self.free_bytes)} free now ({verdict})"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _size_on_disk(model: local.LocalModel) -> int:
    if model.gguf_source is not None:
        return model.gguf_source.stat().st_size
    assert model.hf_dir is not None
    return sum(p.stat().st_size for p in weight_files(model.hf_dir))


def inspect_report(path: str | Path, weights: str | Path | None = None,
                   quant: str = local.DEFAULT_QUANT) -> LocalReport:
    """Check the model at ``path`` (a Hugging Face folder or a .gguf; ``weights``: a .gguf's folder) and say
    what was found; ``LMError`` naming what is wrong and what is allowed. Nothing is converted or loaded."""
    model = local.inspect_local(path, weights or None, quant)
    served = model.gguf_source if model.gguf_source is not None else local.gguf_target(model)
    return LocalReport(
        model=model,
        size_bytes=_size_on_disk(model),
        end_of_turn=chat_template.end_of_turn(model.template),
        served_gguf=served,
        cached=served.is_file(),
        serve_bytes=local.memory_need(model, training=False),
        train_bytes=local.memory_need(model, training=True) if model.finetunable else None,
        free_bytes=local.available_memory(),
    )


def report_text(report: LocalReport) -> str:
    """The report as aligned lines, with the configuration entry to use it (``models --inspect``)."""
    import json

    width = max(len(what) for what, _ in report.rows())
    lines = [f"{what + ':':<{width + 1}} {found}" for what, found in report.rows()]
    lines.append(f"{'use it:':<{width + 1}} \"lms\": {{\"mine\": {json.dumps(report.spec())}}}")
    return "\n".join(lines)


_conversions: dict[Path, threading.Thread] = {}
_failures: dict[Path, str] = {}
_conversions_lock = threading.Lock()


def convert_in_background(report: LocalReport) -> None:
    """Start converting ``report``'s model to its GGUF in a thread (once; nothing when it is cached or running)."""
    target = report.served_gguf
    with _conversions_lock:
        running = _conversions.get(target)
        if target.is_file() or (running is not None and running.is_alive()):
            return
        _failures.pop(target, None)
        key = local.register_local(report.model)

        def convert() -> None:
            try:
                local.local_gguf(key)
            except StudioError as e:
                _failures[target] = str(e)
            except Exception as e:  # noqa: BLE001 - a thread's failure is shown, never lost
                logger.exception("converting %s failed", key)
                _failures[target] = f"{type(e).__name__}: {e}"

        thread = threading.Thread(target=convert, name=f"convert {key}", daemon=True)
        _conversions[target] = thread
        thread.start()


def conversion_state(report: LocalReport) -> str:
    """``"cached"``, ``"converting"``, ``"failed: <message>"`` or ``"not yet"`` for ``report``'s GGUF."""
    target = report.served_gguf
    with _conversions_lock:
        if target.is_file():
            return "cached"
        running = _conversions.get(target)
        if running is not None and running.is_alive():
            return "converting"
        failure = _failures.get(target)
    return f"failed: {failure}" if failure else "not yet"
