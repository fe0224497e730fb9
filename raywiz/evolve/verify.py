"""The verify step of evolve: keep an evolved instruction only with an answer that passes its tests.

    verifier = Verifier(cfg, verdict_cache_dir)           # once per run
    kept, dropped = verifier.run(candidates, engine, evol_round)
    verifier.close(); verifier.report()                   # counts per round and method

For each instruction the LLM is asked, all at once, for `tests_per_task` assert statements
(prompts.tests_prompt) and for `answers` candidate answers (prompts.answer_prompt, each with its own
`seed`), through the engine and its request cache. As soon as one instruction has its tests and
answers, its sandbox runs start (verdicts.SandboxRunner) while the other requests are still out:

  1. each test alone against an empty function (`def f(*a, **k): pass`) and each answer against all
     tests, in one go;
  2. only when no answer passed them all, or some test passed the empty function: each failing
     answer against each remaining test alone.

Then: tests that pass the empty function are dropped (they test nothing), and so are tests that
fail on every answer; the instruction is kept with the first answer (in request order) that passes
every remaining test, and dropped (with the reason) when none does. Rows carry the tests, the
entry point, `verified: true` and how many answers passed. Answers that fail the response checks
(raywiz.evolve.eliminate) or do not define the tests' function are not run; they count as failed.

Every decision is a pure function of cached LLM answers and cached verdicts, so a resumed run makes
the same ones without sending or running anything twice.
"""

from __future__ import annotations

import queue
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from raywiz.benchmarks.postprocess import extract_code
from raywiz.benchmarks.score import ScoreSettings, Verdict
from raywiz.evolve.eliminate import response_reason
from raywiz.evolve.prompts import answer_prompt, tests_prompt
from raywiz.evolve.rounds import Dropped
from raywiz.evolve.samples import Sample
from raywiz.evolve.verdicts import SandboxRun, SandboxRunner, VerdictCache
from raywiz.evolve.verify_tests import defines_function, empty_function, read_tests
from raywiz.inference.chat import ChatRequest, ChatResult

KEPT = "verified"


@dataclass
class Candidate:
    """One instruction under verification: its requests, then its runs, then its decision."""

    sample: Sample
    tests_request: ChatRequest
    answer_requests: list[ChatRequest]
    results: dict[str, ChatResult] = field(default_factory=dict)
    entry_point: str | None = None
    tests: list[str] = field(default_factory=list)
    test_reasons: dict[str, str] = field(default_factory=dict)  # dropped test -> why
    answers: list[str | None] = field(default_factory=list)  # code per answer; None: not run
    answer_status: list[str] = field(default_factory=list)
    waiting: set[str] = field(default_factory=set)  # run keys not yet back
    phase: int = 0  # 0: waiting for the LLM; 1, 2: sandbox phases; 3: decided
    runs: dict[tuple, SandboxRun] = field(default_factory=dict)  # (kind, answer, test) -> run
    outcome: str = ""  # KEPT, or why it was dropped

    def llm_done(self) -> bool:
        return self.tests_request.key in self.results and all(r.key in self.results for r in self.answer_requests)


def candidate_of(cfg, sample: Sample) -> Candidate:
    """An instruction's verify requests (an EvolveConfig `cfg`): its tests, and `answers` answers, each
    with its own `seed` so that each is its own request (and cache entry)."""
    vcfg = cfg.verify
    tests = ChatRequest.of(cfg.llm.model, tests_prompt(sample.text, vcfg.tests_per_task),
                           vcfg.tests_params.as_request_params())
    params = vcfg.answer_params.as_request_params()
    answers = [ChatRequest.of(cfg.llm.model, answer_prompt(sample.text), {**params, "seed": i},
                              cfg.response_system_prompt) for i in range(vcfg.answers)]
    return Candidate(sample, tests, answers)


