"""Fill-in-the-middle in training: bigcode's transformation on characters (round trip, rates, determinism),
the model's own tokens or a refusal naming train.data.fim, code sources beside instruction sources."""

from __future__ import annotations

import json
import random

import pytest

from raywiz.config import parse_job
from raywiz.data import fim
from raywiz.data.tokenize import IGNORE_INDEX
from raywiz.modeling import load_tokenizer
from tests.data.fim_tokenizer import STARCODER, save_fim_tokenizer

CODE = 'def add(a, b):\n    """Add two numbers."""\n    return a + b  # <fim_middle> in a comment\n'


@pytest.fixture(scope="module")
def fim_tok_dir(tmp_path_factory):
    return save_fim_tokenizer(tmp_path_factory.mktemp("fim-tokenizer"))


@pytest.fixture(scope="module")
def tok(fim_tok_dir):
    return load_tokenizer("tiny-gpt-bigcode", str(fim_tok_dir))


def _random_code(rng: random.Random) -> str:
    pieces = ["def f(x):\n", "    return x\n", "# é ünïcode ✓\n", "\t", "class A:\n    pass\n", "x = [1, 2]\n", " "]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))


def test_split_is_characters_and_joins_back_exactly():
    rng = random.Random(0)
    seen_empty = {"prefix": False, "middle": False, "suffix": False}
    for i in range(400):
        text = _random_code(rng)
        parts = fim.split(text, fim.rng_for(7, f"s{i}"), rate=1.0, spm_rate=0.5)
        assert parts is not None and parts.prefix + parts.middle + parts.suffix == text
        for name in seen_empty:
            seen_empty[name] |= getattr(parts, name) == ""
    assert all(seen_empty.values())  # a boundary may fall at 0, at the end, or both at one place


@pytest.mark.parametrize("spm_rate", [0.0, 1.0])
def test_sample_layout_and_exact_round_trip(tok, spm_rate):
    pre, suf, mid = STARCODER.ids(tok)
    for i in range(50):
        sid = f"doc-{i}"
        sample = fim.tokenize_code(tok, CODE, sid, seed=1, rate=1.0, spm_rate=spm_rate, tokens=STARCODER)
        parts = fim.split(CODE, fim.rng_for(1, sid), 1.0, spm_rate)
        ids = sample.input_ids
        assert ids[-1] == tok.eos_token_id and sample.labels == ids  # code is learned whole, EOS included
        assert ids.count(pre) == ids.count(suf) == ids.count(mid) == 1  # the text "<fim_middle>" stays text
        m = ids.index(mid)
        if spm_rate:  # <pre> <suf> suffix <mid> prefix middle
            assert ids[:2] == [pre, suf] and tok.decode(ids[2:m]) == parts.suffix
            assert tok.decode(ids[m + 1:-1]) == parts.prefix + parts.middle
        else:  # <pre> prefix <suf> suffix <mid> middle
            s = ids.index(suf)
            assert ids[0] == pre and tok.decode(ids[1:s]) == parts.prefix
            assert tok.decode(ids[s + 1:m]) == parts.suffix and tok.decode(ids[m + 1:-1]) == parts.middle
        assert fim.undo(tok, ids, STARCODER) == CODE


def test_rates_are_respected_over_many_samples(tok):
    n, rate, spm_rate = 3000, 0.3, 0.25
    splits = [fim.split(CODE, fim.rng_for(11, f"id{i}"), rate, spm_rate) for i in range(n)]
    done = [s for s in splits if s is not None]
    assert abs(len(done) / n - rate) < 0.03  # binomial sd ~0.008
    assert abs(sum(s.spm for s in done) / len(done) - spm_rate) < 0.05
    kept = fim.tokenize_code(tok, CODE, "id-kept", seed=11, rate=0.0, tokens=STARCODER)
    assert kept.input_ids == tok(CODE, add_special_tokens=False, split_special_tokens=True)["input_ids"] + [0]


def test_same_seed_and_id_give_the_same_sample(tok):
    def ids(seed, sid):
        return fim.tokenize_code(tok, CODE, sid, seed=seed, rate=1.0, spm_rate=0.5, tokens=STARCODER).input_ids

    assert ids(3, "a") == ids(3, "a")
    assert len({tuple(ids(3, f"id{i}")) for i in range(20)}) > 10  # ids draw their own split points
    assert any(ids(3, f"id{i}") != ids(4, f"id{i}") for i in range(10))  # and the seed matters


