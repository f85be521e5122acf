"""The asyncio SDK mirrors the sync one: same methods, same parameters, awaited. No server."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

import seqserve_client
from seqserve_client import AsyncSeqServeClient, AsyncSession, SeqServeClient, Session

TWINS = [(SeqServeClient, AsyncSeqServeClient), (Session, AsyncSession)]
# Methods that wait for nothing, so sync on both sides: `session` returns the session (opened
# by `async with` or `await` on the asyncio side), `cancel` does not wait for the server.
SYNC_ON_BOTH = {"session", "cancel"}


def members(cls: type) -> dict[str, Any]:
    """What the class defines or inherits from the SDK (a base shared by both twins counts)."""
    return {n: m for c in reversed(cls.__mro__[:-1]) for n, m in vars(c).items()}


def public_methods(cls: type) -> dict[str, Callable[..., Any]]:
    return {
        n: m for n, m in members(cls).items() if not n.startswith("_") and inspect.isfunction(m)
    }


def public_properties(cls: type) -> set[str]:
    return {n for n, m in members(cls).items() if not n.startswith("_") and isinstance(m, property)}


def parameters(method: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """Names, kinds and defaults; annotations differ where the async side takes async types."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]


def is_async(method: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method)


@pytest.mark.parametrize(("sync", "aio"), TWINS, ids=lambda c: c.__name__)
def test_twins_have_the_same_methods_and_properties(sync: type, aio: type) -> None:
    assert public_methods(sync).keys() == public_methods(aio).keys()
    assert public_properties(sync) == public_properties(aio)


@pytest.mark.parametrize(("sync", "aio"), TWINS, ids=lambda c: c.__name__)
def test_twin_methods_take_the_same_parameters(sync: type, aio: type) -> None:
    aio_methods = public_methods(aio)
    for name, method in public_methods(sync).items():
        assert parameters(method) == parameters(aio_methods[name]), name
    assert parameters(sync.__init__) == parameters(aio.__init__)


@pytest.mark.parametrize(("sync", "aio"), TWINS, ids=lambda c: c.__name__)
def test_twin_methods_say_the_same(sync: type, aio: type) -> None:
    """Each asyncio method is documented by its sync twin's docstring (`twins.mirrors`)."""
    aio_methods = public_methods(aio)
    for name, method in public_methods(sync).items():
        if name != "session":  # says how each side opens the session
            assert aio_methods[name].__doc__ == method.__doc__, name


@pytest.mark.parametrize(("sync", "aio"), TWINS, ids=lambda c: c.__name__)
def test_async_twin_awaits_what_the_sync_one_blocks_on(sync: type, aio: type) -> None:
    aio_methods = public_methods(aio)
    for name, method in public_methods(sync).items():
        assert not is_async(method), name
        assert is_async(aio_methods[name]) == (name not in SYNC_ON_BOTH), name
    # generators on one side are async generators on the other (iterated, not awaited)
    for name, method in public_methods(sync).items():
        assert inspect.isgeneratorfunction(method) == inspect.isasyncgenfunction(
            aio_methods[name]
        ), name


@pytest.mark.parametrize(("sync", "aio"), TWINS, ids=lambda c: c.__name__)
def test_context_managers_on_both_sides(sync: type, aio: type) -> None:
    assert {"__enter__", "__exit__"} <= members(sync).keys()
    assert {"__aenter__", "__aexit__"} <= members(aio).keys()
    assert parameters(members(sync)["__exit__"]) == parameters(members(aio)["__aexit__"])


def test_every_client_call_takes_a_timeout_defaulting_to_the_clients() -> None:
    """`None`: the client's timeout (a session's: no deadline, as it lives long)."""
    for name, method in public_methods(SeqServeClient).items():
        if name == "close":
            continue
        timeout = inspect.signature(method).parameters.get("timeout")
        assert timeout is not None, name
        assert timeout.kind is inspect.Parameter.KEYWORD_ONLY and timeout.default is None, name


def test_all_lists_the_async_twin_of_every_sync_class() -> None:
    """An I/O class (one with methods of its own) has its `Async` twin exported, and back."""
    exported = {name: getattr(seqserve_client, name) for name in seqserve_client.__all__}
    io_classes = {n for n, c in exported.items() if isinstance(c, type) and public_methods(c)}
    assert {"SeqServeClient", "Session", "AsyncSeqServeClient", "AsyncSession"} <= io_classes
    for name in io_classes:
        twin = name.removeprefix("Async") if name.startswith("Async") else f"Async{name}"
        assert twin in io_classes, name
