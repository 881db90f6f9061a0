"""llama.cpp's own converters run as subprocesses (core.lms.convert): the SmolLM2 folder the Studio caches -> a
GGUF llama.cpp serves; a missing converters folder, an unsupported architecture, a pickle adapter, a failing or
slow converter each give an LMError that says what is wrong."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from core.errors import LMError
from core.lms import catalog, convert
from core.lms.lora import ensure_hf_cache

KEY = "smollm2-135m"


class Lines(logging.Handler):
    """The records a logger received."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="session")
def smollm2_f16(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The cached SmolLM2 HF folder converted to f16 once, with the log records of the conversion."""
    folder = ensure_hf_cache(KEY)
    log = logging.getLogger("tests.convert.smollm2")
    log.setLevel(logging.DEBUG)
    lines = Lines()
    log.addHandler(lines)
    out = tmp_path_factory.mktemp("convert") / "smollm2.f16.gguf"
    started = time.monotonic()
    try:
        path = convert.hf_to_gguf(folder, out, log=log)
    finally:
        log.removeHandler(lines)
    return {"folder": folder, "path": path, "seconds": time.monotonic() - started, "records": lines.records}


@pytest.mark.slow
def test_the_cached_smollm2_folder_converts_to_an_f16_gguf_of_the_shipped_model(smollm2_f16: dict) -> None:
    import gguf

    path = smollm2_f16["path"]
    assert path.is_file() and not list(path.parent.glob("*.partial"))
    ours, shipped = gguf.GGUFReader(path), gguf.GGUFReader(catalog.gguf_path(KEY))
    assert ours.fields["general.architecture"].contents() == "llama"
    assert ours.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_F16)
    template = ours.fields["tokenizer.chat_template"].contents()
    assert template == (smollm2_f16["folder"] / "chat_template.jinja").read_text(encoding="utf-8")
    assert template == shipped.fields["tokenizer.chat_template"].contents()
    assert len(ours.tensors) == len(shipped.tensors) == 272
    assert [t.name for t in ours.tensors] == [t.name for t in shipped.tensors]
    # the converter's own lines went to the given logger at DEBUG; the summary at INFO
    converter = [r for r in smollm2_f16["records"] if r.levelno == logging.DEBUG and "convert_hf_to_gguf.py:" in
                 r.getMessage()]
    assert any("Model architecture: LlamaForCausalLM" in r.getMessage() for r in converter)
    assert [r.levelno for r in smollm2_f16["records"]].count(logging.INFO) == 1


@pytest.mark.slow
def test_llama_cpp_loads_the_converted_gguf_and_tokenizes_as_the_shipped_one(smollm2_f16: dict) -> None:
    from llama_cpp import Llama

    prompt = catalog.render_prompt(KEY, [{"role": "system", "content": "Classify the ticket."},
                                         {"role": "user", "content": "I was charged twice — ünïcode, \ttabs  too."}])
    tokens = [Llama(model_path=str(path), vocab_only=True, verbose=False).tokenize(prompt.encode(), add_bos=True,
                                                                                  special=True)
              for path in (smollm2_f16["path"], catalog.gguf_path(KEY))]
    assert len(tokens[0]) > 20 and tokens[0] == tokens[1]


def test_supported_architectures_include_the_three_the_studio_tests() -> None:
    supported = convert.supported_architectures()
    assert isinstance(supported, frozenset)
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM", "Gemma3ForCausalLM"} <= supported
    assert convert.supported_architectures() is supported  # cached


def fake_converters(tmp_path: Path, script: str = "import sys\nsys.exit(0)\n") -> Path:
    """A converters folder whose registrations are read from text; importing its modules would fail."""
    folder = tmp_path / "converters"
    (folder / "conversion").mkdir(parents=True)
    (folder / convert.HF_SCRIPT).write_text(script)
    (folder / "conversion" / "__init__.py").write_text(
        'raise ImportError("never imported")\nTEXT_MODEL_MAP: dict[str, str] = {"AForCausalLM": "a", "BModel": "a"}\n')
    (folder / "conversion" / "a.py").write_text(
        'raise ImportError("never imported")\n'
        '@ModelBase.register(\n    "AForCausalLM",  # a comment\n    "BModel",\n)\nclass A(TextModel):\n    pass\n\n'
        '@ModelBase.register("CForConditionalGeneration")\nclass C(MmprojModel):\n    pass\n')
    return folder


def test_architectures_are_read_from_the_register_lines_without_importing_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(convert.ENV_DIR, str(fake_converters(tmp_path)))
    # C is registered as a projector only (not in TEXT_MODEL_MAP): no text model converts from it
    assert convert.supported_architectures() == {"AForCausalLM", "BModel"}


def test_a_missing_converters_folder_names_make_converters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(convert.ENV_DIR, str(tmp_path / "nowhere"))
    with pytest.raises(LMError, match=r"not in STUDIO_LLAMA_CONVERTERS=.*nowhere.*: run `make converters`"):
        convert.converters_dir()
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(LMError, match="make converters"):
        convert.hf_to_gguf(folder, tmp_path / "out.gguf")


@pytest.mark.parametrize(("config", "message"), [
    ({"architectures": ["FancyNewForCausalLM"]}, r"architecture 'FancyNewForCausalLM' of .* cannot be converted by "
                                                 r"llama.cpp's converter \(it converts \d+ architectures, e\.g\. "
                                                 r"LlamaForCausalLM"),
    ({"model_type": "llama"}, r"config.json names no architectures \(got None\)"),
])
def test_an_unsupported_or_unnamed_architecture_is_refused_before_converting(
        tmp_path: Path, config: dict, message: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LMError, match=message):
        convert.hf_to_gguf(folder, tmp_path / "out.gguf")
    assert not list(tmp_path.glob("out.gguf*"))


def test_a_failing_converter_gives_its_last_error_line_and_leaves_no_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture) -> None:
    script = ("import logging, sys\nlogging.basicConfig(level=logging.INFO)\nlog = logging.getLogger('hf-to-gguf')\n"
              "log.info('Loading model: x')\nlog.error('Model FooForCausalLM is not supported')\n"
              "print('some trailing chatter')\nsys.exit(1)\n")
    monkeypatch.setenv(convert.ENV_DIR, str(fake_converters(tmp_path, script)))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["AForCausalLM"]}))
    with pytest.raises(LMError, match=r"failed \(convert_hf_to_gguf\.py, exit code 1\): Model FooForCausalLM is not "
                                      r"supported$"):
        convert.hf_to_gguf(folder, tmp_path / "out.gguf")
    assert not list(tmp_path.glob("out.gguf*"))
    out, err = capfd.readouterr()
    assert "not supported" not in out + err and "chatter" not in out + err  # never on the console


def test_a_converter_past_its_time_limit_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(convert.ENV_DIR, str(fake_converters(tmp_path, "import time\ntime.sleep(60)\n")))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["AForCausalLM"]}))
    started = time.monotonic()
    with pytest.raises(LMError, match=r"took longer than 1 s and was stopped"):
        convert.hf_to_gguf(folder, tmp_path / "out.gguf", timeout_s=1)
    assert time.monotonic() - started < 30
    assert not list(tmp_path.glob("out.gguf*"))


def test_a_lora_adapter_must_be_safetensors(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with pytest.raises(LMError, match="holds no adapter_config.json: not a PEFT LoRA adapter"):
        convert.lora_to_gguf(adapter, tmp_path, tmp_path / "a.gguf")
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(LMError, match=r"no adapter_model.safetensors \(adapter_model.bin is a pickle file: refused\)"):
        convert.lora_to_gguf(adapter, tmp_path, tmp_path / "a.gguf")
