"""ClusterScorer's streaming API: samples submitted one by one come back as Futures of their verdicts,
and a sandbox worker lost mid-stream costs no verdict (a real local Ray cluster)."""

from concurrent.futures import as_completed

from raywiz.benchmarks import Task
from raywiz.benchmarks.cluster_scoring import ClusterScorer
from raywiz.benchmarks.score import ScoreSettings

TASK = Task("mbpp", "add/0", "Write add(a, b).", "", entry_point="add", test_list=["assert add(1, 2) == 3"])
RIGHT, WRONG = "def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a - b\n"


def test_submitted_samples_stream_back_and_survive_a_lost_worker(ray_local):
    with ClusterScorer(ScoreSettings(workers=1), workers=2, in_flight_per_worker=1) as scorer:
        first = scorer.actors[0]
        futures = [scorer.submit("mbpp", TASK, solution=RIGHT if i % 2 else WRONG) for i in range(6)]
        ray_local.kill(first)  # it holds the first sample by now, or gets one soon: that sample runs again
        assert len(list(as_completed(futures, timeout=300))) == 6
        assert [f.result().passed for f in futures] == [False, True] * 3
        assert scorer.stats.workers_lost == 1 and scorer.stats.reruns >= 1
        # score() still works beside the stream, on the worker that is left
        (verdict,) = scorer.score("mbpp", [TASK], [{"task_id": "add/0", "solution": RIGHT}])
        assert verdict.passed and scorer.actors and first not in scorer.actors
