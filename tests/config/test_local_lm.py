"""The ``local`` LM kind in the configuration: its form (the files are checked when the LM is built)."""

from __future__ import annotations

import pytest

from core.config.defaults import default_config_dict
from core.config.schema import LocalLMSpec, parse_config
from core.errors import ConfigError


def with_local(**spec: object) -> dict:
    doc = default_config_dict()
    doc["lms"]["mine"] = {"kind": "local", **spec}
    return doc


def test_a_local_lm_parses_with_its_defaults() -> None:
    spec = parse_config(with_local(path="/models/Qwen2.5-0.5B-Instruct")).lms["mine"]
    assert isinstance(spec, LocalLMSpec)
    assert (spec.path, spec.weights, spec.quant, spec.temperature, spec.max_tokens) == (
        "/models/Qwen2.5-0.5B-Instruct", None, "Q4_K_M", 0.0, 512)
    assert spec.finetunable and not spec.is_gguf


def test_a_gguf_is_finetunable_only_with_its_weights() -> None:
    gguf = parse_config(with_local(path="/models/q.gguf")).lms["mine"]
    assert gguf.is_gguf and not gguf.finetunable
    assert parse_config(with_local(path="/models/q.GGUF", weights="/models/q")).lms["mine"].finetunable


def test_weights_are_only_for_a_gguf_path() -> None:
    with pytest.raises(ConfigError, match=r"lms\.mine\.local: weights is only for a \.gguf path"):
        parse_config(with_local(path="/models/folder", weights="/models/other"))


def test_quant_must_be_an_allowed_type() -> None:
    with pytest.raises(ConfigError, match=r"lms\.mine\.local\.quant: Input should be 'F32', 'F16', 'Q8_0', 'Q4_K_M', "
                                          r"'Q5_K_M' or 'Q6_K' \(got 'Q4_1'\)"):
        parse_config(with_local(path="/models/folder", quant="Q4_1"))


def test_path_is_required_and_unknown_fields_refused() -> None:
    with pytest.raises(ConfigError, match=r"lms\.mine\.local\.path: Field required"):
        parse_config(with_local())
    with pytest.raises(ConfigError, match=r"lms\.mine\.local\.model: unknown field; remove it"):
        parse_config(with_local(path="/m", model="x"))
