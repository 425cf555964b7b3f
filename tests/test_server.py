"""The server's own setup around the app (what ``python -m chat`` adds to ``create_app``)."""

from __future__ import annotations

import gc

from starlette.applications import Starlette

from chat.server import GC_YOUNG_THRESHOLD, serve_app


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
