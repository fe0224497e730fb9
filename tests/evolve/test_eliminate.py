import pytest

from raywiz.evolve.config import EliminationConfig
from raywiz.evolve.eliminate import evolution_reason, python_check, response_reason
from raywiz.inference.chat import ChatResult

CFG = EliminationConfig()
PARENT = "Write a Python function that reverses a string."


def ok(text, finish="stop"):
    return ChatResult("k", text=text, finish_reason=finish)


@pytest.mark.parametrize("evolved,reason", [
    (ChatResult("k", error="gave up"), "llm_error"),
    (ok("   "), "empty_evolution"),
    (ok(PARENT + " and much more", finish="length"), "truncated_evolution"),
    (ok("#Rewritten Prompt#: " + PARENT + " with unicode support everywhere"), "copied_template_words"),
    (ok("Here is the rewritten prompt: reverse a string, handling unicode and emoji"), "copied_template_words"),
    (ok(PARENT), "no_information_gain"),
    (ok("Write a Python function that reverses a string!"), "no_information_gain"),
    (ok(PARENT + " Do it in O(1) extra memory without slicing."), None),
])
def test_evolution_rules(evolved, reason):
    assert evolution_reason(PARENT, evolved, CFG) == reason


def test_judge_replaces_the_heuristic():
    judge = EliminationConfig(info_gain="judge")
    assert evolution_reason(PARENT, ok(PARENT), judge, judged_equal=False) is None
    assert evolution_reason(PARENT, ok(PARENT + " in place, twice"), judge, judged_equal=True) == "no_information_gain"


CODE = "```python\ndef rev(s):\n    return s[::-1]\n```"


@pytest.mark.parametrize("response,reason", [
    (ok(""), "empty_response"),
    (ok("Sorry, I can't do that."), "sorry_short_response"),
    (ok("I'm sorry for the delay. " + CODE + " " + "word " * 90), None),  # long: a real answer
    (ok("... the, of; and !"), "stopwords_punctuation_only"),
    (ok(CODE, finish="length"), "truncated_response"),
    (ok("Use slicing, it is the fastest way in CPython."), "python_block_missing"),
    (ok("```python\ndef rev(s:\n    return s\n```"), "python_syntax_error"),
    (ok("```\ndef rev(s):\n    return s[::-1]\n```"), None),  # untagged block, Python expected
    (ok("def rev(s):\n    return s[::-1]"), None),  # bare code, as Code Alpaca's outputs
    (ok(CODE), None),
])
def test_response_rules(response, reason):
    assert response_reason(PARENT, response, CFG) == reason


def test_python_check_only_where_python_is_expected():
    js = "Write a JavaScript function that reverses a string."
    assert python_check(js, "```js\nfunction rev(s) { return s.split('').reverse().join('') }\n```") is None
    assert python_check("What is a Python decorator?", "A function that wraps another.") is None  # no code asked
    # A response that shows Python (tagged) must parse, whatever the instruction says.
    assert python_check(js, "```python\ndef (\n```") == "python_syntax_error"
    assert python_check(PARENT, "```python\nbad(\n```\n```python\nok = 1\n```") is None  # one block parses
