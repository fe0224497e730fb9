"""Fixtures shared by the train tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def one_worker_runs(tmp_path_factory):
    """test_fim_train's and test_chat_template_lora's one-worker jobs, started together on first use (each
    its own local cluster): a job is mostly start-up waits, so the pair takes little more than one.
    {name: the folder holding the job's files and its runs/}."""
    from tests.train import test_chat_template_lora, test_fim_train
    from tests.train.test_train_e2e import _finish, _start, running_jobs

    dirs = {name: tmp_path_factory.mktemp(name) for name in ("fim", "chatml")}
    jobs = {"fim": test_fim_train.write_job(dirs["fim"]), "chatml": test_chat_template_lora.write_job(dirs["chatml"])}
    procs = {name: _start(job, dirs[name] / f"{name}.log") for name, job in jobs.items()}
    with running_jobs(procs):
        for name, proc in procs.items():
            _finish(proc, dirs[name] / f"{name}.log")
    return dirs
