"""Every prompt text of Code Evol-Instruct, in one place, exactly as published.

The evolution prompt and the five methods are WizardCoder's (arXiv 2306.08568, Sec. 3.2). The
equality-judge prompt is WizardLM's (arXiv 2304.12244, Appendix: "Equal Prompt"), used only when
`eliminate.info_gain: judge`. The verify step's two prompts (unit tests, candidate answers) follow
SelfCodeAlign (bigcode, arXiv 2410.24198: the model writes assert-based tests, answers are kept only
when they pass them in a sandbox) and KodCode (arXiv 2503.02951: question, solution and tests are
written separately, the tests pytest-style over one named function). Nothing else in raywiz holds
prompt text for this stage.
"""

from __future__ import annotations

import random

EVOL_PROMPT = (
    "Please increase the difficulty of the given programming test question a bit.\n\n"
    "You can increase the difficulty using, but not limited to, the following methods:\n"
    "{method}\n\n{question}"
)

# name -> method text. The names are raywiz's (for configs and the `method` column); texts are the paper's.
METHODS: dict[str, str] = {
    "add_constraints": "Add new constraints and requirements to the original problem, adding approximately 10 "
    "additional words.",
    "replace_requirement": "Replace a commonly used requirement in the programming task with a less common and "
    "more specific one.",
    "more_reasoning": "If the original problem can be solved with only a few logical steps, please add more "
    "reasoning steps.",
    "erroneous_code": "Provide a piece of erroneous code as a reference to increase misdirection.",
    "complexity": "Propose higher time or space complexity requirements, but please refrain from doing so "
    "frequently.",
}

# WizardLM's elimination step 1: does the evolved instruction add information over its parent?
EQUAL_JUDGE_PROMPT = (
    "Here are two Instructions to ChatGPT AI, do you think they are equal to each other, which meet the "
    "following requirements:\n1. They have same constraints and requirments.\n2. They have same depth and "
    "breadth of the inquiry.\nThe First Prompt: {first}\nThe Second Prompt: {second}\n"
    "Your Judgement (Just answer: Equal or Not Equal. No need to explain the reason.):"
)

# WizardLM's elimination step 4: words that show the model copied the evolving prompt's scaffolding.
TEMPLATE_WORDS = ("#given prompt#", "#rewritten prompt#", "given prompt", "rewritten prompt")


# The verify step (raywiz/evolve/verify.py). Both prompts state the same naming rule, so the tests and the
# answers, asked for at the same time, call the same function (the tests' function is the entry point).
FUNCTION_NAME_RULE = ("Use the function name the task gives; if it gives none, name the function `{default}`.")
DEFAULT_ENTRY_POINT = "solution"

# SelfCodeAlign's self-validation tests, as KodCode asks for them: plain asserts over one function.
TESTS_PROMPT = (
    "Write unit tests for a Python function that solves the programming task below.\n\n"
    "{rule}\n"
    "Write exactly {n} test cases, each one single-line `assert` statement that calls the function with literal "
    "arguments and compares the result with a literal expected value, in this form:\n"
    "assert function_name(<arguments>) == <expected value>\n"
    "Cover typical inputs and edge cases. Use no imports, variables, helper functions or comments.\n"
    "Answer with the assert statements only, in one ```python code block.\n\n"
    "### Task\n{instruction}"
)

# SelfCodeAlign's response step: a self-contained solution in one code block.
ANSWER_PROMPT = (
    "Solve the programming task below in Python.\n\n"
    "{rule}\n"
    "Write one self-contained function (imports inside the code block, no input() or printing), in one "
    "```python code block, then briefly explain it.\n\n"
    "### Task\n{instruction}"
)


def tests_prompt(instruction: str, n: int) -> str:
    rule = FUNCTION_NAME_RULE.format(default=DEFAULT_ENTRY_POINT)
    return TESTS_PROMPT.format(rule=rule, n=n, instruction=instruction)


def answer_prompt(instruction: str) -> str:
    return ANSWER_PROMPT.format(rule=FUNCTION_NAME_RULE.format(default=DEFAULT_ENTRY_POINT), instruction=instruction)


def draw_method(seed: int, sample_id: str, evol_round: int, methods: list[str]) -> str:
    """The method for one sample in one round: seeded by (seed, sample, round), so the draw does not
    depend on which worker handles the sample or in what order (a resumed run draws the same)."""
    rng = random.Random(f"{seed}:{sample_id}:{evol_round}")  # str seeds hash with SHA-512: stable everywhere
    return methods[rng.randrange(len(methods))]


def evol_prompt(method: str, question: str) -> str:
    return EVOL_PROMPT.format(method=METHODS[method], question=question)


def judge_prompt(parent: str, evolved: str) -> str:
    return EQUAL_JUDGE_PROMPT.format(first=parent, second=evolved)


def judged_equal(answer: str) -> bool:
    """Read the judge's answer: 'Equal' (not 'Not Equal')."""
    text = answer.strip().lower()
    return "equal" in text and "not equal" not in text and "unequal" not in text
