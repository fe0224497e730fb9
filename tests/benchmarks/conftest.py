"""The benchmarks library's tests share the eval tests' data and cache set-up."""

from tests.eval.conftest import eval_data_env, have_shared_data  # noqa: F401 - pytest finds fixtures by name
