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

from raywiz.data import pack as packing
from raywiz.data.shards import BadRowError, iter_rows, sample_id_of, validate, where
from raywiz.data.tokenize import fit_to_length, tokenize_sample
from raywiz.log import get_logger

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

    @property
    def packing_efficiency(self) -> float:
        return self.n_tokens / max(1, self.n_packed_rows * self.seq_len)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["packing_efficiency"] = round(self.packing_efficiency, 4)
        return d


def read_shard_batch(batch: dict, fmt: str) -> dict:
    """Ray Data map_batches fn: one batch of file paths -> validated text rows with their location."""
    out: dict[str, list] = {k: [] for k in ("sample_id", "instruction", "input", "output", "where", "bad_reason")}
    for path in batch["path"]:
        for row in iter_rows(str(path), fmt):
            validate(row)
            rec = row.record or {}
            ok = not row.bad_reason
            out["sample_id"].append(sample_id_of(row) if ok else "")
            out["instruction"].append(rec.get("instruction") if ok else "")
            out["input"].append((rec.get("input") or "") if ok else "")
            out["output"].append(rec.get("output") if ok else "")
            out["where"].append(where(row))
            out["bad_reason"].append(row.bad_reason)
    return out


@functools.lru_cache(maxsize=4)
def _tokenizer(model_name: str, tokenizer: str | None, trust_remote_code: bool):
    """One tokenizer per Ray worker process: Ray reuses the process for the tasks of a map."""
    from raywiz.modeling import load_tokenizer

    return load_tokenizer(model_name, tokenizer, trust_remote_code)


def tokenize_batch(batch: dict, model_name: str, tokenizer: str | None, template: str, custom: str | None,
                   max_length: int, overlong: str, trust_remote_code: bool = False) -> dict:
    """Ray Data map_batches fn: template, tokenize and fit each row (bad rows pass through, marked).

    A task function rather than an actor class: Ray Data's actor pools keep their constructor
    arguments in the object store, which Ray's core worker reports on the console for every run.
    """
    tok = _tokenizer(model_name, tokenizer, trust_remote_code)
    n = len(batch["sample_id"])
    ids_col, labels_col, status = [], [], []
    for i in range(n):
        if batch["bad_reason"][i]:
            ids_col.append([]), labels_col.append([]), status.append("bad")
            continue
        sample = tokenize_sample(tok, str(batch["instruction"][i]), str(batch["output"][i]),
                                 str(batch["input"][i]) or None, template, custom)
        fitted = fit_to_length(sample, max_length, overlong)
        if fitted is None:
            ids_col.append([]), labels_col.append([]), status.append("overlong_dropped")
            continue
        truncated = len(fitted.input_ids) < len(sample.input_ids)
        ids_col.append(fitted.input_ids), labels_col.append(fitted.labels)
        status.append("truncated" if truncated else "ok")
    return {
        "sample_id": list(batch["sample_id"]),
        "input_ids": ids_col,
        "labels": labels_col,
        "status": status,
        "where": list(batch["where"]),
        "bad_reason": list(batch["bad_reason"]),
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


def prepare_packed_dataset(files: list[str], data_cfg, model_cfg, seed: int, num_cpus: int):
    """Build the materialized packed dataset and its report. Raises BadRowError with on_bad_row=error."""
    import ray.data

    from raywiz.log import quiet_ray_data

    quiet_ray_data()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # reproducible order => exact resume
    ctx.enable_progress_bars = False

    text = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
    text = text.map_batches(read_shard_batch, fn_kwargs={"fmt": data_cfg.format}, batch_size=1)
    # Spread one big shard over the CPUs before tokenizing (deterministic split, no shuffle).
    text = text.repartition(max(len(files), 2 * num_cpus)).materialize()

    tokenizer_name = model_cfg.tokenizer
    tokenized = text.map_batches(
        tokenize_batch,
        fn_kwargs=dict(
            model_name=model_cfg.name_or_path, tokenizer=tokenizer_name, template=data_cfg.template.name,
            custom=data_cfg.template.prompt, max_length=data_cfg.max_length, overlong=data_cfg.overlong,
            trust_remote_code=model_cfg.trust_remote_code,
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
        ["sample_id", "input_ids", "labels"])
    report.n_samples = report.n_rows - report.n_bad - report.n_overlong_dropped
    if report.n_samples == 0:
        raise ValueError(f"no trainable samples in {len(files)} file(s): {report.n_bad} bad, "
                         f"{report.n_overlong_dropped} longer than max_length={data_cfg.max_length}")
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
