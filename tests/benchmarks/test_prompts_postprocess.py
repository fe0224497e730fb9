import pytest

from raywiz.benchmarks import Task, load_tasks
from raywiz.benchmarks.postprocess import postprocess, sanitize, wizardcoder
from raywiz.inference.stops import cut_at_stop
from raywiz.benchmarks.prompts import build_prompt

HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


def test_wizardcoder_humaneval_prompt_exact(have_shared_data):
    task = load_tasks("humaneval")[0]
    prompt = build_prompt(task)
    expected = (HEADER + "\n\n### Instruction:\nCreate a Python script for this problem:\n"
                + task.prompt.replace("    ", "\t") + "\n\n### Response:")
    assert prompt == expected


def test_wizardcoder_mbpp_prompt_has_test_examples(have_shared_data):
    tasks = {t.task_id: t for t in load_tasks("mbpp")}
    t = tasks["11"]
    assert build_prompt(t) == (HEADER + "\n\n### Instruction:\nCreate a Python script for this problem:\n\n"
                               + t.prompt + "\nTest examples:\n" + "\n".join(t.test_list) + "\n\n### Response:")
    assert "calculate_polygons(startx, starty, endx, endy, radius)" in build_prompt(tasks["493"])


def test_mbpp_plus_uses_wizardcoders_instruction(have_shared_data):
    t = load_tasks("mbpp+")[0]
    assert build_prompt(t) == HEADER + "\n\n### Instruction:\n" + t.instruction + "\n\n### Response:"


def test_completion_and_custom_styles():
    t = Task(benchmark="humaneval", task_id="x", prompt="def f():\n", solution="")
    assert build_prompt(t, "completion") == "def f():\n"
    assert build_prompt(t, "custom", "<<{prompt}>>") == "<<def f():\n>>"
    with pytest.raises(ValueError):
        build_prompt(t, "custom")


def test_wizardcoder_style_uses_the_checkpoints_trained_template():
    t = Task(benchmark="humaneval", task_id="x", prompt="def f():\n    pass\n", solution="")
    default = build_prompt(t)
    assert build_prompt(t, trained={"template": "alpaca"}) == default  # alpaca without input is WizardCoder's
    custom = build_prompt(t, trained={"template": "custom", "prompt": "Q: {instruction}\nA:"})
    assert custom == "Q: Create a Python script for this problem:\ndef f():\n\tpass\n\nA:"


RAW = ("Here is the code:\n```python\ndef add(a, b):\n\treturn a + b\n\nif __name__ == \"__main__\":\n"
       "    print(add(1, 2))\n```\nHope it helps.")


def test_wizardcoder_postprocess_humaneval():
    assert wizardcoder(RAW, "humaneval") == "def add(a, b):\n    return a + b"


def test_wizardcoder_postprocess_mbpp_plus_cuts_at_assert():
    raw = "```python\ndef f(x):\n    return x\nassert f(1) == 1\n```"
    assert wizardcoder(raw, "mbpp+") == "def f(x):\n    return x"
    assert wizardcoder("def g():\n    pass\n# Example usage\ng()", "humaneval") == "def g():\n    pass"


def test_sanitize_keeps_dependencies_drops_tests():
    raw = ("Sure!\n```python\nimport math\nCONST = 2\ndef helper(x):\n    return x * CONST\n"
           "def unrelated():\n    return 0\ndef area(r):\n    return math.pi * helper(r)\nprint(area(1))\n"
           "assert area(1) > 0\n```")
    out = sanitize(raw, "area")
    assert "def area" in out and "def helper" in out and "CONST = 2" in out and "import math" in out
    assert "unrelated" not in out and "print" not in out and "assert" not in out


def test_stop_sequences_and_ds1000():
    assert cut_at_stop("return 1\ndef g():", ["\ndef", "\nclass"]) == "return 1"
    assert postprocess("<code>\nresult = a.sum()\n</code>\nEND SOLUTION", "ds1000") == "\nresult = a.sum()\n"
