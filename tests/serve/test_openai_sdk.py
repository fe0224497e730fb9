"""The official `openai` SDK as a real client of serve's /v1 API (uvicorn on 127.0.0.1, no Ray):
lists of prompts, token-id prompts, and logprobs with echo, as lm-evaluation-harness sends them."""

from __future__ import annotations

import math

import pytest
import torch

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def sdk(completion_server):
    client = openai.OpenAI(base_url=completion_server.url + "/v1", api_key="unused", max_retries=0)
    return client, completion_server.hf_dir


def test_a_list_of_prompts_gets_n_choices_each_in_order(sdk):
    client, _ = sdk
    prompts = ["def add(a, b):", "import os\n", "x = "]
    batch = client.completions.create(model="latest", prompt=prompts, n=2, max_tokens=6, temperature=0)
    assert [c.index for c in batch.choices] == list(range(6))
    for p, prompt in enumerate(prompts):
        alone = client.completions.create(model="latest", prompt=prompt, max_tokens=6, temperature=0)
        assert batch.choices[2 * p].text == batch.choices[2 * p + 1].text == alone.choices[0].text
    assert batch.usage.completion_tokens > 0 and batch.usage.prompt_tokens > 3


def test_logprobs_with_echo_equal_a_forward_pass(sdk):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    client, hf_dir = sdk
    prompt = "def add(a, b):\n    return a + b\n"
    r = client.completions.create(model="latest", prompt=prompt, max_tokens=1, echo=True, logprobs=2,
                                  temperature=0)
    choice = r.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(prompt) and "".join(lp.tokens) == choice.text
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = tok(prompt)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    expected = [logp[k - 1, ids[k]].item() for k in range(1, len(ids))]
    got = lp.token_logprobs[1:len(ids)]
    assert got == pytest.approx(expected, abs=1e-4)
    # The generated token is greedy: its logprob is the best of its top_logprobs (lm-eval's is_greedy).
    last = lp.token_logprobs[-1]
    assert len(lp.tokens) == len(ids) + 1 and math.isclose(last, max(lp.top_logprobs[-1].values()), abs_tol=1e-5)


def test_token_id_prompts_and_echo_without_generation(sdk):
    client, hf_dir = sdk
    ids = [[5, 17, 300, 42], [9, 9, 9]]
    r = client.completions.create(model="latest", prompt=ids, max_tokens=0, echo=True, logprobs=0, temperature=0)
    assert len(r.choices) == 2 and r.usage.completion_tokens == 0
    assert [len(c.logprobs.tokens) for c in r.choices] == [4, 3]
    assert all(v <= 0 for c in r.choices for v in c.logprobs.token_logprobs[1:])


def test_a_choice_that_ends_on_eos_lists_it_in_logprobs(sdk):
    # In this tiny model the greedy token after EOS is EOS again: the choice ends at once. lm-evaluation-
    # harness takes the last listed token as the generated one, so the EOS must be listed.
    client, _ = sdk
    ids = [89, 287, 393, 0]  # "x = 1<|endoftext|>"
    r = client.completions.create(model="latest", prompt=[ids], max_tokens=1, echo=True, logprobs=1, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and r.usage.completion_tokens == 0
    lp = choice.logprobs
    assert len(lp.tokens) == len(ids) + 1 and lp.tokens[-1] == "<|endoftext|>"
    assert lp.token_logprobs[-1] == max(lp.top_logprobs[-1].values())


def test_a_seed_fixes_sampled_text(sdk):
    client, _ = sdk

    def sample(seed):
        return client.completions.create(model="latest", prompt="def f(x):", max_tokens=12, temperature=1.0,
                                         seed=seed).choices[0].text

    assert sample(3) == sample(3) != sample(4)