class Verifier:
    def __init__(self, cfg, verdict_dir: str):
        self.cfg, self.vcfg = cfg, cfg.verify
        cache = VerdictCache(verdict_dir, cfg.verify_hash())
        self.verdicts: dict[str, Verdict] = cache.load()
        self.cached_at_start = len(self.verdicts)
        settings = ScoreSettings(mbpp_timeout_s=self.vcfg.timeout_s)
        if self.vcfg.workers:
            settings.workers = self.vcfg.workers
        self.runner = SandboxRunner(cache, settings, self.vcfg.workers)
        self.submitted: set[str] = set()
        self.pending: list[SandboxRun] = []  # runs to hand the runner at the next flush
        self.waiters: dict[str, list[Candidate]] = defaultdict(list)
        # report counts
        self.outcomes: dict[int, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
        self.tests_count: Counter = Counter()
        self.answers_count: Counter = Counter()
        self.sandbox_tail_s = 0.0  # time spent waiting on the sandbox after the LLM was done

    # ------------------------------------------------------------------ one round

    def run(self, samples: list[Sample], engine, evol_round: int) -> tuple[list[Sample], list[Dropped]]:
        candidates = [candidate_of(self.cfg, s) for s in samples]
        by_key: dict[str, list[Candidate]] = defaultdict(list)
        for c in candidates:
            for r in (c.tests_request, *c.answer_requests):
                by_key[r.key].append(c)
        requests = [r for c in candidates for r in (c.tests_request, *c.answer_requests)]

        def on_results(results: list[ChatResult]) -> None:
            for result in results:
                for c in by_key.get(result.key, ()):
                    c.results[result.key] = result
                    if c.phase == 0 and c.llm_done():
                        self._start(c)
            self._drain(block=False)

        results = engine.run(requests, f"round {evol_round}: verify", on_results=on_results)
        started = time.monotonic()
        for c in candidates:  # any the callback did not start (an answer it never saw)
            if c.phase == 0:
                c.results.update({r.key: results[r.key] for r in (c.tests_request, *c.answer_requests)})
                self._start(c)
        while any(c.phase < 3 for c in candidates):
            self._drain(block=True)
        self.sandbox_tail_s += time.monotonic() - started
        return self._collect(candidates, evol_round)

    # ------------------------------------------------------------------ per instruction

    def _start(self, c: Candidate) -> None:
        """Its LLM answers are in: read the tests and answers, send phase 1's runs."""
        tests_result = c.results[c.tests_request.key]
        c.entry_point, c.tests, refused = read_tests(tests_result.text if tests_result.ok else "",
                                                     self.vcfg.tests_per_task)
        c.test_reasons.update(refused)
        for req in c.answer_requests:
            result = c.results[req.key]
            reason = response_reason(c.sample.text, result, self.cfg.eliminate)
            code = extract_code(result.text or "") if not reason else None
            if code is not None and c.entry_point and not defines_function(code, c.entry_point):
                reason, code = "no_entry_point", None
            c.answers.append(code)
            c.answer_status.append(reason or "pending")
        if not c.tests:
            c.answer_status = ["untested" if st == "pending" else st for st in c.answer_status]
            self._decide(c, "no_valid_tests" if tests_result.ok else "llm_error")
            return
        c.phase = 1
        for t, test in enumerate(c.tests):
            self._need(c, ("empty", None, t), empty_function(c.entry_point), (test,))
        for a, code in enumerate(c.answers):
            if code is not None:
                self._need(c, ("whole", a, None), code, tuple(c.tests))
        self._advance(c)

    def _need(self, c: Candidate, slot: tuple, code: str, tests: tuple[str, ...]) -> None:
        run = SandboxRun(c.entry_point, code, tests, self.vcfg.timeout_s)
        c.runs[slot] = run
        if run.key in self.verdicts:
            return
        c.waiting.add(run.key)
        self.waiters[run.key].append(c)
        if run.key not in self.submitted:
            self.submitted.add(run.key)
            self.pending.append(run)

    def _flush(self) -> None:
        if self.pending:
            self.runner.submit(self.pending)
            self.pending = []

    def _advance(self, c: Candidate) -> None:
        """Move on when the phase's verdicts are all in (sending phase 2's runs when needed)."""
        self._flush()
        if c.waiting or c.phase >= 3:
            return
        passed = {slot: self.verdicts[run.key].passed for slot, run in c.runs.items()}
        trivial = {t for t in range(len(c.tests)) if passed[("empty", None, t)]}
        scored = [a for a, code in enumerate(c.answers) if code is not None]
        whole = {a for a in scored if passed[("whole", a, None)]}
        if c.phase == 1 and (trivial or not whole) and set(scored) - whole:
            c.phase = 2
            for a in sorted(set(scored) - whole):
                for t in range(len(c.tests)):
                    if t not in trivial:
                        self._need(c, ("one", a, t), c.answers[a], (c.tests[t],))
            self._advance(c)
            return
        # Decide: a test counts for an answer that passed them all, else by its own run.
        def passes(a: int, t: int) -> bool:
            return a in whole or passed.get(("one", a, t), False)

        meaningful = [t for t in range(len(c.tests)) if t not in trivial]
        kept_tests = [t for t in meaningful if any(passes(a, t) for a in scored)]
        for t in trivial:
            c.test_reasons[c.tests[t]] = "passes_empty_function"
        for t in set(meaningful) - set(kept_tests):
            c.test_reasons[c.tests[t]] = "fails_every_answer"
        winners = [a for a in scored if kept_tests and all(passes(a, t) for t in kept_tests)]
        for a in scored:
            c.answer_status[a] = "untested" if not meaningful else "passed" if a in winners else "failed"
        c.tests = [c.tests[t] for t in kept_tests]
        if not meaningful:
            self._decide(c, "tests_pass_empty_function")
        elif not winners:
            self._decide(c, "no_passing_answer")
        else:
            chosen = c.results[c.answer_requests[winners[0]].key].text.strip()
            s = c.sample
            s.output, s.model, s.entry_point, s.tests = chosen, self.cfg.llm.model, c.entry_point, c.tests
            s.verified, s.answers_tried, s.answers_passed = True, len(c.answers), len(winners)
            self._decide(c, KEPT)

    def _decide(self, c: Candidate, outcome: str) -> None:
        c.phase, c.outcome = 3, outcome

    def _drain(self, block: bool) -> None:
        """Take the verdicts that came back and move their instructions on."""
        while True:
            try:
                key, verdict = self.runner.verdicts.get(block=block, timeout=600 if block else None)
            except queue.Empty:
                if block:
                    raise RuntimeError("evolve verify: no sandbox verdict for 600 s") from None
                return
            if key == "error":
                raise RuntimeError(f"evolve verify: sandbox scoring failed: {verdict}") from verdict
            self.verdicts[key] = verdict
            for c in self.waiters.pop(key, ()):
                c.waiting.discard(key)
                self._advance(c)
            block = False  # one blocking wait, then whatever else is ready

    # ------------------------------------------------------------------ results and report

    def _collect(self, candidates: list[Candidate], evol_round: int) -> tuple[list[Sample], list[Dropped]]:
        kept, dropped = [], []
        for c in candidates:
            s = c.sample
            self.outcomes[evol_round][s.method][c.outcome] += 1
            self.tests_count["kept"] += len(c.tests) if c.outcome == KEPT else 0
            self.tests_count.update(c.test_reasons.values())
            self.answers_count.update(c.answer_status)
            if c.outcome == KEPT:
                kept.append(s)
                continue
            detail = {"entry_point": c.entry_point, "tests_dropped": {t[:200]: r for t, r in c.test_reasons.items()},
                      "answers": c.answer_status}
            dropped.append(Dropped(s.sample_id, s.evol_round, s.method, s.parent_id, "verify", c.outcome,
                                   s.instruction, detail))
        return kept, dropped

    def close(self) -> None:
        self.runner.close()

    def report(self) -> dict:
        return {
            "answers_per_instruction": self.vcfg.answers,
            "outcomes_by_round": {str(r): {m: dict(sorted(c.items())) for m, c in sorted(by_method.items())}
                                  for r, by_method in sorted(self.outcomes.items())},
            "tests": dict(sorted(self.tests_count.items())),
            "answers": dict(sorted(self.answers_count.items())),
            "sandbox": {"where": self.runner.where, "executions": self.runner.executions,
                        "verdicts_cached_at_start": self.cached_at_start,
                        "busy_s": round(self.runner.busy_s, 3), "waited_after_llm_s": round(self.sandbox_tail_s, 3)},
        }
