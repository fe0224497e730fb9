"""From a model's raw output to the completion that is scored.

`wizardcoder` reproduces WizardCoder's scripts (nlpxucan/WizardLM WizardCoder/src/):
  process_humaneval.py     take the ```python block, cut at `if __name__ == "__main__":` and `# Example usage`
  process_mbpp.py          the same (the block ends at "\\n```"), also cut at `# Test examples`
  mbppplus_process_preds.py  the same as MBPP, and cut at the first `assert`
with tabs turned back into 4 spaces first (their generation scripts did that).
DS-1000 uses xlang-ai's postprocess (`</code>`, fences, `END SOLUTION`).

`sanitize` is evalplus-style sanitising, written with `ast` instead of tree-sitter: extract the code
(the longest fenced block, else the longest run of lines that parses), keep imports and the
definitions the entry point depends on, drop top-level calls, prints and tests.
`none` keeps the text as generated (after stop sequences).
"""

from __future__ import annotations

import ast
import re

from raywiz.inference.stops import cut_at_stop

METHODS = ("wizardcoder", "sanitize", "none")


def _cut_at(completion: str, marker: str) -> str:
    if marker in completion:
        completion = completion[: completion.index(marker)].strip()
    return completion


def _fenced_block(completion: str, end_marker: str) -> str:
    if "```python" in completion:
        completion = completion[completion.index("```python"):].strip().replace("```python", "")
        if end_marker in completion:
            completion = completion[: completion.index(end_marker)].strip()
    return completion


def wizardcoder(completion: str, benchmark: str) -> str:
    completion = completion.replace("\t", "    ")
    if benchmark in ("humaneval", "humaneval+"):
        completion = _fenced_block(completion.replace("\r", ""), "```")
        markers = ['if __name__ == "__main__":', "# Example usage"]
    elif benchmark == "mbpp":
        completion = _fenced_block(completion, "\n```")
        markers = ['if __name__ == "__main__":', "# Example usage", "# Test examples"]
    elif benchmark == "mbpp+":
        completion = _fenced_block(completion.replace("\r", ""), "\n```")
        markers = ['if __name__ == "__main__":', "# Example usage", "assert"]
    else:
        return ds1000(completion)
    for marker in markers:
        completion = _cut_at(completion, marker)
    return completion


def ds1000(completion: str) -> str:
    """xlang-ai DS-1000's postprocess (models wrap code in tags and fences despite being asked not to)."""
    code = completion.split("</code>")[0]
    code = code.replace("```python", "")
    code = code.split("```")[0]
    code = code.split("\nEND SOLUTION")[0]
    return code.replace("<code>", "")


# ----------------------------------------------------------------------------- evalplus-style sanitize


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
        return True
    except (SyntaxError, ValueError):
        return False


def extract_code(text: str) -> str:
    """The longest ```python (or ```) block; without fences, the longest run of lines that parses."""
    blocks = re.findall(r"```(?:python|py|Python)?\s*\n(.*?)```", text, flags=re.DOTALL)
    blocks = [b for b in blocks if _parses(b)] or blocks
    if blocks:
        return max(blocks, key=len)
    lines = text.split("\n")
    if len(lines) > 400:  # the quadratic search below is for model-sized outputs
        lines = lines[:400]
    best, best_len = "", 0
    for i in range(len(lines)):
        for j in range(len(lines), i, -1):
            chunk = "\n".join(lines[i:j])
            n = sum(1 for line in lines[i:j] if line.strip())
            if n <= best_len:
                break
            if _parses(chunk):
                best, best_len = chunk, n
                break
    return best


def _names_used(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.value.id for n in ast.walk(node) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
    }


def sanitize(text: str, entry_point: str | None = None) -> str:
    code = extract_code(text)
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    imports, definitions = [], {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.append(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            definitions[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if names and not any(isinstance(n, ast.Call) and _calls_print(n) for n in ast.walk(node)):
                for name in names:
                    definitions[name] = node
    keep = set(definitions)
    if entry_point and entry_point in definitions:
        keep, todo = set(), [entry_point]
        while todo:
            name = todo.pop()
            if name in keep or name not in definitions:
                continue
            keep.add(name)
            todo.extend(_names_used(definitions[name]) - keep)
    kept_nodes = imports + [n for n in tree.body if any(definitions.get(k) is n for k in keep)]
    kept_nodes.sort(key=lambda n: n.lineno)
    seen, parts = set(), []
    for node in kept_nodes:
        if id(node) in seen:
            continue
        seen.add(id(node))
        parts.append(ast.get_source_segment(code, node, padded=False) or ast.unparse(node))
    return "\n".join(parts)


def _calls_print(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Name) and call.func.id == "print"


def postprocess(raw: str, benchmark: str, method: str = "wizardcoder", entry_point: str | None = None,
                stop: list[str] | None = None) -> str:
    text = cut_at_stop(raw, stop)  # what servers and vLLM do; HF generate may run past one
    if method == "wizardcoder":
        return wizardcoder(text, benchmark)
    if method == "sanitize":
        return ds1000(text) if benchmark == "ds1000" else sanitize(text, entry_point)
    if method == "none":
        return text
    raise ValueError(f"unknown postprocess {method!r}; expected one of {METHODS}")
