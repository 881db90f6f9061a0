"""Turn a validated ``RunConfig`` into the objects a run needs: program with LMs, data split, metric.

Two levels of checking, so that a user sees "what is wrong and what is allowed" early without the
page doing anything costly or anything that leaves the machine:

* ``check_run`` (every render of the Run page): local and cheap. It builds the program without LMs,
  reads the dataset only when its file changed (cached by path, size and modification time) and
  never builds an LM, calls a factory of user code or opens a connection.
* ``plan_run`` (on **Start**): everything else, including the endpoint check that sends the API key
  to the configured server; it reads and splits the data and returns a ``RunPlan``: plain data that
  crosses to the run's worker process as JSON.
* ``build_run`` (in the worker): the objects a plan needs in memory (program, LMs, metric), with no
  second endpoint check and no second read of the data. ``prepare_run`` is both, in one process.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dspy

from core.config.local_lm import LocalLMSpec
from core.config.schema import (
    FactoryLMSpec,
    FileSource,
    LiteLLMSpec,
    RunConfig,
    SampleSource,
    config_to_dict,
    parse_config,
)
from core.config.strategy import split_strategy
from core.data import Split, Table, build_examples, load_table_from_path, split_examples
from core.errors import ConfigError, DataError, LMError, StudioError, shown
from core.lms.hosted import check_endpoint
from core.lms.registry import LMCapabilities, build_lm, capabilities, resolve_api_key
from core.lms.runtime import LMRuntimes, runtime_for_spec
from core.paths import sample_path
from core.programs import ProgramFields, apply_label_choices, build_program, module_fields
from core.programs.metrics import make_metric
from core.store.secrets import register_config_secrets


@dataclass(frozen=True)
class PreparedRun:
    config: RunConfig
    program: dspy.Module  # the student, every predictor with its LM
    lms: dict[str, Any]  # config LM name -> dspy.LM
    capabilities: dict[str, LMCapabilities]
    fields: ProgramFields
    split: Split
    metric: Callable
    small_predictors: tuple[str, ...]
    label_choices: dict[str, list[str]]
    runtimes: LMRuntimes  # each LM's parallel-call limit and grammar, found by model name (core.lms.runtime)

    @property
    def uses_local_cpu(self) -> bool:
        """True when any LM runs on this machine's CPU (such runs are queued one at a time)."""
        return any(c.local_cpu for c in self.capabilities.values())

    @property
    def context_lm(self) -> Any:
        """The LM for optimizers that need a context LM (MIPROv2's proposer): the first large one."""
        for assignment in self.config.predictors.values():
            if assignment.role == "large":
                return self.lms[assignment.lm]
        return next(iter(self.lms.values()))


def data_source_path(config: RunConfig, base_dir: Path | None = None) -> Path:
    source = config.data.source
    if isinstance(source, SampleSource):
        path = sample_path(source.name)
        if not path.is_file():
            available = sorted(p.name for p in path.parent.glob("*") if p.suffix in (".csv", ".json", ".jsonl"))
            raise DataError(f"data.source: no sample named {shown(source.name)}; available samples: {available}")
        return path
    if isinstance(source, FileSource):
        path = Path(source.path)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return path
    raise ConfigError("data.source: unknown kind; allowed kinds: sample, file")


MAX_CHOICES = 20
MAX_CHOICE_CHARS = 40


def label_choices(table: Table, config: RunConfig) -> dict[str, list[str]]:
    """Label fields that look like classes (2-20 short distinct values, far fewer than rows) -> values."""
    if config.data.label_choices == "off":
        return {}
    choices = {}
    for field in config.data.labels:
        column = config.data.mapping.get(field)
        values = sorted({row.get(column, "").strip() for row in table.rows} - {""})
        if (2 <= len(values) <= MAX_CHOICES and len(values) * 2 <= len(table.rows)
                and all(len(v) <= MAX_CHOICE_CHARS for v in values)):
            choices[field] = values
    return choices


def load_data(config: RunConfig, base_dir: Path | None = None) -> tuple[Table, Split]:
    table = load_table_from_path(data_source_path(config, base_dir))
    examples = build_examples(table, config.data.mapping, config.data.inputs, config.data.labels)
    split = split_examples(examples, *config.data.split.sizes(), seed=config.data.split.seed)
    return table, split


def _check_fields(config: RunConfig, fields: ProgramFields) -> None:
    missing_inputs = [f for f in fields.inputs if f not in config.data.inputs]
    extra_inputs = [f for f in config.data.inputs if f not in fields.inputs]
    if missing_inputs or extra_inputs:
        raise ConfigError(
            f"data.inputs {config.data.inputs} must be exactly the program's inputs {list(fields.inputs)}"
        )
    unknown = [f for f in config.data.labels if f not in fields.outputs]
    if unknown:
        raise ConfigError(f"data.labels {unknown} are not outputs of the program; its outputs: {list(fields.outputs)}")
    bad_metric = [f for f in config.metric_fields() if f not in config.data.labels]
    if bad_metric:
        raise ConfigError(f"metric.fields {bad_metric} are not label fields; labels: {config.data.labels}")


