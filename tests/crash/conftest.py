from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _tiny_summarizer(servers_use_tiny_summarizer: None) -> None:
    """Crash tests start real servers; they summarize with the tiny model."""
