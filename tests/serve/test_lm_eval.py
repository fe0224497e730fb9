"""lm-evaluation-harness's OpenAI-compatible client (`local-completions`) as a real client of serve's
/v1/completions (uvicorn on 127.0.0.1, no Ray): batches of token-id prompts, logprobs with echo for
loglikelihood tasks, and stop lists for generate_until tasks. The tasks are local YAML + JSONL files
under lm_eval_tasks/ (no hub).

tiny_choice.jsonl's third document has a choice that ends on <|endoftext|>: in this tiny model the
greedy token after EOS is EOS again, so the one token the server generates is EOS, and the harness's
sum over token_logprobs[ctxlen:-1] is right only if the echoed logprobs list that EOS too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raywiz.inference import EngineSpec, SamplingParams, make_engine

lm_eval = pytest.importorskip("lm_eval")

TASKS = Path(__file__).parent / "lm_eval_tasks"


def task_config(name: str, cache_dir: Path) -> dict:
    config = yaml.safe_load((TASKS / f"{name}.yaml").read_text())
    config["dataset_kwargs"] = {"data_files": {"test": str(TASKS / f"{name}.jsonl")}, "cache_dir": str(cache_dir)}
    return config


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The token ids lm-evaluation-harness scores: trailing spaces of the context move to the
    continuation, and the continuation is what the whole adds to the context's tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return context_ids, whole[len(context_ids):]


@pytest.fixture(scope="module")
def harness(completion_server, tmp_path_factory):
    cache = tmp_path_factory.mktemp("lm-eval-datasets")
    # batch_size 8: more prompts in one request than n's limit (the old cap on prompt lists).
    args = (f"base_url={completion_server.url}/v1/completions,model=latest,tokenizer_backend=huggingface,"
            f"tokenizer={completion_server.hf_dir},batch_size=8,max_length=1024,max_retries=1")
    out = lm_eval.simple_evaluate(model="local-completions", model_args=args, log_samples=True,
                                  tasks=[task_config("tiny_choice", cache), task_config("tiny_generate", cache)])
    engine = make_engine(EngineSpec(model=completion_server.hf_dir, device="cpu"))
    yield out, engine
    engine.close()


def test_loglikelihoods_equal_the_engine_s_own(harness):
    out, engine = harness
    result = out["results"]["raywiz_tiny_choice"]
    assert result["acc,none"] in (0.0, 1 / 3, 2 / 3, 1.0)
    samples = out["samples"]["raywiz_tiny_choice"]
    assert len(samples) == 3
    for sample in samples:
        assert len(sample["resps"]) == len(sample["doc"]["choices"])
        for (context, continuation), [(loglikelihood, is_greedy)] in zip(sample["arguments"], sample["resps"]):
            context_ids, continuation_ids = encode_pair(engine.tokenizer, context, continuation)
            scored = engine.score(context_ids + continuation_ids, top=1)
            expected = scored[len(context_ids):]
            assert loglikelihood == pytest.approx(sum(lp for lp, _ in expected), abs=1e-4), (context, continuation)
            assert is_greedy == all(lp == max(top.values()) for lp, top in expected)
        # acc picks the most likely choice
        lls = [r[0][0] for r in sample["resps"]]
        assert sample["acc"] == float(lls.index(max(lls)) == sample["target"])


def test_generations_equal_the_engine_s_greedy_output(harness):
    out, engine = harness
    assert out["results"]["raywiz_tiny_generate"]["exact_match,none"] in (0.0, 1 / 3, 2 / 3, 1.0)
    samples = out["samples"]["raywiz_tiny_generate"]
    config = yaml.safe_load((TASKS / "tiny_generate.yaml").read_text())["generation_kwargs"]
    params = SamplingParams(max_tokens=config["max_gen_toks"], stop=tuple(config["until"]))
    assert len(samples) == 3 and any(s["resps"][0][0] for s in samples)
    for sample in samples:
        (generated,) = sample["resps"][0]
        (expected,) = engine.generate([sample["doc"]["prompt"]], params)[0]
        assert isinstance(generated, str) and generated == expected.text
