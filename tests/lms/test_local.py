"""The ``local`` LM kind: a model folder or .gguf on disk, checked before use, keyed by content, served by llama.cpp.

The real user folder is the SmolLM2 HF folder the Studio caches (``ensure_hf_cache``); bad folders are built in
tmp_path from its files (symlinked) with one thing removed or changed each.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.config.defaults import default_config_dict
from core.config.schema import LocalLMSpec, parse_config
from core.errors import LMError
from core.lms import catalog, local, model_files
from core.lms.gguf_export import QUANT_TYPES
from core.lms.registry import build_lm, capabilities

SMOL = "smollm2-135m"
MESSAGES = [
    {"role": "system", "content": "Answer with one word."},
    {"role": "user", "content": "Colour of the sky?"},
    {"role": "assistant", "content": "blue"},
    {"role": "user", "content": "And of grass?"},
]


@pytest.fixture(scope="session")
def smol_folder() -> Path:
    from core.lms.lora import ensure_hf_cache

    return ensure_hf_cache(SMOL)


@pytest.fixture(autouse=True)
def _registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "_registered", {})  # each test registers its own models


def copy_of(folder: Path, target: Path, *, drop: tuple[str, ...] = ()) -> Path:
    """``folder``'s files symlinked into ``target`` (but ``drop``); small JSON files copied, so they can be edited."""
    target.mkdir()
    for path in folder.iterdir():
        if path.name in drop or path.name == "source.json":
            continue
        if path.suffix == ".json" and path.stat().st_size < 100_000:
            shutil.copy(path, target / path.name)
        else:
            (target / path.name).symlink_to(path)
    return target


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def smol_gguf() -> Path:
    return catalog.gguf_path(SMOL)


def test_quants_are_gguf_export_types_but_q4_1() -> None:
    assert local.QUANTS == tuple(q for q in QUANT_TYPES if q != "Q4_1")


# --- one message per bad model -----------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(LMError, match=r"does not exist; allowed: a Hugging Face model folder .* or a \.gguf file"):
        local.inspect_local(tmp_path / "nowhere")


def test_neither_folder_nor_gguf(tmp_path: Path) -> None:
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(LMError, match=r"neither a folder nor a \.gguf file; allowed"):
        local.inspect_local(tmp_path / "weights.txt")


def test_folder_without_config(smol_folder: Path, tmp_path: Path) -> None:
    folder = copy_of(smol_folder, tmp_path / "m", drop=("config.json",))
    with pytest.raises(LMError, match=r"has no config\.json: not a Hugging Face model folder"):
        local.inspect_local(folder)


def test_config_without_architectures(smol_folder: Path, tmp_path: Path) -> None:
    folder = copy_of(smol_folder, tmp_path / "m")
    edit_json(folder / "config.json", architectures=None)
    with pytest.raises(LMError, match=r"names no architectures .*LlamaForCausalLM"):
        local.inspect_local(folder)


def test_architecture_the_converter_does_not_support(smol_folder: Path, tmp_path: Path) -> None:
    folder = copy_of(smol_folder, tmp_path / "m")
    edit_json(folder / "config.json", architectures=["TimeMachineForCausalLM"])
    with pytest.raises(LMError, match=r"'TimeMachineForCausalLM' .* not one llama.cpp's converter supports "
                                      r"\(\d+ are, e\.g\. LlamaForCausalLM"):
        local.inspect_local(folder)


def test_pickle_weights_only_are_refused(smol_folder: Path, tmp_path: Path) -> None:
    folder = copy_of(smol_folder, tmp_path / "m", drop=("model.safetensors",))
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(LMError, match=r"pickle weights only \(\['pytorch_model\.bin'\]\): refused.*allowed weights: "
                                      r"model\.safetensors"):
        local.inspect_local(folder)


