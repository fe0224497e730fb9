"""A toy task set whose reward a tiny random-initialised model can climb (the loop's learning test).

Each prompt opens a string literal (``def word_3():\\n    return "``); the response is the string's
contents, up to its first quote or line break (backslashes dropped, so every response makes a valid
program). The tests count characters of the returned string: ``f().count("e") >= k`` for a few k, so
the ``fraction`` reward rises as the policy learns to emit tokens with more e's.
"""

from __future__ import annotations

import re

from raywiz.benchmarks import Task

TARGET_CHAR = "e"
THRESHOLDS = (3, 5, 7)  # ~8 random tokens of the tiny tokenizer hold about 3 e's


def toy_tasks(n: int = 4) -> list[Task]:
    tasks = []
    for i in range(n):
        name = f"word_{i}"
        tests = [f"assert {name}().count({TARGET_CHAR!r}) >= {k}" for k in THRESHOLDS]
        tasks.append(Task("mbpp", f"toy/{i}", f'def {name}():\n    return "', "", entry_point=name, test_list=tests))
    return tasks


def toy_program(task: Task, response: str) -> str:
    """The prompt, the response cut to a string literal's contents, and the closing quote."""
    contents = re.split(r'["\r\n]', response, maxsplit=1)[0].replace("\\", "")
    return f'{task.prompt}{contents}"\n'
