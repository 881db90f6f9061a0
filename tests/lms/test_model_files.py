"""Model files read without loading weights: safetensors headers, weight files, cached digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from core.errors import LMError
from core.lms import model_files


def test_parameters_from_the_safetensors_header(tmp_path: Path) -> None:
    save_file({"a": np.zeros((3, 4), np.float32), "b": np.zeros(5, np.float16)}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    assert model_files.safetensors_params(tmp_path / "model.safetensors") == 17
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(LMError, match=r"bad\.safetensors is not a readable safetensors file"):
        model_files.safetensors_params(tmp_path / "bad.safetensors")


def test_weight_files_prefer_the_index_and_refuse_pickles(tmp_path: Path) -> None:
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in model_files.weight_files(tmp_path)] == ["model-00001-of-00002.safetensors",
                                                                     "model-00002-of-00002.safetensors"]
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"x": "model-00002-of-00002.safetensors"}}')
    assert [p.name for p in model_files.weight_files(tmp_path)] == ["model-00002-of-00002.safetensors"]
    pickles = tmp_path / "pickles"
    pickles.mkdir()
    (pickles / "consolidated.pth").write_bytes(b"")
    with pytest.raises(LMError, match=r"pickle weights only \(\['consolidated\.pth'\]\): refused"):
        model_files.weight_files(pickles)


def test_digest_is_cached_by_path_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_MODEL_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"one")
    assert model_files.file_digest(path) == hashlib.sha256(b"one").hexdigest()
    assert (tmp_path / "cache" / "local" / "files.json").is_file()
    monkeypatch.setattr(model_files, "_sha256", lambda p: "cached?")
    assert model_files.file_digest(path) == hashlib.sha256(b"one").hexdigest()  # from the cache
    path.write_bytes(b"three")  # another size: read again
    assert model_files.file_digest(path) == "cached?"
