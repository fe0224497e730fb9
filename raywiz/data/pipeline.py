"""The Ray Data wiring of the train stage: shards -> validated rows -> tokens -> packed rows.

It runs once per training run, on the cluster's CPU workers, and is materialized in the object store,
because the learning-rate schedule needs the exact number of steps up front and because exact resume
needs every epoch's order to be reproducible. The packed rows are shuffled once (seeded); workers
stream their part with ``get_dataset_shard`` + ``iter_torch_batches`` and reshuffle it every epoch
through a local buffer seeded by the epoch. With ``preserve_order`` the split between workers is
deterministic, so a restarted run sees exactly the same rows in the same order.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from raywiz.data import conversation as conv
from raywiz.data import fim
from raywiz.data import mix
from raywiz.data import pack as packing
from raywiz.data.shards import BadRowError, Row, _detect_format, _open_bytes, iter_rows, sample_id_of, validate, where
from raywiz.data.template import with_chat_template
from raywiz.data.tokenize import fit_to_length, tokenize_sample
from raywiz.log import get_logger
from raywiz.data.config import DataSourceConfig

log = get_logger(__name__)
MAX_BAD_ROWS_LISTED = 200


@dataclass
class DataReport:
    files: list[str]
    n_rows: int = 0
    n_samples: int = 0  # rows that train
    n_bad: int = 0
    bad_rows: list[dict] = field(default_factory=list)  # first MAX_BAD_ROWS_LISTED, with file and row
    n_overlong_dropped: int = 0
    n_truncated: int = 0
    n_packed_rows: int = 0
    n_tokens: int = 0  # non-padding tokens
    n_label_tokens: int = 0
    seq_len: int = 0
    sources: list[dict] = field(default_factory=list)  # per source: samples, used in the mix, proportion

    @property
    def packing_efficiency(self) -> float:
        return self.n_tokens / max(1, self.n_packed_rows * self.seq_len)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["packing_efficiency"] = round(self.packing_efficiency, 4)
        return d


@dataclass
class Source:
    """One data source, resolved: its config (formatting, weight) and its files (none for a HF dataset)."""

    config: DataSourceConfig
    files: list[str]


TEXT_COLUMNS = ("sample_id", "source", "instruction", "input", "output", "conversation", "code", "where",
                "bad_reason")


def _code_problem(rec: dict) -> str:
    """Why a `formatting: code` row cannot train ("" when it can): it needs non-empty text in `content`."""
    content = rec.get("content")
    if content is None:
        return "missing field 'content' (formatting: code)"
    if not isinstance(content, str):
        return f"field 'content' is {type(content).__name__}, expected text"
    if not content.strip():
        return "empty 'content'"
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:
        return "field 'content' holds undecodable text (lone surrogates)"
    return ""


def _text_row(out: dict, row, formatting: str, source: int) -> None:
    """Validate one row in its formatting and add it to the batch (bad rows too, with their reason)."""
    rec = row.record or {}
    conversation = code = ""
    if formatting == "alpaca":
        validate(row)
    elif formatting == "code":
        row.bad_reason = row.bad_reason or _code_problem(rec)
        code = rec.get("content") if not row.bad_reason else ""
    elif not row.bad_reason:
        try:
            conversation = conv.to_json(conv.parse(rec, formatting))
        except conv.BadConversation as e:
            row.bad_reason = str(e)
    ok = not row.bad_reason
    instruction_row = ok and formatting == "alpaca"
    out["sample_id"].append(sample_id_of(row, conversation or code) if ok else "")
    out["source"].append(source)
    out["instruction"].append(rec.get("instruction") if instruction_row else "")
    out["input"].append((rec.get("input") or "") if instruction_row else "")
    out["output"].append(rec.get("output") if instruction_row else "")
    out["conversation"].append(conversation)
    out["code"].append(code)
    out["where"].append(where(row))
    out["bad_reason"].append(row.bad_reason)


def read_shard_batch(batch: dict, fmt: str, formatting: str = "alpaca", source: int = 0) -> dict:
    """Ray Data map_batches fn: one batch of file paths -> validated text rows with their location."""
    out: dict[str, list] = {k: [] for k in TEXT_COLUMNS}
    for path in batch["path"]:
        rows = [_text_file_row(str(path))] if formatting == "code" and _is_text_file(str(path), fmt) else \
            iter_rows(str(path), fmt)
        for row in rows:
            _text_row(out, row, formatting, source)
    return out


def _is_text_file(path: str, fmt: str) -> bool:
    """A code source's plain file (a .py, .rs, ...), not a JSONL/JSON/Parquet shard of `content` rows."""
    try:
        _detect_format(path, fmt)
        return False
    except ValueError:
        return True


