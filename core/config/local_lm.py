"""The ``local`` LM kind of the configuration: your own model on disk (``core.lms.local`` checks and serves it).

``{"kind": "local", "path": "/models/Qwen2.5-0.5B-Instruct"}``: a Hugging Face folder (config.json, safetensors,
tokenizer, chat template), served by llama.cpp from a GGUF made from it once, and fine-tunable (any role); or
``{"kind": "local", "path": "/models/model.gguf"}``: a GGUF, inference only unless ``weights`` names the Hugging
Face folder it was made from. Only the form is checked here (cheap, on every edit); the files are checked when
the LM is built (``core.lms.registry.build_lm``, at Start).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.lms.local import DEFAULT_QUANT, QUANTS


class LocalLMSpec(BaseModel):
    """A model on disk: a Hugging Face folder, or a .gguf file (with ``weights``, its folder, to fine-tune it)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local"]
    path: str = Field(min_length=1, description="a Hugging Face model folder or a .gguf file (absolute, or ~/...)")
    weights: str | None = Field(None, description="for a .gguf path: the Hugging Face folder it was made from, "
                                                  "to fine-tune it")
    quant: Literal[QUANTS] = Field(DEFAULT_QUANT, description="the type a folder is served as; a .gguf is served "  # type: ignore[valid-type]
                                                              "as it is")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=1, le=4096)

    @property
    def is_gguf(self) -> bool:
        return self.path.lower().endswith(".gguf")

    @property
    def finetunable(self) -> bool:
        """A Hugging Face folder, or a .gguf with its ``weights`` folder."""
        return not self.is_gguf or self.weights is not None

    @model_validator(mode="after")
    def _weights_for_gguf(self) -> LocalLMSpec:
        if self.weights is not None and not self.is_gguf:
            raise ValueError("weights is only for a .gguf path (the Hugging Face folder it was made from); a folder "
                             "path is fine-tuned from its own weights")
        return self