def test_no_weights(smol_folder: Path, tmp_path: Path) -> None:
    folder = copy_of(smol_folder, tmp_path / "m", drop=("model.safetensors",))
    with pytest.raises(LMError, match=r"holds no model weights; allowed weights: model\.safetensors, or "
                                      r"model\.safetensors\.index\.json"):
        local.inspect_local(folder)


def test_index_with_a_missing_shard(smol_folder: Path, tmp_path: Path) -> None:
    folder = copy_of(smol_folder, tmp_path / "m", drop=("model.safetensors",))
    (folder / "model-00001-of-00002.safetensors").symlink_to(smol_folder / "model.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(LMError, match=r"shards that are missing .*model-00002-of-00002\.safetensors"):
        local.inspect_local(folder)


def test_no_tokenizer(smol_folder: Path, tmp_path: Path) -> None:
    folder = copy_of(smol_folder, tmp_path / "m", drop=("tokenizer.json",))
    with pytest.raises(LMError, match=r"has no tokenizer; allowed: tokenizer\.json or tokenizer\.model"):
        local.inspect_local(folder)


def test_no_chat_template(smol_folder: Path, tmp_path: Path) -> None:
    folder = copy_of(smol_folder, tmp_path / "m", drop=("chat_template.jinja",))
    edit_json(folder / "tokenizer_config.json", chat_template=None)
    with pytest.raises(LMError, match=r"has no chat template; allowed: chat_template\.jinja, chat_template\.json or "
                                      r"a chat_template in tokenizer_config\.json"):
        local.inspect_local(folder)


def test_chat_template_from_tokenizer_config(smol_folder: Path, tmp_path: Path) -> None:
    folder = copy_of(smol_folder, tmp_path / "m", drop=("chat_template.jinja",))
    edit_json(folder / "tokenizer_config.json", chat_template=(smol_folder / "chat_template.jinja").read_text())
    key = local.register_local(local.inspect_local(folder))
    assert catalog.render_prompt(key, MESSAGES) == catalog.render_prompt(SMOL, MESSAGES)


def test_larger_than_free_memory(smol_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "available_memory", lambda: 50_000_000)
    with pytest.raises(LMError, match=r"0\.13 B parameters\) needs about 103 MB of memory served as Q4_K_M, but only "
                                      r"50 MB is free; .*allowed: F32, F16, Q8_0, Q4_K_M"):
        local.inspect_local(smol_folder)


def test_training_needs_more_memory(smol_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "available_memory", lambda: 500_000_000)
    assert local.inspect_local(smol_folder).finetunable  # serving fits in 500 MB
    with pytest.raises(LMError, match=r"needs about 1\.2 GB of memory served as Q4_K_M and fine-tuned, but only "
                                      r"500 MB is free"):
        local.inspect_local(smol_folder, training=True)


def test_weights_only_with_a_gguf_path(smol_folder: Path) -> None:
    with pytest.raises(LMError, match=r"weights .* is only for a \.gguf path"):
        local.inspect_local(smol_folder, weights=smol_folder)


def test_quant_not_allowed(smol_folder: Path) -> None:
    with pytest.raises(LMError, match=r"quant 'Q4_1' is not allowed for a local model; allowed: F32, F16, Q8_0"):
        local.inspect_local(smol_folder, quant="Q4_1")


# --- what a good folder gives ----------------------------------------------------------------------------------


def test_folder_model(smol_folder: Path) -> None:
    model = local.inspect_local(smol_folder)
    assert (model.arch, model.n_params, model.finetunable, model.hf_dir, model.gguf_source) == (
        "LlamaForCausalLM", 134_515_008, True, smol_folder.resolve(), None)
    assert model.key == f"smollm2-135m-hf-{model.content_hash[:8]}"
    assert local.inspect_local(smol_folder, quant="Q8_0").key == f"smollm2-135m-hf-q8_0-{model.content_hash[:8]}"


def test_content_key_is_stable_and_cached(smol_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = local.inspect_local(smol_folder)
    copy = copy_of(smol_folder, tmp_path / "same")  # the weights symlinked, the small files copied
    hashed: list[str] = []
    sha256 = model_files._sha256
    monkeypatch.setattr(model_files, "_sha256", lambda path: hashed.append(path.name) or sha256(path))
    again = local.inspect_local(copy)
    assert again.content_hash == first.content_hash
    assert again.key == first.key.replace("smollm2-135m-hf", "same")
    assert "model.safetensors" not in hashed and "config.json" in hashed  # the weights' digest came from the cache
    hashed.clear()
    assert local.inspect_local(copy).key == again.key and hashed == []  # a second inspect reads no file
    changed = copy_of(smol_folder, tmp_path / "changed")
    edit_json(changed / "config.json", rms_norm_eps=1e-6)  # a different model: a different key
    assert local.inspect_local(changed).content_hash != first.content_hash


def test_render_prompt_matches_the_shipped_smollm2(smol_folder: Path) -> None:
    key = local.register_local(local.inspect_local(smol_folder))
    for messages in (MESSAGES, MESSAGES[1:], MESSAGES[:3]):
        for add in (True, False):
            assert catalog.render_prompt(key, messages, add) == catalog.render_prompt(SMOL, messages, add)
    assert catalog.end_of_turn(key) == "<|im_end|>"
    assert catalog.stop_strings(key) == ["<|im_end|>"]
    assert catalog.render_training_example(key, MESSAGES[:3]) == catalog.render_training_example(SMOL, MESSAGES[:3])


def test_catalogue_names_of_a_local_model(smol_folder: Path) -> None:
    key = local.register_local(local.inspect_local(smol_folder))
    name = catalog.model_name(key)
    tuned = catalog.finetuned_name(key, "1a2b3c4d")
    assert name == f"local/{key}" and tuned == f"local/{key}:ft-1a2b3c4d"
    assert catalog.is_embedded_name(name) and catalog.is_embedded_name(tuned)
    assert (catalog.model_key(name), catalog.model_key(tuned)) == (key, key)
    assert catalog.base_key(name) == key and catalog.base_key(tuned) is None and catalog.shipped_key(name) is None
    assert catalog.safe_name(tuned) == f"{key}_ft-1a2b3c4d"
    assert catalog.hf_folder(key) == smol_folder.resolve() and catalog.hf_folder(SMOL) is None
    from core.lms.lora.base_weights import ensure_hf_cache

    assert ensure_hf_cache(key) == smol_folder.resolve()  # the fine-tuning reads the user's folder
    with pytest.raises(LMError, match=r"unknown embedded model 'nope-1234abcd'; allowed models are: .*, or the local "
                                      rf"models {key}"):
        catalog.model_key("local/nope-1234abcd")


def test_unregistered_local_key() -> None:
    with pytest.raises(LMError, match=r"not registered in this process; registered: none"):
        local.local_gguf("mine-1234abcd")


# --- a .gguf file ----------------------------------------------------------------------------------------------


def test_gguf_only_is_inference_only() -> None:
    model = local.inspect_local(smol_gguf())
    assert (model.arch, model.finetunable, model.hf_dir, model.gguf_source) == ("llama", False, None, smol_gguf())
    key = local.register_local(model)
    assert catalog.gguf_path(key) == smol_gguf()  # served as it is
    assert catalog.end_of_turn(key) == "<|im_end|>"
    assert catalog.render_prompt(key, MESSAGES) == catalog.render_prompt(SMOL, MESSAGES)
    with pytest.raises(LMError, match=r"is a GGUF file only .*it cannot be fine-tuned; give its Hugging Face folder "
                                      "as 'weights'"):
        catalog.hf_folder(key)
    spec = LocalLMSpec(kind="local", path=str(smol_gguf()))
    caps = capabilities(spec)
    assert (caps.finetunable, caps.local_cpu) == (False, True) and "inference only" in caps.reason


def test_gguf_with_its_weights_is_finetunable(smol_folder: Path) -> None:
    model = local.inspect_local(smol_gguf(), weights=smol_folder)
    assert (model.finetunable, model.hf_dir, model.gguf_source) == (True, smol_folder.resolve(), smol_gguf())
    assert capabilities(LocalLMSpec(kind="local", path=str(smol_gguf()), weights=str(smol_folder))).finetunable


def test_gguf_with_weights_of_another_model(smol_folder: Path, tmp_path: Path) -> None:
    folder = copy_of(smol_folder, tmp_path / "other")
    edit_json(folder / "config.json", num_hidden_layers=12)
    with pytest.raises(LMError, match=r"is not the model of SmolLM2-135M-Instruct.Q4_1.gguf: layers 12 in its "
                                      r"config\.json, 30 in the GGUF"):
        local.inspect_local(smol_gguf(), weights=folder)


def test_small_role_on_a_gguf_only_model_is_refused_before_the_run() -> None:
    from core.plan.prepare import check_run

    doc = default_config_dict()
    doc["lms"]["small"] = {"kind": "local", "path": str(smol_gguf())}
    problems = check_run(parse_config(doc))
    small = next(p for p, a in doc["predictors"].items() if a["role"] == "small")
    assert len(problems) == 1
    assert problems[0].startswith(f"predictor '{small}' has the role 'small' but LM 'small' cannot be fine-tuned "
                                  "(a .gguf file is inference only; to fine-tune it, give the Hugging Face folder")


def test_start_checks_that_a_small_local_model_fits_for_training(smol_folder: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from core.plan.prepare import plan_run

    monkeypatch.setattr(local, "available_memory", lambda: 500_000_000)  # serving fits, training does not
    doc = default_config_dict()
    doc["lms"]["small"] = {"kind": "local", "path": str(smol_folder)}
    with pytest.raises(LMError, match=r"^LM 'small': model smollm2-135m-hf \(Q4_K_M\) .* served as Q4_K_M and "
                                      r"fine-tuned, but only 500 MB is free"):
        plan_run(parse_config(doc))
    doc["strategy"] = "p"  # no weight step: the small model is only served
    plan = plan_run(parse_config(doc))
    assert plan.capabilities["small"].finetunable and plan.uses_local_cpu


def test_register_local_gguf_for_a_bundle() -> None:
    model = local.register_local_gguf("smol-1234abcd", smol_gguf(), "SmolLM2 from a bundle")
    assert local.local_model("smol-1234abcd") == model and not model.finetunable
    assert catalog.gguf_path("smol-1234abcd") == smol_gguf()
    assert catalog.model_name("smol-1234abcd") == "local/smol-1234abcd"
    with pytest.raises(LMError, match=r"must be lowercase letters"):
        local.register_local_gguf("Bad Key", smol_gguf())


# --- converted and served ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_folder_converts_once_and_answers_with_the_grammar(smol_folder: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import dspy

    monkeypatch.setenv("STUDIO_MODEL_CACHE", str(tmp_path / "cache"))  # really convert, into this test's cache
    lm = build_lm("mine", LocalLMSpec(kind="local", path=str(smol_folder)))
    key = catalog.model_key(lm.model)
    assert lm.model == f"local/{key}"
    path = catalog.gguf_path(key)
    model = local.local_model(key)
    assert path == tmp_path / "cache" / "local" / model.content_hash / "model-Q4_K_M.gguf" and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == [".lock", "model-Q4_K_M.gguf", "source-Q4_K_M.json"]
    monkeypatch.setattr(local, "_convert", lambda *a: pytest.fail("converted twice"))
    assert catalog.gguf_path(key) == path

    class Sky(dspy.Signature):
        """Name the colour of the sky on a clear day."""

        question: str = dspy.InputField()
        colour: str = dspy.OutputField()

    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):
        answer = dspy.Predict(Sky)(question="What colour is the sky?")
    assert isinstance(answer.colour, str) and answer.colour.strip()