def _text_file_row(path: str) -> Row:
    """A whole text file as one code sample."""
    try:
        return Row(path, 0, {"content": _open_bytes(path).decode("utf-8")})
    except UnicodeDecodeError as e:
        return Row(path, 0, None, f"undecodable text (not UTF-8): {e.reason} at byte {e.start}")


def read_record_batch(batch: dict, origin: str, formatting: str, source: int) -> dict:
    """Ray Data map_batches fn: rows of a Hugging Face dataset -> validated text rows (``origin:row N``)."""
    out: dict[str, list] = {k: [] for k in TEXT_COLUMNS}
    columns = [c for c in batch if c != ROW_COLUMN]
    for i, index in enumerate(batch[ROW_COLUMN]):
        record = {c: _plain(batch[c][i]) for c in columns}
        _text_row(out, Row(origin, int(index), record), formatting, source)
    return out


ROW_COLUMN = "_raywiz_row"


def _plain(value):
    """numpy values from a Ray Data batch as plain Python (lists of dicts for conversations)."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def load_hf_dataset(name: str, split: str):
    """A Hugging Face dataset: a directory written by ``save_to_disk`` (offline), else a hub name."""
    import os

    try:
        import datasets
    except ImportError:
        raise ImportError("train.data.sources[].hf_dataset needs the `datasets` package: "
                          "pip install 'raywiz[evolve-hub]'") from None
    if os.path.isdir(os.path.expanduser(name)):
        ds = datasets.load_from_disk(os.path.expanduser(name))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{name}: no split {split!r} (it has {', '.join(ds)})")
            ds = ds[split]
        return ds
    return datasets.load_dataset(name, split=split)


@functools.lru_cache(maxsize=4)
def _tokenizer(model_name: str, tokenizer: str | None, trust_remote_code: bool, template: str = ""):
    """One tokenizer per Ray worker process: Ray reuses the process for the tasks of a map."""
    from raywiz.modeling import load_tokenizer

    return with_chat_template(load_tokenizer(model_name, tokenizer, trust_remote_code), template)


def training_tokenizer(model_cfg, data_cfg):
    """The tokenizer training uses and saves in hf/: the model's, with a named chat template installed."""
    from raywiz.modeling import load_tokenizer

    tok = load_tokenizer(model_cfg.name_or_path, model_cfg.tokenizer, model_cfg.trust_remote_code)
    return with_chat_template(tok, data_cfg.template.name)


def tokenize_batch(batch: dict, model_name: str, tokenizer: str | None, template: str, custom: str | None,
                   max_length: int, overlong: str, trust_remote_code: bool = False, seed: int = 0,
                   fim_rate: float = 0.0, fim_spm_rate: float = 0.0, fim_tokens: dict | None = None) -> dict:
    """Ray Data map_batches fn: template, tokenize and fit each row (bad rows pass through, marked).

    Instruction rows use the template (prompt masked); conversations mask all but assistant turns;
    code rows are learned whole, FIM-transformed at `fim_rate` (raywiz.data.fim, keyed by seed and sample id).

    A task function rather than an actor class: Ray Data's actor pools keep their constructor
    arguments in the object store, which Ray's core worker reports on the console for every run.
    """
    tok = _tokenizer(model_name, tokenizer, trust_remote_code, template)
    tokens = fim.FimTokens.from_dict(fim_tokens) if fim_tokens else None
    n = len(batch["sample_id"])
    ids_col, labels_col, status = [], [], []
    bad_reason = list(batch["bad_reason"])
    for i in range(n):
        if bad_reason[i]:
            ids_col.append([]), labels_col.append([]), status.append("bad")
            continue
        try:
            if batch["code"][i]:
                sample = fim.tokenize_code(tok, str(batch["code"][i]), str(batch["sample_id"][i]), seed, fim_rate,
                                           fim_spm_rate, tokens)
            elif batch["conversation"][i]:
                sample = conv.tokenize_conversation(tok, conv.from_json(str(batch["conversation"][i])), template,
                                                    custom)
            else:
                sample = tokenize_sample(tok, str(batch["instruction"][i]), str(batch["output"][i]),
                                         str(batch["input"][i]) or None, template, custom)
        except conv.BadConversation as e:
            bad_reason[i] = str(e)
            ids_col.append([]), labels_col.append([]), status.append("bad")
            continue
        fitted = fit_to_length(sample, max_length, overlong)
        if fitted is None:
            ids_col.append([]), labels_col.append([]), status.append("overlong_dropped")
            continue
        truncated = len(fitted.input_ids) < len(sample.input_ids)
        ids_col.append(fitted.input_ids), labels_col.append(fitted.labels)
        status.append("truncated" if truncated else "ok")
    return {
        "sample_id": list(batch["sample_id"]),
        "source": list(batch["source"]),
        "input_ids": ids_col,
        "labels": labels_col,
        "status": status,
        "where": list(batch["where"]),
        "bad_reason": bad_reason,
    }


