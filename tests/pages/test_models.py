"""The Models page's "Your own model": a path inspected (nothing converted) and shown before it joins the
configuration, or the check's message; the local LM it adds is one the other pages can assign."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.config.schema import LocalLMSpec, RunDraft
from core.document import assign_predictors, new_document
from core.lms import local
from core.lms.lora import ensure_hf_cache

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _home(studio_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(ROOT)
    return studio_home


@pytest.fixture(scope="module")
def smollm2_folder() -> Path:
    """The SmolLM2 Hugging Face folder the Studio caches (a real user-style model folder)."""
    return ensure_hf_cache("smollm2-135m")


def models_page() -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "models.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def inspect(at: AppTest, path: str) -> AppTest:
    next(t for t in at.text_input if t.label == "Model folder or .gguf file").set_value(path).run()
    next(b for b in at.button if b.label == "Inspect").click().run()
    assert not at.exception, at.exception
    return at


def found_rows(at: AppTest) -> dict[str, str]:
    table = at.dataframe[-1].value
    return dict(zip(table["what"], table["found"], strict=True))


def test_a_model_folder_is_inspected_shown_and_used_as_a_local_lm(smollm2_folder: Path) -> None:
    at = inspect(models_page(), str(smollm2_folder))
    assert [e.value for e in at.error] == []
    assert any("smollm2-135m-hf" in s.value and "can be used" in s.value for s in at.success)
    found = found_rows(at)
    assert found["architecture"] == "LlamaForCausalLM"
    assert found["parameters"] == "134.5 M"
    assert found["chat template"] == "found (a turn ends with '<|im_end|>')"
    assert found["fine-tunable"].startswith("yes")
    assert "model-Q4_K_M.gguf" in found["served from"]
    assert "to serve as Q4_K_M" in found["memory"] and "free now" in found["memory"]

    next(t for t in at.text_input if t.label == "Name in this configuration" and t.value == "mine").set_value("own")
    next(b for b in at.button if b.label == "Use in this configuration").click().run()
    assert not at.exception, at.exception
    draft = at.session_state["config_doc"]
    assert type(draft) is RunDraft
    assert draft.lms["own"] == LocalLMSpec(kind="local", path=str(smollm2_folder))
    # the LM table lists it, fine-tunable, and the Program page's rule lets it take the role 'small'
    table = at.dataframe[0].value.set_index("name")
    assert table.loc["own", "kind"] == "local" and bool(table.loc["own", "fine-tunable"])
    _, refused = assign_predictors(draft, [{"predictor": "classify", "lm": "own", "role": "small"}])
    assert refused == []


def test_a_bad_folder_shows_the_check_s_message_and_adds_nothing(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    at = inspect(models_page(), str(tmp_path))
    assert [e.value for e in at.error] == [
        f"{tmp_path} has no config.json: not a Hugging Face model folder; allowed: a folder with config.json, "
        "model.safetensors, or model.safetensors.index.json with its shards, a tokenizer and a chat template, "
        "or a .gguf file"]
    assert not any(b.label == "Use in this configuration" for b in at.button)
    assert at.session_state["config_doc"].lms == new_document().lms


def test_convert_now_makes_the_gguf_in_the_background(smollm2_folder: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cache" / "model-Q4_K_M.gguf"
    converted = threading.Event()

    def fake_conversion(key: str) -> Path:  # what local_gguf does, without the converter's seconds
        assert local.local_model(key) is not None  # the page registered the inspected model first
        converted.wait(30)
        target.parent.mkdir()
        target.write_bytes(b"GGUF")
        return target

    monkeypatch.setattr(local, "gguf_target", lambda model: target)
    monkeypatch.setattr(local, "local_gguf", fake_conversion)
    at = inspect(models_page(), str(smollm2_folder))
    assert "(not yet: llama.cpp's converter makes it on first use" in found_rows(at)["served from"]
    next(b for b in at.button if b.label == "Convert now").click().run()
    assert any("Converting in the background" in i.value for i in at.info)
    converted.set()
    for _ in range(100):
        if target.is_file():
            break
        time.sleep(0.1)
    next(b for b in at.button if b.label == "Refresh").click().run()
    assert f"Converted: {target.name} is in the model cache." in [c.value for c in at.caption]
    assert not any(b.label == "Convert now" for b in at.button)


def test_the_models_page_shows_the_calibration_and_measures_only_on_the_button(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not calibrated at first (factors 1.0, the reason); the button runs the probes (faked here: calls 1.45x the
    reference machine's time, training rows 1.3x) and the page shows the factors, the machine and the build."""
    import json
    import sys

    from core.lms import doctor
    from core.lms.doctor import Check
    from core.plan import calibration

    ran = []

    def reports(payload: dict, name: str) -> Check:
        code = (f"import json, os; open(os.environ[{doctor.RESULT_ENV!r}], 'w').write("
                f"{json.dumps({'ok': True, **payload})!r})")
        return Check(name, (sys.executable, "-c", code), 60)

    def checks() -> list[Check]:
        ran.append(1)
        return [reports({"median_s": 0.538, "threads": 2}, "calibrate calls"),
                reports({"row_seconds": 0.78, "torch_threads": 2}, "calibrate training")]

    monkeypatch.setattr(calibration, "probe_checks", checks)
    at = models_page()
    assert ran == []  # never on render
    assert any(i.value.startswith("Not calibrated: not measured on this machine yet") for i in at.info)
    next(b for b in at.button if b.label == "Measure this machine's speed").click().run()
    assert not at.exception and ran == [1]
    assert any("Calls here take 1.45x the reference machine's time and training rows 1.30x: estimates are scaled."
               == s.value for s in at.success)
    table = next(d.value for d in at.dataframe if list(d.value.columns) == ["what", "value"])
    shown = dict(zip(table["what"], table["value"], strict=True))
    assert shown["calls"] == "x1.45: 0.538 s per 150-character call (reference 0.371 s)"
    assert shown["training"].startswith("x1.30: 0.780 s per row of 384 tokens")
    assert shown["build"].startswith("llama-cpp-python ") and "cores" in shown["machine"]
    at.run()
    assert ran == [1] and any("1.45x" in s.value for s in at.success)  # read from the cache, not measured again
