import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raywiz.evolve.config import SeedsConfig
from raywiz.evolve.seeds import SeedError, load_seeds


def test_code_alpaca_seed_file(shared_data):
    seeds, counts = load_seeds(SeedsConfig(paths=[str(shared_data / "codealpaca/code_alpaca_2k.json")]))
    assert counts["read"] == 2017
    assert len(seeds) + counts["duplicate_seed"] == 2017
    assert len({s.sample_id for s in seeds}) == len(seeds)
    first = seeds[0]
    assert first.evol_round == 0 and first.method == "seed" and first.parent_id is None
    assert first.source == "code_alpaca_2k" and first.instruction and first.output
    assert sum(bool(s.input) for s in seeds) > 0  # Code Alpaca inputs are kept


def test_shipped_quickstart_set_is_a_valid_seed():
    seeds, _ = load_seeds(SeedsConfig(paths=["raywiz:quickstart/instructions.jsonl"], limit=5))
    assert 0 < len(seeds) <= 5 and all(s.instruction and s.output for s in seeds)


def test_parquet_jsonl_limit_and_missing_output(tmp_path):
    rows = [{"instruction": f"task {i}", "input": None, "output": "x" if i % 2 else ""} for i in range(6)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "s.parquet")
    seeds, counts = load_seeds(SeedsConfig(paths=[str(tmp_path / "s.parquet")], limit=4))
    assert [s.instruction for s in seeds] == ["task 0", "task 1", "task 2", "task 3"]
    assert counts["seed_without_output"] == 2


def test_bad_rows_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "ok", "output": "y"}\n{"output": "no instruction"}\n')
    with pytest.raises(SeedError, match=r"bad\.jsonl:line 2: missing field 'instruction'"):
        load_seeds(SeedsConfig(paths=[str(path)]))
    path.write_text('{"instruction": "ok"}\nnot json\n')
    with pytest.raises(SeedError, match=r"bad\.jsonl:line 2: not valid JSON"):
        load_seeds(SeedsConfig(paths=[str(path)]))
    path.write_text('{"instruction": 3}\n')
    with pytest.raises(SeedError, match="expected text"):
        load_seeds(SeedsConfig(paths=[str(path)]))


@pytest.mark.slow
def test_hugging_face_dataset_seeds(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "codealpaca-like"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(
        f'{{"prompt": "Write function {i}.", "completion": "def f{i}(): pass"}}\n' for i in range(5)))
    # A dataset name works the same when online; a local dataset directory works offline.
    cfg = SeedsConfig(hf_dataset=str(data), instruction_field="prompt", output_field="completion", limit=3)
    seeds, counts = load_seeds(cfg)
    assert [s.instruction for s in seeds] == ["Write function 0.", "Write function 1.", "Write function 2."]
    assert seeds[0].output == "def f0(): pass" and seeds[0].source == str(data)