def pack_batch(batch: dict, seq_len: int, pad_id: int, do_pack: bool) -> dict:
    """Ray Data map_batches fn: one window of tokenized samples -> packed rows."""
    samples = [(str(s), list(i), list(lab)) for s, i, lab in zip(batch["sample_id"], batch["input_ids"], batch["labels"])]
    rows = (packing.pack if do_pack else packing.one_per_row)(samples, seq_len, pad_id)
    return {
        "input_ids": np.array([r["input_ids"] for r in rows], dtype=np.int32).reshape(len(rows), seq_len),
        "labels": np.array([r["labels"] for r in rows], dtype=np.int32).reshape(len(rows), seq_len),
        "position_ids": np.array([r["position_ids"] for r in rows], dtype=np.int32).reshape(len(rows), seq_len),
        "n_tokens": np.array([r["n_tokens"] for r in rows], dtype=np.int32),
        "n_label_tokens": np.array([r["n_label_tokens"] for r in rows], dtype=np.int32),
        "sum_sq_len": np.array([r["sum_sq_len"] for r in rows], dtype=np.int64),
        "sample_ids": [",".join(r["sample_ids"]) for r in rows],
    }


def read_sources(sources: list[Source], data_cfg, num_cpus: int):
    """Every source's rows, validated in its formatting, as one dataset (column `source`: its index)."""
    import ray.data

    parts = []
    for index, source in enumerate(sources):
        cfg = source.config
        if cfg.hf_dataset:
            ds = load_hf_dataset(cfg.hf_dataset, cfg.split)
            ds = ds.add_column(ROW_COLUMN, list(range(len(ds))))
            part = ray.data.from_huggingface(ds).map_batches(
                read_record_batch, fn_kwargs={"origin": cfg.name, "formatting": cfg.formatting, "source": index},
                batch_size=1024)
        else:
            part = ray.data.from_items([{"path": f} for f in source.files], override_num_blocks=len(source.files))
            part = part.map_batches(read_shard_batch, batch_size=1, fn_kwargs={
                "fmt": data_cfg.format, "formatting": cfg.formatting, "source": index})
        parts.append(part)
    text = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    n_files = sum(max(1, len(s.files)) for s in sources)
    # Spread one big shard over the CPUs before tokenizing (deterministic split, no shuffle).
    return text.repartition(max(n_files, 2 * num_cpus)).materialize()


def mix_sources(good, sources: list[Source], seed: int, report: "DataReport"):
    """Apply the sources' weights (raywiz.data.mix); report what each gave. One source: as it is."""
    ids = good.select_columns(["source", "sample_id"]).to_pandas()
    by_source = [ids["sample_id"][ids["source"] == i].astype(str).tolist() for i in range(len(sources))]
    weights = [s.config.weight for s in sources]
    copies = mix.choose(by_source, weights, seed) if len(sources) > 1 else None
    used = [sum(n for (src, _), n in copies.items() if src == i) if copies else len(by_source[i])
            for i in range(len(sources))]
    total = max(1, sum(used))
    report.sources = [{"name": s.config.name, "formatting": s.config.formatting, "weight": s.config.weight,
                       "samples": len(by_source[i]), "used": used[i], "proportion": round(used[i] / total, 4)}
                      for i, s in enumerate(sources)]
    if copies is None:
        return good
    return good.map_batches(mix.expand, fn_kwargs={"copies": copies}, batch_size=1024)


def fim_arguments(sources: list[Source], data_cfg, model_cfg) -> dict:
    """tokenize_batch's FIM arguments; the model's FIM tokens, checked here on the driver before any work
    (FimUnavailable names train.data.fim) when a code source will be FIM-transformed."""
    cfg = data_cfg.fim
    if cfg is None or cfg.rate == 0 or not any(s.config.formatting == "code" for s in sources):
        return {}
    tokenizer = _tokenizer(model_cfg.name_or_path, model_cfg.tokenizer, model_cfg.trust_remote_code)
    tokens = fim.require_tokens(tokenizer)
    return {"fim_rate": cfg.rate, "fim_spm_rate": cfg.spm_rate, "fim_tokens": tokens.to_dict()}


