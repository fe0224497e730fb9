"""The LLM's unit tests, read into plain-value asserts over one function (or refused, with the reason).

The sandbox's trusted checker runs a test's assert *in the evaluator*, and only calls of the entry
point go to the candidate's sandboxed process (raywiz.benchmarks.score). Tests are written by an LLM,
so they are hostile code too: a test is accepted only when it is one ``assert`` whose expression is
built from literals, comparisons, ``and``/``or``/``not``, ``+``/``-``, indexing, calls of the entry
point, and calls of a few pure builtins (``sorted``, ``len``, ``abs``, ...). No names besides those,
no attributes, no lambdas or comprehensions, no ``*``/``**`` (``[0] * 10**9`` is a memory bomb), and
at most MAX_TEST_CHARS characters: nothing a test does can run for long or reach anything but the
function under test. The entry point is the function the first accepted assert calls; an assert
that calls another function is refused.

    entry_point, tests, refused = read_tests(llm_text, limit=5)     # refused: {test text: reason}
"""

from __future__ import annotations

import ast
import builtins

from raywiz.benchmarks.postprocess import extract_code

MAX_TEST_CHARS = 1000
# Pure builtins a test may call on plain values (the candidate's results are plain values by then).
SAFE_CALLS = frozenset({"abs", "all", "any", "bool", "dict", "float", "frozenset", "int", "isinstance", "len",
                        "list", "max", "min", "round", "set", "sorted", "str", "sum", "tuple"})
_NODES = (ast.Compare, ast.BoolOp, ast.UnaryOp, ast.BinOp, ast.Constant, ast.List, ast.Tuple, ast.Set, ast.Dict,
          ast.Call, ast.Name, ast.Subscript, ast.Slice, ast.keyword, ast.Load, ast.expr_context,
          ast.boolop, ast.cmpop, ast.unaryop, ast.Add, ast.Sub)


def _refusal(node: ast.Assert, entry_point: str | None) -> str | None:
    """Why an assert is not a plain-value test (None: it is one)."""
    if node.msg is not None and not isinstance(node.msg, ast.Constant):
        return "not_plain_values"
    calls = []
    for n in ast.walk(node.test):
        if not isinstance(n, _NODES):
            return "not_plain_values"
        if isinstance(n, ast.BinOp) and not isinstance(n.op, (ast.Add, ast.Sub)):
            return "not_plain_values"
        if isinstance(n, ast.Call):
            if not isinstance(n.func, ast.Name) or any(isinstance(a, ast.Starred) for a in n.args) \
                    or any(k.arg is None for k in n.keywords):
                return "not_plain_values"
            if n.func.id not in SAFE_CALLS:
                calls.append(n.func.id)
        if isinstance(n, ast.Name) and n.id not in SAFE_CALLS and not isinstance(n.ctx, ast.Load):
            return "not_plain_values"
    names = {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)} - SAFE_CALLS
    if not calls:
        return "no_function_call"
    if any(name.startswith("__") or hasattr(builtins, name) for name in calls):
        return "not_plain_values"  # the evaluator's own builtins are never the function under test
    if names - set(calls):
        return "unknown_name"  # a variable the test never defines
    if len(set(calls)) > 1 or (entry_point is not None and calls[0] != entry_point):
        return "calls_another_function"
    return None


def _statements(code: str) -> list[str]:
    """The code's top-level statements as source text (each line alone when the whole does not parse)."""
    try:
        tree = ast.parse(code)
        return [ast.get_source_segment(code, n) or "" for n in tree.body]
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return [line for line in code.splitlines() if line.strip()]


def read_tests(text: str, limit: int) -> tuple[str | None, list[str], dict[str, str]]:
    """(entry point, up to `limit` accepted tests as one-line asserts, refused {test: reason})."""
    entry_point: str | None = None
    tests: list[str] = []
    refused: dict[str, str] = {}
    for source in _statements(extract_code(text or "")):
        if len(tests) >= limit:
            break
        source = source.strip()
        if not source or source.startswith("#"):
            continue
        if len(source) > MAX_TEST_CHARS:
            refused[source[:200]] = "too_long"
            continue
        try:
            node = ast.parse(source).body
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            refused[source] = "syntax_error"
            continue
        if len(node) != 1 or not isinstance(node[0], ast.Assert):
            refused[source] = "not_an_assert"
            continue
        reason = _refusal(node[0], entry_point)
        if reason:
            refused[source] = reason
            continue
        if entry_point is None:
            entry_point = next(n.func.id for n in ast.walk(node[0].test)
                               if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id not in SAFE_CALLS)
        test = ast.unparse(node[0])  # one line, whatever the LLM's layout
        if test not in tests:
            tests.append(test)
    return entry_point, tests, refused


def defines_function(code: str, name: str) -> bool:
    """Does the code define `name` at top level (a def, or a class: MBPP's callables)?"""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.name == name
               for n in tree.body)


def empty_function(name: str) -> str:
    """The do-nothing candidate: a test that passes on it tests nothing."""
    return f"def {name}(*args, **kwargs):\n    pass\n"
