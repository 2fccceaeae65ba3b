"""``pagedkv.registry.Registry`` and the five registries built on it (eviction policies,
preemption policies, hash functions, attention backends, KV tiers): a taken name raises unless
``replace=True``, an unknown name raises a typed error naming the registered ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pagedkv.attention import (
    get_attention_backend,
    list_attention_backends,
    register_attention_backend,
)
from pagedkv.attention import registry as attention_registry
from pagedkv.core import (
    EVICTION_POLICIES,
    HASH_FUNCTIONS,
    PREEMPTION_POLICIES,
    BlockManager,
    CacheConfig,
    register_eviction_policy,
    register_hash_function,
    register_preemption_policy,
)
from pagedkv.core.prefix_cache.eviction import LRUPolicy
from pagedkv.errors import (
    ConfigError,
    InvalidArgumentError,
    RegistryError,
    UnknownNameError,
)
from pagedkv.registry import Registry
from pagedkv.tiers import TIERS, TierConfigError, create_tier

# ---------------------------------------------------------------------------- the generic one


def test_register_lookup_and_mapping_view() -> None:
    reg: Registry[int] = Registry("number")
    assert reg.register("two", 2) == 2

    @reg.register("one")
    def _one() -> int:  # the decorator form returns what it decorates
        return 1

    assert reg["two"] == 2
    assert reg["one"] is _one
    assert "two" in reg
    assert [1] not in reg  # an unhashable name is simply not there
    assert list(reg) == ["two", "one"]  # registration order
    assert reg.names() == ["one", "two"]
    assert len(reg) == 2
    assert reg.get("three") is None
    assert dict(reg) == {"two": 2, "one": _one}
    assert "number" in repr(reg)


def test_taken_name_raises_unless_replace() -> None:
    reg: Registry[int] = Registry("number")
    reg.register("two", 2)
    with pytest.raises(RegistryError, match=r"number 'two' is already registered.*replace=True"):
        reg.register("two", 22)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("two")  # the decorator form checks at once
    assert reg["two"] == 2
    assert reg.register("two", 22, replace=True) == 22
    assert reg["two"] == 22
    reg.register("two", replace=True)(222)
    assert reg["two"] == 222
    assert isinstance(RegistryError("x"), InvalidArgumentError)


def test_unknown_name_is_a_typed_error_listing_the_known_names() -> None:
    reg: Registry[int] = Registry("number")
    reg.register("two", 2)
    reg.register("one", 1)
    with pytest.raises(UnknownNameError) as info:
        reg["three"]
    assert str(info.value) == "number: unknown name 'three'; expected one of ['one', 'two']"
    assert isinstance(info.value, InvalidArgumentError)
    assert isinstance(info.value, KeyError)  # Mapping semantics (get, `in`) keep working
    with pytest.raises(UnknownNameError):
        reg[["unhashable"]]  # type: ignore[index]
    with pytest.raises(UnknownNameError, match="three"):
        reg.unregister("three")
    assert reg.unregister("two") == 2
    assert reg.names() == ["one"]


@pytest.mark.parametrize("name", ["", None, 3, b"x"])
def test_names_must_be_non_empty_strings(name: Any) -> None:
    reg: Registry[int] = Registry("number")
    with pytest.raises(RegistryError, match="non-empty str"):
        reg.register(name, 1)
    with pytest.raises(RegistryError, match="non-empty str"):
        reg.register(name)
    assert len(reg) == 0


# ------------------------------------------------------------- the five registries of pagedkv


class _Backend:
    name = "test"

    def forward(self, query: Any, kv_cache: Any, metadata: Any, **kw: Any) -> Any:
        return query


def _policy() -> type:
    return type("TestPolicy", (LRUPolicy,), {})


def _victims(seqs: list[Any]) -> list[Any]:
    return list(seqs)


def _hash(data: bytes) -> bytes:
    return data[:32]


Register = Callable[..., Any]
CASES: dict[str, tuple[Registry[Any], Register, str, Callable[[], Any]]] = {
    "eviction": (
        EVICTION_POLICIES,
        lambda name, item, **kw: register_eviction_policy(name, **kw)(item),
        "lru",
        _policy,
    ),
    "preemption": (
        PREEMPTION_POLICIES,
        lambda name, item, **kw: register_preemption_policy(name, **kw)(item),
        "newest",
        lambda: _victims,
    ),
    "hash": (HASH_FUNCTIONS, register_hash_function, "sha256", lambda: _hash),
    "attention": (
        attention_registry._BACKENDS,
        lambda name, item, **kw: register_attention_backend(name, **kw)(item),
        "torch",
        lambda: type("TestBackend", (_Backend,), {}),
    ),
    "tiers": (
        TIERS,
        lambda name, item, **kw: TIERS.register(name, **kw)(item),
        "host",
        lambda: lambda **kw: None,
    ),
}


@pytest.fixture
def restore() -> Iterator[None]:
    """Put every registry (and the attention instances) back as it was."""
    saved = {k: dict(reg._items) for k, (reg, *_) in CASES.items()}
    instances = dict(attention_registry._INSTANCES)
    yield
    for k, (reg, *_) in CASES.items():
        reg._items.clear()
        reg._items.update(saved[k])
    attention_registry._INSTANCES.clear()
    attention_registry._INSTANCES.update(instances)


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.usefixtures("restore")
def test_duplicate_name_raises_and_changes_nothing(kind: str) -> None:
    reg, register, builtin, make = CASES[kind]
    before = dict(reg)
    with pytest.raises(RegistryError, match=f"'{builtin}' is already registered"):
        register(builtin, make())
    assert dict(reg) == before
    item = make()
    register(f"test-{kind}", item)
    assert reg[f"test-{kind}"] is item
    with pytest.raises(RegistryError, match="already registered"):
        register(f"test-{kind}", make())
    assert reg[f"test-{kind}"] is item


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.usefixtures("restore")
def test_replace_true_replaces(kind: str) -> None:
    reg, register, builtin, make = CASES[kind]
    item = make()
    register(builtin, item, replace=True)
    assert reg[builtin] is item
    register(f"test-{kind}", item, replace=True)  # replace=True also registers a new name
    assert reg[f"test-{kind}"] is item


@pytest.mark.parametrize("kind", sorted(CASES))
def test_unknown_name_raises_a_typed_error_naming_the_known_ones(kind: str) -> None:
    reg, _, builtin, _ = CASES[kind]
    with pytest.raises(
        UnknownNameError,
        match=rf"unknown name 'nope'; expected one of .*"
        rf"'{builtin}'",
    ):
        reg["nope"]


def test_public_lookups_name_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match=r"attention backend: unknown name 'nope'.*'torch'"):
        get_attention_backend("nope")
    with pytest.raises(TierConfigError, match=r"unknown name 'tape'.*'disk', 'host'"):
        create_tier("tape")
    with pytest.raises(ConfigError, match=r"unknown eviction_policy.*'lru'"):
        CacheConfig(block_size=4, num_blocks=8, eviction_policy="nope")
    with pytest.raises(ConfigError, match=r"unknown hash_algo.*'sha256'"):
        CacheConfig(block_size=4, num_blocks=8, hash_algo="nope")
    mgr = BlockManager(CacheConfig(block_size=4, num_blocks=8))
    mgr.admit("a", [1, 2, 3])
    with pytest.raises(InvalidArgumentError, match=r"unknown preemption policy.*'newest'"):
        mgr.select_victims(1, policy="nope")


@pytest.mark.usefixtures("restore")
def test_replaced_registrations_are_used() -> None:
    class Mine(_Backend):
        name = "mine"

    register_attention_backend("torch", replace=True)(Mine)
    assert isinstance(get_attention_backend("torch"), Mine)  # the cached instance was dropped

    register_hash_function("sha256", _hash, replace=True)
    assert (
        BlockManager(CacheConfig(block_size=2, num_blocks=8)).prefix_cache.hasher.hash_fn is _hash
    )


@pytest.mark.usefixtures("restore")
def test_attention_backend_names_are_registered_all_or_nothing() -> None:
    with pytest.raises(RegistryError, match="'torch' is already registered"):
        register_attention_backend("test-new", "torch")(_Backend)
    assert "test-new" not in list_attention_backends()
    with pytest.raises(InvalidArgumentError, match="at least one name"):
        register_attention_backend()


@pytest.mark.usefixtures("restore")
def test_eviction_policy_name_is_set_only_when_registered() -> None:
    cls = _policy()
    with pytest.raises(RegistryError):
        register_eviction_policy("lru")(cls)
    assert cls.name == "lru"  # inherited from LRUPolicy, not set by the refused registration
    register_eviction_policy("test-policy")(cls)
    assert cls.name == "test-policy"
    mgr = BlockManager(CacheConfig(block_size=2, num_blocks=8, eviction_policy="test-policy"))
    assert type(mgr.prefix_cache.evictor) is cls
