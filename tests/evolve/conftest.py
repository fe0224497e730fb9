"""Fixtures for the evolve tests: a real OpenAI-compatible server on 127.0.0.1 and small seed files."""

from __future__ import annotations

import pytest

from tests.evolve.fake_llm_server import FakeLLMServer

@pytest.fixture
def fake_llm():
    with FakeLLMServer() as server:
        yield server
