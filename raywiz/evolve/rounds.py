"""One round of Code Evol-Instruct: evolve each parent, judge, answer, eliminate.

    evolved, dropped = run_round(parents, evol_round, cfg, engine, verifier)

Every parent gets one method, drawn from (seed, parent id, round). Its evolution goes to the LLM;
evolutions that already fail (copied template words, no new information, ...) are dropped before
they cost a response. With ``eliminate.info_gain: judge`` the LLM judges parent vs evolution first.
Survivors are answered, and the answers checked; with a verifier (evolve.verify, raywiz/evolve/verify.py)
the answers are its candidates, kept only when one passes the LLM's tests in the sandbox. Results keep
the parents' order.
"""

from __future__ import annotations

from dataclasses import dataclass

from raywiz.evolve.eliminate import evolution_reason, response_reason
from raywiz.inference.chat import ChatRequest
from raywiz.evolve.prompts import draw_method, evol_prompt, judge_prompt, judged_equal
from raywiz.evolve.samples import Sample, evolved_id

JUDGE_PARAMS = {"temperature": 0.0, "max_tokens": 16}


@dataclass
class Dropped:
    sample_id: str
    evol_round: int
    method: str
    parent_id: str | None
    stage: str  # "eliminate", "verify", "decontam" or "dedup"
    reason: str
    instruction: str
    detail: dict | None = None

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["instruction"] = d["instruction"][:500]
        return d


def response_request(instruction: str, cfg) -> ChatRequest:
    return ChatRequest.of(cfg.llm.model, instruction, cfg.response_params.as_request_params(),
                           cfg.response_system_prompt)


def answer(samples: list[Sample], cfg, engine, label: str) -> tuple[list[Sample], list[Dropped]]:
    """Ask the LLM for each sample's output; drop those whose answers fail the response checks."""
    requests = [response_request(s.text, cfg) for s in samples]
    results = engine.run(requests, label)
    kept, dropped = [], []
    for sample, req in zip(samples, requests):
        result = results[req.key]
        reason = response_reason(sample.text, result, cfg.eliminate)
        if reason:
            dropped.append(Dropped(sample.sample_id, sample.evol_round, sample.method, sample.parent_id, "eliminate",
                                   reason, sample.instruction))
            continue
        sample.output = result.text.strip()
        sample.model = cfg.llm.model
        kept.append(sample)
    return kept, dropped


def run_round(parents: list[Sample], evol_round: int, cfg, engine, verifier=None) -> tuple[list[Sample], list[Dropped]]:
    model = cfg.llm.model
    params = cfg.evolve_params.as_request_params()
    methods = [draw_method(cfg.seed, p.sample_id, evol_round, cfg.methods) for p in parents]
    requests = [ChatRequest.of(model, evol_prompt(m, p.text), params, cfg.evolve_system_prompt)
                for p, m in zip(parents, methods)]
    results = engine.run(requests, f"round {evol_round}: evolve")

    verdicts: dict[str, bool] = {}
    if cfg.eliminate.info_gain == "judge":
        pairs = [(p.text, results[r.key].text) for p, r in zip(parents, requests) if results[r.key].ok]
        judge_requests = {pair: ChatRequest.of(model, judge_prompt(*pair), JUDGE_PARAMS) for pair in pairs}
        judged = engine.run(list(judge_requests.values()), f"round {evol_round}: judge")
        # A failed judgement counts as "not equal": the judge is a filter, not a gate.
        verdicts = {pair: judged[r.key].ok and judged_equal(judged[r.key].text) for pair, r in judge_requests.items()}

    candidates, dropped = [], []
    for parent, method, req in zip(parents, methods, requests):
        result = results[req.key]
        instruction = (result.text or "").strip()
        sid = evolved_id(parent.sample_id, evol_round, method, instruction)
        reason = evolution_reason(parent.text, result, cfg.eliminate, verdicts.get((parent.text, result.text)))
        if reason:
            dropped.append(Dropped(sid, evol_round, method, parent.sample_id, "eliminate", reason, instruction))
            continue
        candidates.append(Sample(sid, instruction, "", "", evol_round, method, parent.sample_id, parent.source, model))

    if verifier is not None:
        kept, failed_answers = verifier.run(candidates, engine, evol_round)
    else:
        kept, failed_answers = answer(candidates, cfg, engine, f"round {evol_round}: respond")
    return kept, dropped + failed_answers
