"""DS-1000 (1,000 data-science problems over NumPy, Pandas, SciPy, scikit-learn, Matplotlib, PyTorch,
TensorFlow), in either official format:

- xlang-ai/DS-1000 ``ds1000.jsonl(.gz)``: `prompt`, `reference_code`, `code_context` (a test
  program defining ``test_execution(solution)`` and maybe ``test_string(solution)``), `metadata`
  (`problem_id`, `library`, `test_case_cnt`, `perturbation_type`, ...). Task ids are the problem ids.
- HKUNLP/DS-1000 ``ds1000_data.zip`` (or its extracted folder): ``<Library>/<Completion|Insertion>/q<N>/``
  with prompt.txt, reference_code.txt, code_context.txt ("[insert]" marks the solution),
  test_code.py (``test(result, ans)``, maybe ``stringTest(code)``), .cfg, input/ and ans/ pickles.
  Task ids are ``<Library>/<mode>/q<N>``. A zip is extracted once into the cache.

Running the tests needs the libraries: ``pip install raywiz[ds1000]``.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import zipfile

from raywiz.benchmarks import Task, read_jsonl, require_fields
from raywiz.benchmarks.sources import cache_dir, locate

FIELDS = ("prompt", "reference_code", "code_context", "metadata")
LIBRARY_MODULES = {
    "numpy": ["numpy"], "pandas": ["numpy", "pandas"], "scipy": ["numpy", "scipy"],
    "sklearn": ["numpy", "sklearn"], "matplotlib": ["numpy", "matplotlib"], "pytorch": ["numpy", "torch"],
    "tensorflow": ["numpy", "tensorflow"],
}


def library_modules(library: str) -> list[str]:
    """Modules a DS-1000 problem's harness has imported before its guard (see sandbox/harness.py)."""
    return LIBRARY_MODULES.get(library.lower(), [])


def load(data_path: str | None = None, mode: str = "Completion") -> list[Task]:
    path = locate("ds1000", data_path)
    if os.path.isdir(path) or path.endswith(".zip"):
        return _load_hkunlp(path, mode)
    return _load_xlang(path)


def _load_xlang(path: str) -> list[Task]:
    tasks = []
    for lineno, r in read_jsonl(path):
        require_fields(r, FIELDS, f"{path}:{lineno}")
        meta = r["metadata"]
        if "problem_id" not in meta:
            raise ValueError(f"{path}:{lineno}: metadata has no problem_id")
        tasks.append(Task(
            benchmark="ds1000", task_id=str(meta["problem_id"]), prompt=r["prompt"], solution=r["reference_code"],
            code_context=r["code_context"], metadata=dict(meta, format="xlang"),
        ))
    return tasks


def _extract_zip(path: str) -> str:
    """Extract an HKUNLP zip once into the cache; a marker file written last says it is complete."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    target = os.path.join(cache_dir(), "ds1000", digest)
    marker = os.path.join(target, ".extracted")
    if not os.path.exists(marker):
        tmp = target + ".partial"
        with zipfile.ZipFile(path) as z:
            z.extractall(tmp)
        if os.path.exists(target):
            import shutil

            shutil.rmtree(target)
        os.replace(tmp, target)
        open(marker, "w").close()
    return target


def _find_root(path: str) -> str:
    """The folder whose children are library folders (Numpy/, Pandas/...)."""
    for root, dirs, _ in os.walk(path):
        if any(os.path.isdir(os.path.join(root, d, m)) for d in dirs for m in ("Completion", "Insertion")):
            return root
    raise ValueError(f"{path}: no DS-1000 problems (expected <Library>/Completion/q<N>/ folders)")


def _read(problem: str, name: str) -> str:
    with open(os.path.join(problem, name), encoding="utf-8") as f:
        return f.read()


def _load_hkunlp(path: str, mode: str) -> list[Task]:
    root = _find_root(_extract_zip(path) if path.endswith(".zip") else path)
    tasks = []
    for library in sorted(os.listdir(root)):
        mode_dir = os.path.join(root, library, mode)
        if not os.path.isdir(mode_dir):
            continue
        problems = [d for d in os.listdir(mode_dir) if d.startswith("q") and d[1:].isdigit()]
        for q in sorted(problems, key=lambda d: int(d[1:])):
            problem = os.path.join(mode_dir, q)
            for name in ("prompt.txt", "reference_code.txt", "code_context.txt", "test_code.py", ".cfg"):
                if not os.path.exists(os.path.join(problem, name)):
                    raise ValueError(f"{problem}: missing {name}")
            cfg = configparser.ConfigParser()
            cfg.read(os.path.join(problem, ".cfg"))
            tasks.append(Task(
                benchmark="ds1000", task_id=f"{library}/{mode}/{q}", prompt=_read(problem, "prompt.txt"),
                solution=_read(problem, "reference_code.txt"), code_context=_read(problem, "code_context.txt"),
                problem_dir=problem,
                metadata={
                    "format": "hkunlp", "library": cfg.get("library", "lib", fallback=library),
                    "test_type": cfg.getint("test", "test_type", fallback=1),
                    "test_case_cnt": cfg.getint("test", "test_case_cnt", fallback=1),
                    "perturbation_type": cfg.get("perturbation", "perturbation_type", fallback="Origin"),
                },
            ))
    if not tasks:
        raise ValueError(f"{path}: no DS-1000 problems in mode {mode!r}")
    return tasks
