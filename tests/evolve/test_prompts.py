from collections import Counter

from raywiz.evolve import prompts


def test_prompt_and_methods_are_the_published_texts():
    # Typed from WizardCoder (arXiv 2306.08568, Sec. 3.2), independently of prompts.py.
    assert prompts.evol_prompt("erroneous_code", "Q?") == (
        "Please increase the difficulty of the given programming test question a bit.\n\n"
        "You can increase the difficulty using, but not limited to, the following methods:\n"
        "Provide a piece of erroneous code as a reference to increase misdirection.\n\nQ?"
    )
    assert sorted(prompts.METHODS.values()) == sorted([
        "Add new constraints and requirements to the original problem, adding approximately 10 additional words.",
        "Replace a commonly used requirement in the programming task with a less common and more specific one.",
        "If the original problem can be solved with only a few logical steps, please add more reasoning steps.",
        "Provide a piece of erroneous code as a reference to increase misdirection.",
        "Propose higher time or space complexity requirements, but please refrain from doing so frequently.",
    ])


def test_method_draw_is_seeded_per_sample_and_round():
    methods = list(prompts.METHODS)
    draws = [prompts.draw_method(42, f"s{i}", 1, methods) for i in range(500)]
    assert draws == [prompts.draw_method(42, f"s{i}", 1, methods) for i in range(500)]  # reproducible
    counts = Counter(draws)
    assert set(counts) == set(methods) and min(counts.values()) > 60  # roughly uniform
    assert draws != [prompts.draw_method(42, f"s{i}", 2, methods) for i in range(500)]  # new draw each round
    assert draws != [prompts.draw_method(7, f"s{i}", 1, methods) for i in range(500)]  # seed matters
    assert {prompts.draw_method(1, "x", r, ["complexity"]) for r in range(5)} == {"complexity"}


def test_judge_answer_parsing():
    assert prompts.judged_equal("Equal")
    assert not prompts.judged_equal("Not Equal")
    assert not prompts.judged_equal("They are not equal.")


def test_verify_prompts_name_the_same_function_and_carry_the_task():
    from raywiz.evolve.prompts import DEFAULT_ENTRY_POINT, answer_prompt, tests_prompt

    tests, answer = tests_prompt("Reverse a string.", 4), answer_prompt("Reverse a string.")
    rule = f"if it gives none, name the function `{DEFAULT_ENTRY_POINT}`"
    assert rule in tests and rule in answer  # asked at once, the tests and the answers must agree on the name
    assert "exactly 4 test cases" in tests and tests.endswith("Reverse a string.") and answer.endswith("Reverse a string.")