def _assign_lms(config: RunConfig, program: dspy.Module, lms: dict[str, Any]) -> None:
    named = dict(program.named_predictors())
    _check_predictor_names(config, list(named))
    for name, predictor in named.items():
        predictor.lm = lms[config.predictors[name].lm]


def _check_roles(config: RunConfig, caps: dict[str, LMCapabilities]) -> None:
    for pname, assignment in config.predictors.items():
        cap = caps.get(assignment.lm)
        if assignment.role == "small" and cap is not None and not cap.finetunable:
            raise LMError(
                f"predictor {shown(pname)} has the role 'small' but LM {shown(assignment.lm)} cannot be fine-tuned "
                f"({cap.reason}); give it the role 'large' or pick a fine-tunable LM"
            )


def _check_predictor_names(config: RunConfig, names: list[str]) -> None:
    missing = [n for n in names if n not in config.predictors]
    unknown = [n for n in config.predictors if n not in names]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"no LM/role assigned to {missing}")
        if unknown:
            parts.append(f"{unknown} are not predictors of the program")
        raise ConfigError(f"predictors: {'; '.join(parts)}; the program's predictors are {names}")


# --- the cheap check -------------------------------------------------------------------------------

_CACHE_SIZES = {"programs": 16, "tables": 4}  # a table may be 20 MiB: keep few
_cache_lock = threading.Lock()
_program_cache: OrderedDict[str, tuple[ProgramFields, list[str]]] = OrderedDict()
_table_cache: OrderedDict[tuple, Table] = OrderedDict()


def _stamp(path: Path) -> tuple:
    """What identifies a file's content cheaply: path, size and modification time."""
    try:
        st = path.stat()
    except OSError:
        return (str(path), None, None)
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _cached(cache: OrderedDict, key: Any, make: Callable[[], Any], size: int) -> Any:
    with _cache_lock:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = make()
    with _cache_lock:
        cache[key] = value
        while len(cache) > size:
            cache.popitem(last=False)
    return value


def _program_shape(config: RunConfig, base_dir: Path | None) -> tuple[ProgramFields, list[str]]:
    """The program's fields and predictor names; rebuilt only when its spec or its file changed."""
    spec = config.program
    key = json.dumps(spec.model_dump(mode="json"), sort_keys=True) + f"|{base_dir}|{config.allow_user_code}"
    if getattr(spec, "kind", None) == "user_file":
        key += repr(_stamp(Path(spec.path) if base_dir is None else Path(base_dir) / spec.path))

    def make() -> tuple[ProgramFields, list[str]]:
        program = build_program(spec, allow_user_code=config.allow_user_code, base_dir=base_dir)
        return module_fields(program), [name for name, _ in program.named_predictors()]

    return _cached(_program_cache, key, make, _CACHE_SIZES["programs"])


def _table(path: Path) -> Table:
    return _cached(_table_cache, _stamp(path), lambda: load_table_from_path(path), _CACHE_SIZES["tables"])


def check_run(config: RunConfig, *, base_dir: Path | None = None) -> list[str]:
    """What stops ``config`` from running, found locally and cheaply (empty when it can start).

    No LM is built, no factory runs, nothing goes over the network, and files are re-read only
    when they changed. ``prepare_run`` at Start checks the rest (endpoints, LMs).
    """
    try:
        fields, names = _program_shape(config, base_dir)
        _check_fields(config, fields)
        _check_predictor_names(config, names)
        # Factory LMs are built to learn their capabilities: that waits for Start.
        caps = {name: capabilities(spec) for name, spec in config.lms.items() if not isinstance(spec, FactoryLMSpec)}
        _check_roles(config, caps)
        table = _table(data_source_path(config, base_dir))
        examples = build_examples(table, config.data.mapping, config.data.inputs, config.data.labels)
        split_examples(examples, *config.data.split.sizes(), seed=config.data.split.seed)
        make_metric(config.metric.name, config.metric_fields())
    except StudioError as e:
        return [str(e)]
    return []


# --- the full preparation: checked at Start, built in the worker -----------------------------------


