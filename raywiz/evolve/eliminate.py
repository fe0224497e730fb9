"""Elimination: drop failed evolutions, each for one named reason (WizardLM's rules + code checks).

WizardLM (arXiv 2304.12244, Sec. 3.3) drops an evolved instruction when
  1. it adds no information over its parent (an LLM judge, or raywiz's word heuristic),
  2. its response says "sorry" and is short (< 80 words),
  3. its response holds only punctuation and stop words,
  4. it copies words of the evolving prompt ("#Rewritten Prompt#", "given prompt", ...).
raywiz adds: failed/empty/truncated LLM answers, and a code check: a response that should hold
Python must have a block that parses. The first failing check names the reason; an instruction
that fails is not sent for a response.
"""

from __future__ import annotations

import ast
import re
import textwrap

from raywiz.evolve.prompts import TEMPLATE_WORDS

# Reasons, in the order they are checked.
REASONS = (
    "llm_error",
    "empty_evolution",
    "truncated_evolution",
    "copied_template_words",
    "no_information_gain",
    "empty_response",
    "sorry_short_response",
    "stopwords_punctuation_only",
    "truncated_response",
    "python_block_missing",
    "python_syntax_error",
)

# NLTK's English stop-word list (the list WizardLM's rule refers to in spirit).
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him his
himself she she's her hers herself it it's its itself they them their theirs themselves what which who whom this
that that'll these those am is are was were be been being have has had having do does did doing a an the and but
if or because as until while of at by for with about against between into through during before after above
below to from up down in out on off over under again further then once here there when where why how all any both
each few more most other some such no nor not only own same so than too very s t can will just don don't should
should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't
haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't
weren weren't won won't wouldn wouldn't
""".split())

WORD = re.compile(r"[A-Za-z0-9_']+")
FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+#.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
PYTHON_TAGS = {"python", "py", "python3", "py3"}
# Words that ask for code (an instruction that mentions Python and one of these expects Python code).
CODE_ASKS = re.compile(
    r"\b(write|implement|create|code|program|script|function|class|method|modify|fix|debug|rewrite|refactor|"
    r"develop|construct|design|generate|complete)\b", re.I)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def copies_template_words(instruction: str) -> bool:
    lowered = instruction.lower()
    return any(w in lowered for w in TEMPLATE_WORDS)


def lacks_information_gain(parent: str, evolved: str, min_new_words: int) -> bool:
    """Heuristic for WizardLM's rule 1: the evolution is the parent again, or adds almost no words."""
    parent_words, evolved_words = words(parent), words(evolved)
    if evolved_words == parent_words:
        return True
    return len(set(evolved_words) - set(parent_words)) < min_new_words


def sorry_and_short(response: str, max_words: int) -> bool:
    return "sorry" in response.lower() and len(response.split()) < max_words


def only_stopwords_and_punctuation(response: str) -> bool:
    return all(w in STOP_WORDS for w in words(response))


def python_blocks(response: str, expects_python: bool) -> list[str]:
    """Code blocks that are meant to be Python: tagged python, or untagged when Python is expected."""
    return [body for tag, body in FENCE.findall(response)
            if tag.lower() in PYTHON_TAGS or (not tag and expects_python)]


def parses(code: str) -> bool:
    try:
        ast.parse(textwrap.dedent(code))
    except (SyntaxError, ValueError):
        return False
    return True


def python_check(instruction: str, response: str) -> str | None:
    """None when fine, else 'python_block_missing' or 'python_syntax_error'.

    A response should hold Python when it shows a Python-tagged block, or when the instruction names
    Python and asks for code. It passes when one of its Python blocks (or, unfenced, the whole
    response) parses.
    """
    asks_python = bool(re.search(r"\bpython\b", instruction, re.I)) and bool(CODE_ASKS.search(instruction))
    blocks = python_blocks(response, asks_python)
    tagged = any(tag.lower() in PYTHON_TAGS for tag, _ in FENCE.findall(response))
    if not (asks_python or tagged):
        return None
    if blocks:
        return None if any(parses(b) for b in blocks) else "python_syntax_error"
    if "```" not in response and parses(response) and len(response.strip().splitlines()) > 1:
        return None  # a bare code answer, as Code Alpaca's outputs are
    return "python_block_missing"


def evolution_reason(parent_text: str, evolved, cfg, judged_equal: bool | None = None) -> str | None:
    """Why an evolved instruction fails before it is answered (None: it goes on to get a response).

    ``evolved`` is the ChatResult of the evolution request; ``cfg`` an EliminationConfig;
    ``judged_equal`` the judge's verdict when ``cfg.info_gain == 'judge'``.
    """
    if not evolved.ok:
        return "llm_error"
    if not evolved.text.strip():
        return "empty_evolution"
    if cfg.drop_truncated and evolved.finish_reason == "length":
        return "truncated_evolution"
    if copies_template_words(evolved.text):
        return "copied_template_words"
    if cfg.info_gain == "judge" and judged_equal:
        return "no_information_gain"
    if cfg.info_gain == "heuristic" and lacks_information_gain(parent_text, evolved.text, cfg.min_new_words):
        return "no_information_gain"
    return None


def response_reason(instruction: str, response, cfg) -> str | None:
    """Why a response (an ChatResult) fails its instruction (None: the pair is kept)."""
    if not response.ok:
        return "llm_error"
    text = response.text
    if not text.strip():
        return "empty_response"
    if sorry_and_short(text, cfg.sorry_max_words):
        return "sorry_short_response"
    if only_stopwords_and_punctuation(text):
        return "stopwords_punctuation_only"
    if cfg.drop_truncated and response.finish_reason == "length":
        return "truncated_response"
    if cfg.check_python:
        return python_check(instruction, text)
    return None
