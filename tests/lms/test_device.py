"""The training device: CUDA, then MPS, then the CPU (the CUDA and MPS branches run here through a monkeypatched
torch), its precision, the env override, and the memory check before training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from core.errors import LMError
from core.lms.lora import device as dev
from core.lms.lora.device import TrainDevice, check_fits, estimate_memory, model_size, pick_device, train_line
from core.lms.lora.params import TrainParams
from core.lms.lora.provider import trained_on

GIB = 2**30
KEY = "smollm2-135m"


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dev.ENV, raising=False)


def fake_cuda(monkeypatch: pytest.MonkeyPatch, *, bf16: bool = True, free: int = 70 * GIB,
              total: int = 80 * GIB) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (free, total))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")


def fake_mps(monkeypatch: pytest.MonkeyPatch, *, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 16 * GIB)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 1 * GIB)
    monkeypatch.setattr(dev, "_system_memory", lambda: (32 * GIB, 20 * GIB))
    monkeypatch.setattr(dev, "mps_bf16_works", lambda torch: bf16)


def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


# --- selection and precision ------------------------------------------------------------------------------


def test_cuda_comes_first_in_bfloat16_where_the_gpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch)
    fake_mps(monkeypatch)  # a Mac with CUDA does not exist, but the order must not depend on it
    device = pick_device()
    assert (device.kind, device.dtype, device.autocast, device.autocast_dtype) == ("cuda", "bfloat16", True,
                                                                                   "bfloat16")
    assert (device.name, device.total_bytes, device.free_bytes) == ("NVIDIA H100 80GB HBM3", 80 * GIB, 70 * GIB)
    assert device.describe() == "cuda: NVIDIA H100 80GB HBM3 (bfloat16)"
    assert device.torch_dtype() is torch.bfloat16
    assert dev.available_kinds() == ["cuda", "mps", "cpu"]


def test_a_gpu_without_bfloat16_and_bf16_off_train_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, bf16=False)
    old_gpu = pick_device()
    assert (old_gpu.kind, old_gpu.dtype, old_gpu.autocast) == ("cuda", "float32", False)
    assert "no bfloat16" in old_gpu.why and old_gpu.describe() == "cuda: NVIDIA H100 80GB HBM3 (float32, bf16 " \
                                                                  "autocast off)"
    fake_cuda(monkeypatch, bf16=True)
    off = pick_device(bf16=False)
    assert (off.dtype, off.autocast) == ("float32", False) and "bf16 is off" in off.why


def test_mps_comes_second_bfloat16_only_where_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fake_mps(monkeypatch, bf16=True)
    device = pick_device()
    assert (device.kind, device.dtype, device.autocast) == ("mps", "bfloat16", True)
    assert (device.total_bytes, device.free_bytes) == (16 * GIB, 15 * GIB)  # recommended minus what Metal holds
    fake_mps(monkeypatch, bf16=False)
    device = pick_device()
    assert (device.kind, device.dtype, device.autocast) == ("mps", "float32", False) and "macOS 14" in device.why
    assert pick_device(bf16=False).dtype == "float32"


@pytest.mark.parametrize("native", [True, False])
def test_the_cpu_trains_bfloat16_weights_only_where_it_computes_in_bfloat16(
        monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    no_gpu(monkeypatch)
    monkeypatch.setattr(dev, "cpu_computes_bf16", lambda torch: native)
    on, off = pick_device(), pick_device(bf16=False)
    if native:
        assert (on.kind, on.dtype, on.autocast) == ("cpu", "bfloat16", True)
        assert on.describe() == "cpu (bfloat16)" and "AMX" in on.why
    else:
        # emulated bfloat16 is several times slower than float32 there (bench/train_step.py): no autocast
        assert (on.kind, on.dtype, on.autocast) == ("cpu", "float32", False)
        assert on.describe() == "cpu (float32, bf16 autocast off)" and "no bfloat16" in on.why
    assert (off.kind, off.dtype, off.autocast) == ("cpu", "float32", False)
    assert off.describe() == "cpu (float32, bf16 autocast off)"
    assert 0 < on.free_bytes <= on.total_bytes
    assert dev.available_kinds() == ["cpu"]


def test_cpu_bfloat16_is_read_from_the_cpu_flags_when_torch_cannot_say(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    class NoMkldnn:
        class ops:
            class mkldnn:
                @staticmethod
                def _is_mkldnn_bf16_supported() -> bool:
                    raise RuntimeError("not in this build")

    real_path = Path

    def cpuinfo(flags: str) -> None:
        (tmp_path / "cpuinfo").write_text(f"processor : 0\nflags : fpu sse2 avx2 {flags}\n", encoding="ascii")
        monkeypatch.setattr(dev, "Path", lambda p: real_path(tmp_path / "cpuinfo") if p == "/proc/cpuinfo"
                            else real_path(p))

    cpuinfo("amx_bf16 amx_tile")
    assert dev.cpu_computes_bf16(NoMkldnn) is True
    cpuinfo("avx512f")
    assert dev.cpu_computes_bf16(NoMkldnn) is False
    assert dev.cpu_computes_bf16(torch) == torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_system_memory_falls_back_to_proc_meminfo_without_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    if not Path("/proc/meminfo").is_file():
        pytest.skip("no /proc/meminfo here")
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil raises ImportError
    total, free = dev._system_memory()
    assert 0 < free <= total


def test_the_env_variable_picks_the_device_and_names_what_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setenv(dev.ENV, " CPU ")
    assert pick_device().kind == "cpu"
    assert pick_device("cuda").kind == "cuda"  # the argument wins over the env
    monkeypatch.setenv(dev.ENV, "mps")
    with pytest.raises(LMError, match=r"STUDIO_TRAIN_DEVICE = 'mps' but no MPS device is available here .*; "
                                      r"available: cuda, cpu$"):
        pick_device()
    monkeypatch.setenv(dev.ENV, "tpu")
    with pytest.raises(LMError, match=r"STUDIO_TRAIN_DEVICE = 'tpu' is not a training device; allowed: cuda, mps, "
                                      r"cpu"):
        pick_device()
    no_gpu(monkeypatch)
    monkeypatch.setenv(dev.ENV, "cuda")
    with pytest.raises(LMError, match=r"no CUDA device is available here \(torch .*\); available: cpu$"):
        pick_device()
    monkeypatch.setenv(dev.ENV, "auto")
    assert pick_device().kind == "cpu"


# --- the memory check ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> tuple[int, dict]:
    """SmolLM2's parameters and config.json, read from the Studio's safetensors cache (headers only)."""
    from core.lms.lora import ensure_hf_cache

    return model_size(ensure_hf_cache(KEY))


def test_model_size_reads_the_parameters_from_the_headers(smollm2: tuple[int, dict]) -> None:
    n_params, config = smollm2
    assert n_params == 134_515_008 and config["hidden_size"] == 576 and config["num_hidden_layers"] == 30
    assert dev.lora_parameters(config, n_params, 16) == 4_884_480  # what peft reports for r=16, all-linear


def test_the_estimate_stays_just_above_the_measured_cpu_peaks(smollm2: tuple[int, dict]) -> None:
    """The calibration of device.py: SmolLM2, 8 x 384 tokens, 18-token answers, measured 4764 MiB with bf16
    autocast and 7569 MiB in float32 (peak RSS minus the RSS before training)."""
    n_params, config = smollm2
    for bf16, measured in ((True, 4764), (False, 7569)):
        cpu = TrainDevice("cpu", "float32", bf16)
        estimate = estimate_memory(n_params, TrainParams(bf16=bf16, micro_batch_tokens=8 * 384), cpu, config,
                                   tokens=8 * 384, answer_tokens=8 * 18)  # as measured: one pass of 8 rows
        assert estimate.tokens == 8 * 384
        assert measured < estimate.total / 2**20 < measured * 1.25, (bf16, estimate.describe())
    bench = estimate_memory(n_params, TrainParams(), TrainDevice("cpu", "float32", True), config, tokens=2224,
                            answer_tokens=150)
    assert 4190 < bench.total / 2**20 < 4190 * 1.1  # bench/finetune.py --quick: 4190 MiB measured
    # bench/finetune_memory.py: batch 8 of 384-token rows in passes of at most 768 (two rows), then 384 (one row)
    for device, tokens, measured in ((TrainDevice("cpu", "float32", True), 768, 1914),
                                     (TrainDevice("cpu", "bfloat16", True), 768, 1398),
                                     (TrainDevice("cpu", "bfloat16", True), 384, 900)):
        passes = estimate_memory(n_params, TrainParams(micro_batch_tokens=tokens, max_length=384), device, config,
                                 answer_tokens=20)
        assert passes.tokens == tokens
        assert measured < passes.total / 2**20 < measured * 1.3, (device, tokens, passes.describe())
    gpu = TrainDevice("cuda", "bfloat16", True)
    on_gpu = estimate_memory(n_params, TrainParams(), gpu, config)
    assert on_gpu.weights == n_params * 2 and on_gpu.autocast_copies == 0 and on_gpu.overhead == GIB


def test_check_fits_refuses_before_training_with_the_numbers(smollm2: tuple[int, dict]) -> None:
    n_params, config = smollm2
    small = TrainDevice("cuda", "bfloat16", True, "Fake GPU", total_bytes=3 * GIB, free_bytes=2 * GIB)
    with pytest.raises(LMError) as refused:
        check_fits(n_params, TrainParams(), small, config, model=KEY)
    message = str(refused.value)
    assert message.startswith("fine-tuning smollm2-135m (135 M parameters) needs ~")
    assert "activations" in message and "for 768 tokens a pass" in message
    assert "2 GB free on cuda: Fake GPU (bfloat16); lower micro_batch_tokens (now 768: the tokens of one pass) or " \
           "max_length (now 512), turn gradient_checkpointing on" in message
    # smaller passes fit the same device
    assert check_fits(n_params, TrainParams(micro_batch_tokens=64, max_length=64), small, config).total < 2 * GIB


def test_gradient_checkpointing_keeps_a_fraction_of_the_activations(smollm2: tuple[int, dict]) -> None:
    n_params, config = smollm2
    cpu = TrainDevice("cpu", "bfloat16", True)
    kept = estimate_memory(n_params, TrainParams(), cpu, config, tokens=768)
    recomputed = estimate_memory(n_params, TrainParams(gradient_checkpointing=True), cpu, config, tokens=768)
    assert recomputed.activations < kept.activations / 10
    assert recomputed.total - recomputed.activations == kept.total - kept.activations
    # free memory unknown (0): not checked
    assert check_fits(n_params, TrainParams(), TrainDevice("cpu", "float32", True), config).total > GIB


def test_check_fits_passes_for_smollm2_on_this_cpu(smollm2: tuple[int, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    no_gpu(monkeypatch)
    n_params, config = smollm2
    cpu = pick_device()
    estimate = check_fits(n_params, TrainParams(), cpu, config)
    assert 0 < estimate.total < cpu.free_bytes


def test_a_config_without_the_shape_is_guessed_on_the_large_side(smollm2: tuple[int, dict]) -> None:
    n_params, config = smollm2
    cpu = TrainDevice("cpu", "float32", True)
    known = estimate_memory(n_params, TrainParams(), cpu, config)
    guessed = estimate_memory(n_params, TrainParams(), cpu, None)
    assert guessed.activations > known.activations and guessed.lm_head > known.lm_head
    nested = estimate_memory(n_params, TrainParams(), cpu, {"text_config": config})
    assert nested == known


def test_out_of_memory_on_the_device_becomes_an_lm_error() -> None:
    from core.lms.lora.train import _out_of_memory_as_lm_error

    gpu = TrainDevice("cuda", "bfloat16", True, "Fake GPU")
    estimate = estimate_memory(10**8, TrainParams(), gpu, None)
    with pytest.raises(LMError, match=r"ran out of memory on cuda: Fake GPU \(bfloat16\) although it was "
                                      r"estimated to need ~.*; lower batch_size \(now 8\)"):
        with _out_of_memory_as_lm_error(gpu, estimate, TrainParams()):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        with _out_of_memory_as_lm_error(gpu, estimate, TrainParams()):
            raise RuntimeError("shape mismatch")


# --- what is recorded -------------------------------------------------------------------------------------


def test_the_train_line_says_device_precision_batch_plan_and_memory(tmp_path: Path) -> None:
    train = {"rows": 8, "steps": 4, "batch_size": 8, "epochs": 2, "max_length": 384,
             "device": TrainDevice("cpu", "float32", True).to_json(), "memory_estimate_mb": 5258.0,
             "rss_before_mb": 301.0, "train_peak_rss_mb": 5065.1, "peak_rss_mb": 5900.0, "device_peak_mb": 0.0}
    assert train_line(train) == ("trained on cpu (float32, bf16 autocast on): 8 rows, 4 steps of batch 8 (2 epochs, "
                                 "max_length 384), memory ~5.1 GB estimated, 4.7 GB used")
    gpu = {**train, "device": TrainDevice("cuda", "bfloat16", True, "NVIDIA H100").to_json(), "device_peak_mb": 3072,
           "epochs": 1}
    assert train_line(gpu).startswith("trained on cuda: NVIDIA H100 (bfloat16): 8 rows, 4 steps of batch 8 (1 epoch,")
    assert train_line(gpu).endswith("memory ~5.1 GB estimated, 3.0 GB used on the device")
    assert train_line({"rows": 8}) is None  # a fine-tune from before the device was recorded
    folder = tmp_path / "ft"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"base": KEY, "train": train}), encoding="utf-8")
    assert trained_on(folder) == train_line(train)
    assert trained_on(tmp_path / "missing") is None


@pytest.mark.slow
def test_training_in_bfloat16_weights_brings_the_lora_back_to_float32_on_the_cpu() -> None:
    """The path of a GPU run, on the CPU: bfloat16 base weights, autocast, then the LoRA comes back on a float32
    copy of the base (the export's input) with the trained values."""
    from core.lms.lora import load_base_model, train_lora

    rows = [{"messages": [{"role": "user", "content": f"Word: {w}"}, {"role": "assistant", "content": "zorblax"}]}
            for w in ("flimbo", "qwertan")]
    bf16_cpu = TrainDevice("cpu", "bfloat16", True, "test")
    result = train_lora(KEY, rows, TrainParams(batch_size=2, max_steps=1, epochs=1), merge=False, device=bf16_cpu)
    model = result.peft_model
    assert result.device == bf16_cpu and result.steps == 1 and result.memory_estimate_mb > 0
    params = dict(model.named_parameters())
    assert {p.dtype for p in params.values()} == {torch.float32} and {p.device.type for p in params.values()} == {
        "cpu"}
    trained = [p for name, p in params.items() if "lora_B" in name]
    assert trained and any(p.abs().sum() > 0 for p in trained)  # lora_B starts at zero: one step moved it
    base = dict(load_base_model(KEY).named_parameters())
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(params[f"base_model.model.{name.replace('q_proj.', 'q_proj.base_layer.')}"], base[name])
