"""The table of optimizers is the one place an optimizer is declared: config, Strategy page document,
estimate and runner all read it. A new row (in a fresh interpreter, before anything else imports the
table) is enough for a strategy to use it end to end on the scripted LMs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.config import STEP_MODELS, optimizer_kind, parse_config
from core.defaults import scripted_config_dict
from core.document import OPTIMIZER_LABELS, SETTINGS_MODELS
from core.estimate import estimate
from core.optimizers.table import OPTIMIZERS, get_optimizer

ROOT = Path(__file__).resolve().parents[1]


def test_every_consumer_reads_the_table() -> None:
    assert set(STEP_MODELS) == set(SETTINGS_MODELS) == set(OPTIMIZER_LABELS) == set(OPTIMIZERS)
    for key, row in OPTIMIZERS.items():
        assert optimizer_kind(key) == row.kind and SETTINGS_MODELS[key] is row.settings
        assert OPTIMIZER_LABELS[key] == f"{row.kind} · {key}"


@pytest.mark.parametrize("key", sorted(OPTIMIZERS))
def test_each_row_configures_and_estimates(key: str) -> None:
    doc = scripted_config_dict("analyze_classify")
    doc["optimizers"] = {"s": {"type": key}}
    doc["strategy"] = "s"
    config = parse_config(doc)
    assert config.optimizers["s"].settings == OPTIMIZERS[key].settings()  # defaults from the settings model
    step = estimate(config).steps[-1]
    assert step.optimizer == key and step.calls > 0


def test_unknown_keys_are_named_with_the_allowed_ones() -> None:
    with pytest.raises(KeyError, match="allowed: random_search, mipro, finetune"):
        get_optimizer("nope")
    doc = scripted_config_dict("analyze_classify")
    doc["optimizers"] = {"p": {"type": "nope"}}
    doc["strategy"] = "p"
    with pytest.raises(Exception, match="random_search.*mipro.*finetune"):
        parse_config(doc)


ZERO_SHOT = textwrap.dedent('''
    """A test optimizer: drops the demos and sets one instruction on every predictor."""
    from pydantic import Field
    from dspy.teleprompt import Teleprompter

    from core.optimizers.entry import Optimizer, Settings, StepCost


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


    OPTIMIZER = Optimizer(key="zero_shot", kind="prompt", summary="drops demos, sets one instruction",
                          settings=ZeroShotSettings, build=lambda s, ctx: ZeroShot(s.instruction),
                          estimate=lambda s, ctx: StepCost(ctx.predictors * ctx.val))
''')

RUN = textwrap.dedent('''
    import json, sys
    from core.config import parse_config
    from core.defaults import scripted_config_dict
    from core.document import OPTIMIZER_LABELS, SETTINGS_MODELS
    from core.estimate import estimate
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
                      "settings": SETTINGS_MODELS["zero_shot"].__name__,
                      "estimate": [s.optimizer for s in estimate(config).steps],
                      "rounds": [(r.strategy, r.optimizer, r.instructions) for r in rounds]}))
''')


def test_a_new_module_and_one_row_are_all_a_new_optimizer_needs(tmp_path: Path) -> None:
    """In a copy of the code: add core/optimizers/zero_shot.py and its row in table.py, nothing else;
    a run (worker process included) then uses it, and the pages' document and the estimate list it."""
    repo = tmp_path / "repo"
    for folder in ("core", "data"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "core" / "optimizers" / "zero_shot.py").write_text(ZERO_SHOT)
    table = repo / "core" / "optimizers" / "table.py"
    text = table.read_text()
    row = "(random_search.OPTIMIZER, mipro.OPTIMIZER, finetune.OPTIMIZER)"
    assert text.count(row) == 1
    table.write_text(text.replace("import finetune, mipro, random_search", "import finetune, mipro, random_search, zero_shot")
                     .replace(row, "(random_search.OPTIMIZER, mipro.OPTIMIZER, finetune.OPTIMIZER, zero_shot.OPTIMIZER)"))
    (tmp_path / "run.py").write_text(RUN)
    done = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "runs.db")], cwd=repo,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(repo), "STUDIO_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == "finished", out["error"]
    assert out["label"] == "prompt · zero_shot" and out["settings"] == "ZeroShotSettings"
    assert out["estimate"] == ["evaluation", "zero_shot", "random_search"]
    strategy, optimizer, instructions = out["rounds"][1]
    assert (strategy, optimizer) == ("z", "zero_shot")
    assert set(instructions.values()) == {"Pick the label."}
