"""Program specs (pydantic, embedded in the run config) and the record describing a predictor."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.errors import ProgramError, shown
from core.programs.stages import MAX_STAGES, Stage, validate_stages
from core.programs.templates import TEMPLATES

logger = logging.getLogger(__name__)


class TemplateProgram(BaseModel):
    """A built-in template, by key (see ``TEMPLATES``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["template"] = "template"
    name: str

    @field_validator("name")
    @classmethod
    def _check_template(cls, name: str) -> str:
        if name not in TEMPLATES:
            raise ValueError(f"unknown template {shown(name)}; available templates: {', '.join(TEMPLATES)}")
        return name


class StagesProgram(BaseModel):
    """A pipeline composed by the user from 1 to 10 stages, run in order."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["stages"] = "stages"
    stages: list[Stage] = Field(min_length=1, max_length=MAX_STAGES)

    @model_validator(mode="after")
    def _check_stages(self) -> StagesProgram:
        try:
            validate_stages(self.stages)
        except ProgramError as e:
            raise ValueError(str(e)) from e
        return self


class UserFileProgram(BaseModel):
    """A ``dspy.Module`` subclass defined in a Python file; ``class_name`` picks one of several."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["user_file"] = "user_file"
    path: str
    class_name: str | None = None


ProgramSpec = Annotated[TemplateProgram | StagesProgram | UserFileProgram, Field(discriminator="kind")]



@dataclass(frozen=True)
class PredictorInfo:
    """One predictor of a program, as shown to the user.

    ``inputs``/``outputs`` are ``"name: type"`` strings; ``signature`` lists the bare names
    (``"document -> reasoning, analysis, key_findings"``).
    """

    name: str
    module_type: str
    signature: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    instructions: str
    demos: int


