"""The server's own setup around the app (what ``python -m chat`` adds to ``create_app``)."""

from __future__ import annotations

import gc
import platform

import anyio
import pytest
from starlette.applications import Starlette

from chat.server import GC_YOUNG_THRESHOLD, _malloc_trim, serve_app, trim_memory_every


def test_served_app_tunes_the_collector() -> None:
    """The served app comes with fewer young collections and the import-time objects frozen out of them."""
    threshold = gc.get_threshold()
    try:
        app = serve_app()
        assert isinstance(app, Starlette)
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.anyio
async def test_served_app_trims_the_allocator_every_trim_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under glibc the served app hands free memory back to the system every ``trim_interval`` seconds."""
    trims: list[int] = []
    twice = anyio.Event()

    def trim(pad: int) -> int:
        trims.append(pad)
        if len(trims) == 2:  # it runs again after each trim
            twice.set()
        return 1

    monkeypatch.setattr("chat.server._malloc_trim", lambda: trim)
    timer = trim_memory_every(0.01)
    assert timer is not None
    with anyio.fail_after(5):
        await twice.wait()
    assert trims[:2] == [0, 0]


def test_no_trim_when_the_interval_is_zero_or_outside_a_loop() -> None:
    assert trim_memory_every(0) is None
    assert trim_memory_every(60) is None  # no running loop


def test_the_allocators_trim_is_found_on_glibc() -> None:
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    trim = _malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)