def test_token_sets_are_found_by_name_and_missing_ones_refused(tmp_path):
    plain = load_tokenizer("tiny-gpt-bigcode")
    assert fim.find_tokens(plain) is None and fim.record(plain) == {}
    with pytest.raises(fim.FimUnavailable, match="train.data.fim"):
        fim.require_tokens(plain)
    for tokens in fim.TOKEN_SETS:
        tok = load_tokenizer("tiny-gpt-bigcode", str(save_fim_tokenizer(tmp_path / tokens.family, tokens)))
        assert fim.find_tokens(tok) == tokens and fim.record(tok) == {"fim": tokens.to_dict()}


def test_config_fields():
    job = parse_job({"name": "t", "train": {"data": {"fim": {"rate": 1.0, "spm_rate": 0.0},
                                                     "sources": [{"path": "x", "formatting": "code"}]}}})
    assert job.train.data.fim.rate == 1.0 and job.train.data.sources[0].formatting == "code"
    from raywiz.config import ConfigError

    with pytest.raises(ConfigError, match="fim.rate"):
        parse_job({"name": "t", "train": {"data": {"paths": ["x"], "fim": {"rate": 1.5}}}})


def _sources(tmp_path):
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    for i in range(6):
        (code_dir / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n")
    rows = tmp_path / "content.jsonl"
    rows.write_text("".join(json.dumps({"content": f"print({i})\n"}) + "\n" for i in range(4))
                    + json.dumps({"content": ""}) + "\n")
    alpaca = tmp_path / "alpaca.jsonl"
    alpaca.write_text("".join(json.dumps({"instruction": f"task {i}", "output": f"x = {i}"}) + "\n" for i in range(5)))
    # Weights in proportion to the sizes: the mix then takes every sample once.
    return [{"path": str(code_dir / "*.py"), "formatting": "code", "weight": 6},
            {"path": str(rows), "formatting": "code", "weight": 4}, {"path": str(alpaca), "weight": 5}]


@pytest.mark.slow
def test_code_and_instruction_sources_mix_with_fim_on_ray(ray_local, tmp_path, fim_tok_dir, tok):
    from raywiz.data.pipeline import prepare_packed_dataset
    from raywiz.train.launch import resolve_sources

    job = parse_job({"name": "t", "model": {"name_or_path": "tiny-gpt-bigcode", "tokenizer": str(fim_tok_dir)},
                     "train": {"data": {"max_length": 128, "pack": False, "fim": {"rate": 1.0, "spm_rate": 0.0},
                                        "sources": _sources(tmp_path)}}})
    packed, report = prepare_packed_dataset(resolve_sources(job), job.train.data, job.model, seed=5, num_cpus=2)
    assert report.n_bad == 1 and report.bad_rows[0]["reason"] == "empty 'content'"
    rows = packed.take_all()
    assert len(rows) == 15
    pre = tok.convert_tokens_to_ids(STARCODER.prefix)
    fim_rows = [r for r in rows if r["input_ids"][0] == pre]
    assert len(fim_rows) == 10  # every code sample (rate 1.0), no instruction row
    texts = sorted(fim.undo(tok, [t for t in r["input_ids"].tolist() if t != 1], STARCODER) for r in fim_rows)
    assert texts == sorted([f"def f{i}(x):\n    return x * {i}\n" for i in range(6)] + [f"print({i})\n" for i in range(4)])
    for r in fim_rows:  # learned whole (the packer never labels a sample's first token)
        n = int(r["n_tokens"])
        assert (r["labels"][1:n] == r["input_ids"][1:n]).all()
    instruction = [r for r in rows if r["input_ids"][0] != pre]
    assert all((r["labels"][:5] == IGNORE_INDEX).all() for r in instruction)  # the template's prompt is masked
    assert "### Instruction:\ntask" in tok.decode(instruction[0]["input_ids"][: int(instruction[0]["n_tokens"])])

    # The same seed gives the same samples (resume rebuilds this dataset); the shipped tokenizer is refused.
    again, _ = prepare_packed_dataset(resolve_sources(job), job.train.data, job.model, seed=5, num_cpus=2)
    assert sorted(r["input_ids"].tolist() for r in again.take_all()) == sorted(r["input_ids"].tolist() for r in rows)
    plain = job.model.model_copy(update={"tokenizer": None})
    with pytest.raises(fim.FimUnavailable, match="train.data.fim"):
        prepare_packed_dataset(resolve_sources(job), job.train.data, plain, seed=5, num_cpus=2)