def prepare_packed_dataset(sources: list[Source] | list[str], data_cfg, model_cfg, seed: int, num_cpus: int):
    """Build the materialized packed dataset and its report. Raises BadRowError with on_bad_row=error.

    ``sources``: resolved sources, or plain shard files (one alpaca source).
    """
    import ray.data

    from raywiz.log import quiet_ray_data

    quiet_ray_data()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # reproducible order => exact resume
    ctx.enable_progress_bars = False

    if sources and isinstance(sources[0], str):
        sources = [Source(DataSourceConfig(path=sources[0]), list(sources))]
    files = [f for s in sources for f in s.files] or [s.config.name for s in sources]
    fim_kwargs = fim_arguments(sources, data_cfg, model_cfg)
    text = read_sources(sources, data_cfg, num_cpus)

    tokenizer_name = model_cfg.tokenizer
    tokenized = text.map_batches(
        tokenize_batch,
        fn_kwargs=dict(
            model_name=model_cfg.name_or_path, tokenizer=tokenizer_name, template=data_cfg.template.name,
            custom=data_cfg.template.prompt, max_length=data_cfg.max_length, overlong=data_cfg.overlong,
            trust_remote_code=model_cfg.trust_remote_code, seed=seed, **fim_kwargs,
        ),
        batch_size=data_cfg.tokenize_batch_size,
        compute=ray.data.TaskPoolStrategy(size=max(1, num_cpus)),
    ).materialize()

    report = DataReport(files=files, seq_len=data_cfg.max_length)
    status = tokenized.select_columns(["status"]).to_pandas()["status"]
    report.n_rows = len(status)
    report.n_bad = int((status == "bad").sum())
    report.n_overlong_dropped = int((status == "overlong_dropped").sum())
    report.n_truncated = int((status == "truncated").sum())
    if report.n_bad:
        bad = tokenized.filter(lambda r: r["status"] == "bad").select_columns(["where", "bad_reason"])
        report.bad_rows = [{"where": r["where"], "reason": r["bad_reason"]} for r in bad.take(MAX_BAD_ROWS_LISTED)]
        if data_cfg.on_bad_row == "error":
            first = report.bad_rows[0]
            raise BadRowError(f"{first['where']}: {first['reason']} ({report.n_bad} bad rows in all; "
                              "set train.data.on_bad_row: report to skip them)")
        for r in report.bad_rows[:10]:
            log.warning("bad row skipped: %s: %s", r["where"], r["reason"])

    good = tokenized.filter(lambda r: r["status"] in ("ok", "truncated")).select_columns(
        ["sample_id", "source", "input_ids", "labels"])
    report.n_samples = report.n_rows - report.n_bad - report.n_overlong_dropped
    if report.n_samples == 0:
        raise ValueError(f"no trainable samples in {len(files)} file(s): {report.n_bad} bad, "
                         f"{report.n_overlong_dropped} longer than max_length={data_cfg.max_length}")
    good = mix_sources(good, sources, seed, report).select_columns(["sample_id", "input_ids", "labels"])
    if data_cfg.shuffle:  # mix samples before packing, so windows are not file-ordered
        good = good.random_shuffle(seed=seed)
    from raywiz.modeling import load_tokenizer

    pad_id = load_tokenizer(model_cfg.name_or_path, tokenizer_name, model_cfg.trust_remote_code).pad_token_id
    packed = good.map_batches(
        pack_batch, fn_kwargs={"seq_len": data_cfg.max_length, "pad_id": pad_id, "do_pack": data_cfg.pack},
        batch_size=data_cfg.pack_window,
    )
    if data_cfg.shuffle:  # and mix the rows, so each worker's part spans the whole dataset
        packed = packed.random_shuffle(seed=seed + 1)
    packed = packed.materialize()
    sums = packed.select_columns(["n_tokens", "n_label_tokens"]).to_pandas()
    report.n_packed_rows = len(sums)
    report.n_tokens = int(sums["n_tokens"].sum())
    report.n_label_tokens = int(sums["n_label_tokens"].sum())
    return packed, report


def epoch_shuffle_args(data_cfg, seed: int, epoch: int) -> dict:
    """iter_torch_batches arguments that reshuffle a worker's rows each epoch, reproducibly."""
    if not data_cfg.shuffle:
        return {}
    return {"local_shuffle_buffer_size": data_cfg.shuffle_buffer_rows, "local_shuffle_seed": seed * 1000 + epoch}
