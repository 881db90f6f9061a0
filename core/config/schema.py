"""The run configuration: one plain, versioned, validated JSON document.

The dashboard builds it, the CLI runs it, the export carries it (without secrets).
``load_config`` / ``parse_config`` turn any schema violation into a ``ConfigError`` whose
message names the field, the bad value and what is allowed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from core.config.local_lm import LocalLMSpec
from core.config.steps import STEP_TYPES, Kind, StepType, StrategyStep, lm_settings, step_kind
from core.config.strategy import normalize_strategy, split_strategy
from core.config.sweep import ExecutorSpec, LocalExecutorSpec, SweepSpec
from core.config.tracking import TrackingSpec
from core.errors import SHOWN_LIMIT, ConfigError, StrategyError, shown
from core.programs import MAX_STAGES, ProgramSpec, Stage, TemplateProgram, UserFileProgram

CONFIG_VERSION = 1
ROLES = ("large", "small")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- LMs -------------------------------------------------------------------------------------------


class EmbeddedLMSpec(_Model):
    """One of the embedded local models (llama.cpp, offline)."""

    kind: Literal["embedded"]
    model: str = Field(description="catalogue key, see `python -m core models`")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=1, le=4096)


class LiteLLMSpec(_Model):
    """A hosted or self-hosted model through a LiteLLM model string (``openai/gpt-4o-mini``...)."""

    kind: Literal["litellm"]
    model: str = Field(pattern=r"^[A-Za-z0-9_.-]+/.+$", description="provider/model, e.g. openai/gpt-4o-mini")
    api_base: str | None = None
    api_key_env: str | None = Field(None, description="name of the environment variable holding the key")
    api_key: SecretStr | None = Field(None, exclude=True, description="typed key: kept in memory only")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=1, le=32768)
    num_threads: int = Field(4, ge=1, le=64, description="parallel calls to this LM")
    finetune: Literal["none", "openai"] = "none"
    grammar: Literal["none", "gbnf"] = Field(
        "none", description="'gbnf': send a GBNF output grammar (llama.cpp servers) so small models answer parseably"
    )
    price_per_1m_input: float | None = Field(None, ge=0)
    price_per_1m_output: float | None = Field(None, ge=0)


# The factories that run without ``allow_user_code``: an explicit list, never a prefix (any other
# import path, even inside ``core``, can be made to run code through its options).
BUILTIN_FACTORIES = frozenset({"core.lms.scripted:make_lm"})


class FactoryLMSpec(_Model):
    """An import path ``module:function`` returning a ``dspy.LM``: your code, unless it is one of
    ``BUILTIN_FACTORIES`` (the scripted test LM)."""

    kind: Literal["factory"]
    factory: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_builtin(self) -> bool:
        return self.factory in BUILTIN_FACTORIES


LMSpec = Annotated[EmbeddedLMSpec | LiteLLMSpec | FactoryLMSpec | LocalLMSpec, Field(discriminator="kind")]


class PredictorAssignment(_Model):
    lm: str
    role: Literal["large", "small"]


# --- data ------------------------------------------------------------------------------------------


class SampleSource(_Model):
    kind: Literal["sample"]
    name: str = Field(description="a file in data/, e.g. documents.csv")

    @field_validator("name")
    @classmethod
    def _bundled_name(cls, name: str) -> str:
        from core.paths import sample_name_problem

        if problem := sample_name_problem(name):
            raise ValueError(problem)
        return name


class FileSource(_Model):
    kind: Literal["file"]
    path: str


class SplitSpec(_Model):
    train: float = Field(0.6, gt=0)
    val: float = Field(0.2, gt=0)
    test: float = Field(0.2, gt=0)
    seed: int = 0

    @model_validator(mode="after")
    def _same_kind(self) -> SplitSpec:
        sizes = (self.train, self.val, self.test)
        as_counts = all(float(s).is_integer() and s >= 1 for s in sizes)
        as_ratios = all(0 < s < 1 for s in sizes)
        if not (as_counts or as_ratios):
            raise ValueError(
                f"split sizes {sizes} mix counts and ratios; use three counts (e.g. 40, 20, 30) "
                "or three ratios below 1 (e.g. 0.6, 0.2, 0.2)"
            )
        if as_ratios and sum(sizes) > 1.0 + 1e-6:
            raise ValueError(f"split ratios add up to {sum(sizes):.2f}; they must add up to at most 1.0")
        return self

    def sizes(self) -> tuple[int | float, int | float, int | float]:
        if all(float(s).is_integer() and s >= 1 for s in (self.train, self.val, self.test)):
            return int(self.train), int(self.val), int(self.test)
        return self.train, self.val, self.test


class DataSpec(_Model):
    source: Annotated[SampleSource | FileSource, Field(discriminator="kind")]
    mapping: dict[str, str] = Field(description="program field -> column")
    inputs: list[str] = Field(min_length=1)
    labels: list[str] = Field(min_length=1)
    split: SplitSpec = Field(default_factory=SplitSpec)
    label_choices: Literal["auto", "off"] = Field(
        "auto", description="'auto': a label field with few distinct values becomes a choice among them"
    )


class MetricSpec(_Model):
    name: str = "exact_match"
    fields: list[str] | None = Field(None, description="label fields compared; default: data.labels")


# --- optimizers ------------------------------------------------------------------------------------


def _step_model(row: StepType) -> type[BaseModel]:
    """The configuration's model of a step of ``row``'s type: ``{"type": key, "settings": {...}}``."""
    name = "".join(part.title() for part in row.key.split("_")) + "Step"
    return create_model(name, __base__=_Model, type=(Literal[row.key], ...),  # type: ignore[valid-type]
                        settings=(row.settings, Field(default_factory=row.settings)))


STEP_MODELS: dict[str, type[BaseModel]] = {key: _step_model(row) for key, row in STEP_TYPES.items()}
"""One step model per declared step type (``core.config.steps``)."""
OptimizerSpec = Annotated[Union[tuple(STEP_MODELS.values())], Field(discriminator="type")]  # noqa: UP007


def default_optimizers() -> dict[str, Any]:
    return {"p": STEP_MODELS["random_search"](type="random_search"), "w": STEP_MODELS["finetune"](type="finetune")}


class Limits(_Model):
    num_threads: int = Field(1, ge=1, le=64, description="parallel evaluation threads (1 for CPU models)")
    max_errors: int | None = Field(None, ge=1)


# --- the document ----------------------------------------------------------------------------------


class StagesDraft(_Model):
    """A composed pipeline as it is being edited: each stage is well formed, but the stages need not
    fit together yet (``StagesProgram``, in a ``RunConfig``, checks that)."""

    kind: Literal["stages"] = "stages"
    stages: list[Stage] = Field(min_length=1, max_length=MAX_STAGES)


ProgramDraft = Annotated[TemplateProgram | StagesDraft | UserFileProgram, Field(discriminator="kind")]


class RunDraft(_Model):
    """The run document as the dashboard edits it: every field typed and checked on its own, none of
    the checks across fields (``RunConfig._cross_check``). A draft may name code the user has not
    allowed yet, or a pipeline being fixed; such states are shown as problems, not refused."""

    version: Literal[1] = CONFIG_VERSION
    name: str = Field("untitled run", max_length=200)
    program: ProgramDraft
    allow_user_code: bool = False
    lms: dict[str, LMSpec] = Field(min_length=1)
    predictors: dict[str, PredictorAssignment] = Field(min_length=1)
    data: DataSpec
    metric: MetricSpec = Field(default_factory=MetricSpec)
    strategy: str = "p -> w -> p"
    optimizers: dict[str, OptimizerSpec] = Field(default_factory=default_optimizers)
    limits: Limits = Field(default_factory=Limits)
    seed: int = 0
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    sweep: SweepSpec | None = None  # strategies x seeds as one job (core.config.sweep)
    executor: ExecutorSpec = Field(default_factory=LocalExecutorSpec)

    @field_validator("optimizers")
    @classmethod
    def _keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        import re

        for key in value:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", key):
                raise ValueError(
                    f"step key {shown(key)} must be lowercase letters, digits or _, starting with a letter"
                )
        return value

    def metric_fields(self) -> list[str]:
        return list(self.metric.fields or self.data.labels)

    def lm_for(self, predictor: str) -> str:
        return self.predictors[predictor].lm

    def step_keys(self) -> list[str]:
        """The strategy's step keys in order (``"p -> w -> p"`` -> ``["p", "w", "p"]``); a draft's may name
        keys that are not defined yet."""
        return split_strategy(self.strategy)

    def step_kind(self, key: str) -> Kind:
        """'prompt' or 'weight': the kind of the step type that step key ``key`` names; ``StrategyError``
        naming the defined keys when ``key`` is not one."""
        if key not in self.optimizers:
            raise StrategyError(f"step key {shown(key)} is not defined; "
                                f"defined keys: {shown(self.optimizers, quotes=False, brackets=False)}")
        return step_kind(self.optimizers[key].type)

    def step_kinds(self) -> dict[str, Kind]:
        """Each defined step key -> its kind (``{"p": "prompt", "w": "weight"}``)."""
        return {key: self.step_kind(key) for key in self.optimizers}

    def steps(self) -> list[StrategyStep]:
        """The strategy's steps in order, each with its key, type, kind and settings; ``StrategyError``
        for a step key that is not defined (a draft's)."""
        kinds = {key: self.step_kind(key) for key in self.step_keys()}
        return [StrategyStep(key, self.optimizers[key].type, kinds[key], self.optimizers[key].settings)
                for key in self.step_keys()]


class RunConfig(RunDraft):
    """A draft that passed the checks across fields: what a run, the CLI and the store take."""

    program: ProgramSpec

    @model_validator(mode="after")
    def _cross_check(self) -> RunConfig:
        try:
            self.strategy = normalize_strategy(self.strategy, self.optimizers.keys())
        except StrategyError as e:
            raise ValueError(str(e)) from e
        for name, assignment in self.predictors.items():
            if assignment.lm not in self.lms:
                raise ValueError(
                    f"predictor {shown(name)} uses LM {shown(assignment.lm)}, which is not defined; "
                    f"defined LMs: {shown(sorted(self.lms))}"
                )
        for key, step in self.optimizers.items():
            for setting, lm in lm_settings(step.settings).items():  # teacher_lm, reflection_lm
                if lm is not None and lm not in self.lms:
                    raise ValueError(f"step {shown(key)}: {setting} {shown(lm)} is not defined; "
                                     f"defined LMs: {shown(sorted(self.lms))}")
        for name, spec in self.lms.items():
            if isinstance(spec, FactoryLMSpec) and not spec.is_builtin and not self.allow_user_code:
                raise ValueError(
                    f"LM {shown(name)} uses the factory {shown(spec.factory)}, which runs your code; "
                    "set allow_user_code to true to allow it"
                )
        if self.program.kind == "user_file" and not self.allow_user_code:
            raise ValueError(
                "program.kind 'user_file' runs your Python file; set allow_user_code to true to allow it"
            )
        if self.sweep is not None:
            try:
                strategies = [normalize_strategy(text, self.optimizers.keys()) for text in self.sweep.strategies]
            except StrategyError as e:
                raise ValueError(f"sweep.strategies: {e}") from e
            self.sweep = self.sweep.model_copy(update={"strategies": strategies})
        for strategy in [self.strategy, *(self.sweep.strategies if self.sweep else [])]:
            uses_weights = any(self.step_kind(key) == "weight" for key in split_strategy(strategy))
            if uses_weights and not any(a.role == "small" for a in self.predictors.values()):
                raise ValueError(
                    f"strategy {shown(strategy)} has a weight step but no predictor has the role 'small'; "
                    "assign 'small' to at least one predictor or drop the weight steps"
                )
        return self

    def with_api_keys(self, api_keys: dict[str, str]) -> RunConfig:
        """A copy with the keys typed in the app (LM name -> key) on its LiteLLM LMs; keys for other
        names, and empty keys, are ignored. Typed keys are excluded from every dump."""
        lms = dict(self.lms)
        for name, key in api_keys.items():
            spec = lms.get(name)
            if key and isinstance(spec, LiteLLMSpec):
                lms[name] = spec.model_copy(update={"api_key": SecretStr(key)})
        return self.model_copy(update={"lms": lms})

    def typed_api_keys(self) -> dict[str, str]:
        """LM name -> API key typed in the app (in memory only)."""
        return {name: spec.api_key.get_secret_value() for name, spec in self.lms.items()
                if isinstance(spec, LiteLLMSpec) and spec.api_key is not None and spec.api_key.get_secret_value()}


# --- loading and dumping ---------------------------------------------------------------------------


def _location(loc: tuple[int | str, ...]) -> str:
    """A pydantic error's location, ``lms.small.model``; a long key (a user's name) is shortened."""
    return ".".join(str(p) if len(str(p)) <= SHOWN_LIMIT else shown(p) for p in loc)


def _pydantic_message(item: Any) -> str:
    """Pydantic's rule, without the value it echoes whole (the union tag)."""
    ctx = item.get("ctx") or {}
    if item["type"] == "union_tag_invalid" and "tag" in ctx:
        return (f"Input tag {shown(ctx['tag'])} found using {ctx.get('discriminator')} does not match any of the "
                f"expected tags: {ctx.get('expected_tags')}")
    return item["msg"]


def _format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors()[:8]:
        path = _location(item["loc"]) or "(document)"
        message = _pydantic_message(item).removeprefix("Value error, ")
        bad = item.get("input")
        got = ""
        if item["type"] not in ("missing",) and not isinstance(bad, dict | list):
            got = f" (got {shown(bad)})"
        if item["type"] == "extra_forbidden":
            message = "unknown field; remove it"
        if item["type"] == "union_tag_invalid" or item["type"] == "union_tag_not_found":
            message = _pydantic_message(item)
        lines.append(f"{path}: {message}{got}")
    more = len(error.errors()) - len(lines)
    if more > 0:
        lines.append(f"... and {more} more")
    return "invalid run configuration: " + "; ".join(lines)


def validation_message(error: ValidationError, where: str = "", *, location: bool = True, show_input: bool = True,
                       limit: int = 1) -> str:
    """One line for the user about an edit of part of the document that failed validation.

    ``where`` names the part (``"data.split"``, ``"step 'p'"``) and is followed by each error's own
    field (``location``; with neither, the model's name); then pydantic's rule and, with
    ``show_input``, the bad value when it is a plain one (never a whole object; a long one cut by
    ``shown``). The first ``limit`` errors are joined by ``"; "``.
    """
    details = []
    for item in error.errors()[:limit]:
        detail = _pydantic_message(item).removeprefix("Value error, ")
        bad = item.get("input")
        if show_input and item["type"] != "missing" and not isinstance(bad, dict | list):
            detail += f" (got {shown(bad)})"
        field = _location(item["loc"]) if location else ""
        details.append(f"{field}: {detail}" if field else detail)
    text = "; ".join(details)
    if not where:
        return text if location and error.errors()[0]["loc"] else f"{error.title}: {text}"
    return f"{where}, {text}" if location and error.errors()[0]["loc"] else f"{where}: {text}"


def parse_config(data: dict[str, Any]) -> RunConfig:
    """Validate a configuration document (a dict)."""
    return _validated(RunConfig, data)


def parse_draft(data: dict[str, Any]) -> RunDraft:
    """Validate a document as a draft: every field, but none of the checks across fields."""
    return _validated(RunDraft, data)


def _validated(model: type[RunDraft], data: dict[str, Any]) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"a run configuration must be a JSON object, got {type(data).__name__}")
    version = data.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ConfigError(f"version: unsupported configuration version {shown(version)}; this app reads version 1")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e)) from e


def parse_config_text(text: str) -> RunConfig:
    """Validate a configuration given as JSON text."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"the configuration is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
        ) from e
    return parse_config(data)


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a configuration file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read configuration file {path}: {e}") from e
    return parse_config_text(text)


def config_to_dict(config: RunDraft) -> dict[str, Any]:
    """The document without secrets (typed API keys are excluded), as plain JSON types."""
    return config.model_dump(mode="json", exclude_none=False)


def config_to_json(config: RunConfig) -> str:
    """The document as JSON text for a download or a file: no typed keys, key-like strings redacted."""
    from core.store.secrets import redact_value

    return json.dumps(redact_value(config_to_dict(config)), indent=2, ensure_ascii=False)
