import pytest


@pytest.fixture(scope="module")
def engine():
    """A tiny GPT-BigCode on CPU behind the transformers backend (one per test module)."""
    from raywiz.inference import EngineSpec, make_engine

    eng = make_engine(EngineSpec(model="tiny-gpt-bigcode", device="cpu", max_batch_size=4))
    yield eng
    eng.close()