@dataclass(frozen=True)
class RunPlan:
    """What Start checked and computed for a run, as plain data (it crosses to the worker as JSON).

    ``config`` carries the typed API keys of its LMs (in memory only): ``to_dict`` leaves them out and
    ``from_dict`` takes them back as its own argument, so that they travel only where the caller sends them.
    """

    config: RunConfig
    split: Split = dataclasses.field(repr=False)
    label_choices: dict[str, list[str]]
    capabilities: dict[str, LMCapabilities]
    base_dir: Path | None = None

    @property
    def uses_local_cpu(self) -> bool:
        """True when any LM runs on this machine's CPU (such runs are queued one at a time)."""
        return any(c.local_cpu for c in self.capabilities.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types, without the typed API keys."""
        return {"config": config_to_dict(self.config), "split": self.split.to_dict(),
                "label_choices": self.label_choices,
                "capabilities": {name: asdict(c) for name, c in self.capabilities.items()},
                "base_dir": None if self.base_dir is None else str(self.base_dir)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, api_keys: dict[str, str] | None = None) -> RunPlan:
        """The plan ``to_dict`` wrote, with the typed ``api_keys`` (LM name -> key) back on its LMs."""
        return cls(config=parse_config(data["config"]).with_api_keys(api_keys or {}),
                   split=Split.from_dict(data["split"]), label_choices=data["label_choices"],
                   capabilities={name: LMCapabilities(**c) for name, c in data["capabilities"].items()},
                   base_dir=None if data["base_dir"] is None else Path(data["base_dir"]))


def local_paths_resolved(config: RunConfig, base_dir: Path | None) -> RunConfig:
    """``config`` with each ``local`` LM's relative ``path`` and ``weights`` made absolute against ``base_dir``
    (the configuration file's folder, as for a data file or a program file), so the run reads the same model
    whatever folder it is started or resumed from; unchanged without ``base_dir`` (the app's documents: the working
    folder) or when every path is absolute or starts with ``~``."""
    if base_dir is None:
        return config
    lms = {}
    for name, spec in config.lms.items():
        if isinstance(spec, LocalLMSpec):
            update = {field: str(base_dir / value) for field in ("path", "weights")
                      if (value := getattr(spec, field)) and not value.startswith("~") and not Path(value).is_absolute()}
            spec = spec.model_copy(update=update) if update else spec
        lms[name] = spec
    return config if lms == dict(config.lms) else config.model_copy(update={"lms": lms})


def plan_run(config: RunConfig, *, base_dir: Path | None = None) -> RunPlan:
    """Check everything a run needs and read its data; raises a ``StudioError`` naming the first problem.

    Called when the user starts (or resumes) a run. The local checks come first; the configured
    endpoints are contacted last, once each, only when everything else is right.
    """
    register_config_secrets(config)  # its keys' values are redacted from every message from now on
    base_dir = None if base_dir is None else Path(base_dir).resolve()  # the worker runs elsewhere
    config = local_paths_resolved(config, base_dir)
    program = build_program(config.program, allow_user_code=config.allow_user_code, base_dir=base_dir)
    _check_fields(config, module_fields(program))
    _check_predictor_names(config, [name for name, _ in program.named_predictors()])
    caps = {name: capabilities(spec, allow_user_code=config.allow_user_code) for name, spec in config.lms.items()}
    _check_roles(config, caps)
    strategies = [config.strategy, *(config.sweep.strategies if config.sweep else [])]
    weights = any(config.step_kind(key) == "weight" for text in strategies for key in split_strategy(text))
    trained = {a.lm for a in config.predictors.values() if a.role == "small"} if weights else set()
    for name, spec in config.lms.items():
        if not isinstance(spec, FactoryLMSpec):  # capabilities() built each factory LM already
            # can it be set up (local, no call)? A local model's files and memory are checked here
            build_lm(name, spec, allow_user_code=config.allow_user_code, training=name in trained)
    table, split = load_data(config, base_dir)
    choices = label_choices(table, config)
    make_metric(config.metric.name, config.metric_fields())
    for spec in config.lms.values():
        if isinstance(spec, LiteLLMSpec) and spec.api_base:
            check_endpoint(spec.model, spec.api_base, resolve_api_key(spec))
    return RunPlan(config, split, choices, caps, base_dir)


def build_run(plan: RunPlan) -> PreparedRun:
    """The in-memory objects of a checked ``plan``: program with its LMs, runtimes and metric.

    Nothing here leaves the machine or reads the data: ``plan_run`` did that once, at Start.
    """
    config = plan.config
    register_config_secrets(config)
    program = build_program(config.program, allow_user_code=config.allow_user_code, base_dir=plan.base_dir)
    fields = module_fields(program)
    _check_fields(config, fields)  # the program's file may have changed since Start
    lms = {name: build_lm(name, spec, allow_user_code=config.allow_user_code) for name, spec in config.lms.items()}
    runtimes = LMRuntimes.for_lms(lms, {name: runtime_for_spec(name, config.lms[name],
                                                               plan.capabilities[name].parallel_calls)
                                        for name in lms})
    _assign_lms(config, program, lms)
    apply_label_choices(program, plan.label_choices)
    metric = make_metric(config.metric.name, config.metric_fields())
    small = tuple(n for n, a in config.predictors.items() if a.role == "small")
    return PreparedRun(config, program, lms, plan.capabilities, fields, plan.split, metric, small,
                       plan.label_choices, runtimes)


def prepare_run(config: RunConfig, *, base_dir: Path | None = None) -> PreparedRun:
    """``plan_run`` then ``build_run`` in this process (the CLI's and the tests' in-process runs)."""
    return build_run(plan_run(config, base_dir=base_dir))


def preflight(config: RunConfig, *, base_dir: Path | None = None) -> list[str]:
    """Problems that stop ``config`` from running (the cheap, local ``check_run``)."""
    return check_run(config, base_dir=base_dir)
