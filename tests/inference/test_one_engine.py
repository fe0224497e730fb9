"""evolve's local backend, eval's generation and serve's models all decode on raywiz.inference's engine."""

from raywiz.inference.transformers_backend import TransformersEngine


def test_evolve_eval_and_serve_share_the_transformers_engine(tmp_path):
    from raywiz.eval.config import EvalConfig
    from raywiz.benchmarks.evaluate import Generator, sampling_params
    from raywiz.evolve.config import LLMConfig
    from raywiz.evolve.engine import build_engine
    from raywiz.inference import chat_prompt
    from raywiz.inference.chat import ChatRequest
    from raywiz.serve.checkpoints import CheckpointRef
    from raywiz.serve.pool import load_model

    from tests.serve.conftest import make_checkpoint

    hf_dir = make_checkpoint(tmp_path / "runs" / "demo", 1)

    evolve = build_engine(LLMConfig(backend="transformers", model=hf_dir))
    request = ChatRequest.of("m", "Write add.", {"temperature": 0.0, "max_tokens": 6})
    [result] = list(evolve.chat([request]))
    assert isinstance(evolve, TransformersEngine) and result.ok

    cfg = EvalConfig(generation={"max_tokens": 6})
    generator = Generator(cfg.generation.engine_spec(hf_dir), cfg, in_process=True)
    prompt = chat_prompt(request.messages, evolve.tokenizer, evolve.template_for_chat())
    texts = generator.generate([prompt], sampling_params(cfg))
    assert isinstance(generator._engine, TransformersEngine)
    assert texts == [[result.text]]  # the same prompt, greedy: the same text from evolve's and eval's path

    loaded = load_model(CheckpointRef("ckpt", hf_dir), {}, device="cpu", cache_dir=str(tmp_path / "c"))
    try:
        assert isinstance(loaded.engine, TransformersEngine)
    finally:
        loaded.close()
