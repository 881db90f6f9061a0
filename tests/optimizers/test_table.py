"""The step types a strategy can use: declared once (``core.config.steps``), given behaviour by the
table of optimizers (``core.optimizers.table``), and read from there by the configuration, the
Strategy page's document, the estimate and the runner. A row added from outside the package (no
source file edited) is enough for a strategy to use it end to end on the scripted LMs."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.config.steps import STEP_TYPES, step_kind
from core.document import OPTIMIZER_LABELS, add_optimizer, new_document
from core.errors import ConfigError, StrategyError
from core.optimizers.table import OPTIMIZERS, get_optimizer
from core.plan.estimate import estimate
from tests.step_type_helpers import ROOT, plugin_env

KINDS = {"random_search": "prompt", "mipro": "prompt", "gepa": "prompt", "finetune": "weight"}


def config_with(step: dict) -> dict:
    doc = scripted_config_dict("analyze_classify")
    doc["optimizers"] = {"s": step}
    doc["strategy"] = "s"
    return doc


def test_the_four_step_types_and_their_kinds() -> None:
    assert list(STEP_TYPES) == list(OPTIMIZERS) == list(KINDS)
    assert {key: step_kind(key) for key in KINDS} == KINDS
    assert OPTIMIZER_LABELS == {"random_search": "prompt · random_search", "mipro": "prompt · mipro",
                                "gepa": "prompt · gepa", "finetune": "weight · finetune"}


@pytest.mark.parametrize("key", sorted(KINDS))
def test_each_type_configures_with_its_defaults_refuses_unknown_settings_and_estimates(key: str) -> None:
    config = parse_config(config_with({"type": key}))
    settings = config.optimizers["s"].settings
    assert type(settings) is STEP_TYPES[key].settings and settings.model_fields_set == set()  # all defaults
    assert config.step_kind("s") == KINDS[key]
    step = estimate(config).steps[-1]
    assert step.optimizer == key and step.calls > 0
    with pytest.raises(ConfigError, match=f"optimizers.s.{key}.settings.not_a_setting: unknown field"):
        parse_config(config_with({"type": key, "settings": {"not_a_setting": 1}}))


def test_unknown_types_are_named_with_the_allowed_ones() -> None:
    with pytest.raises(KeyError, match="allowed: random_search, mipro, gepa, finetune"):
        get_optimizer("nope")
    with pytest.raises(ConfigError, match="random_search.*mipro.*gepa.*finetune"):
        parse_config(config_with({"type": "nope"}))
    with pytest.raises(StrategyError, match="allowed: random_search, mipro, gepa, finetune"):
        add_optimizer(new_document(), "z", "nope")


def test_a_declared_type_without_behaviour_stops_the_import_of_the_table() -> None:
    code = ("from core.config.steps import STEP_TYPES, StepType, Settings\n"
            "STEP_TYPES['zero_shot'] = StepType('zero_shot', 'prompt', 'no behaviour', Settings)\n"
            "import core.optimizers.table\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert ("RuntimeError: optimizers ['random_search', 'mipro', 'gepa', 'finetune'] do not match the declared step "
            "types ['random_search', 'mipro', 'gepa', 'finetune', 'zero_shot']") in done.stderr


ZERO_SHOT = textwrap.dedent('''
    """A test step type: drops the demos and sets one instruction on every predictor."""
    from pydantic import Field
    from dspy.teleprompt import Teleprompter

    from core.config.steps import Settings, StepType
    from core.optimizers.entry import StepCost


    class ZeroShotSettings(Settings):
        instruction: str = Field("Answer carefully.", max_length=200)


    class ZeroShot(Teleprompter):
        def __init__(self, instruction):
            self.instruction = instruction

        def compile(self, student, trainset=None, **kwargs):
            program = student.deepcopy()
            for _, predictor in program.named_predictors():
                predictor.demos = []
                predictor.signature = predictor.signature.with_instructions(self.instruction)
            return program


    DECLARATION = StepType("zero_shot", "prompt", "drops demos, sets one instruction", ZeroShotSettings)


    def build(settings, ctx):
        return ZeroShot(settings.instruction)


    def estimate(settings, ctx):
        return StepCost(ctx.predictors * ctx.val)
''')

RUN = textwrap.dedent('''
    import json, sys
    from core.config.schema import parse_config
    from core.config.defaults import scripted_config_dict
    from core.document import OPTIMIZER_LABELS, SETTINGS_MODELS
    from core.plan.estimate import estimate
    from core.run import RunManager
    from core.store import Store

    doc = scripted_config_dict("classifier")
    doc["optimizers"] = {"z": {"type": "zero_shot", "settings": {"instruction": "Pick the label."}},
                         "p": {"type": "random_search"}}
    doc["strategy"] = "z -> p"
    config = parse_config(doc)
    manager = RunManager(Store(sys.argv[1]))
    run_id = manager.start(config)
    assert manager.wait(run_id, timeout=120)
    run = manager.store.get_run(run_id)
    rounds = manager.store.list_rounds(run_id)
    print(json.dumps({"status": run.status.value, "error": run.error, "label": OPTIMIZER_LABELS["zero_shot"],
                      "settings": SETTINGS_MODELS["zero_shot"].__name__, "kind": config.step_kind("z"),
                      "estimate": [s.optimizer for s in estimate(config).steps],
                      "rounds": [(r.strategy, r.optimizer, r.instructions, r.demos) for r in rounds]}))
''')


def test_a_row_added_from_outside_the_package_is_all_a_new_step_type_needs(tmp_path: Path) -> None:
    """A declaration and its behaviour added at start-up, before anything reads the tables (no file
    of core/ edited): a run (worker process included) uses it, and the document and the estimate list it."""
    (tmp_path / "run.py").write_text(RUN)
    done = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "runs.db")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**plugin_env(tmp_path / "plugin", "zero_shot", ZERO_SHOT),
                               "STUDIO_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == "finished", out["error"]
    assert (out["label"], out["settings"], out["kind"]) == ("prompt · zero_shot", "ZeroShotSettings", "prompt")
    assert out["estimate"] == ["evaluation", "zero_shot", "random_search"]
    strategy, optimizer, instructions, demos = out["rounds"][1]
    assert (strategy, optimizer) == ("z", "zero_shot")
    assert set(instructions.values()) == {"Pick the label."} and set(demos.values()) == {0}
