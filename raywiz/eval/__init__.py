"""The eval stage: HumanEval, HumanEval+, MBPP, MBPP+ and DS-1000 pass@k for any checkpoint.

Read `recipe.py` first (the stage top to bottom); the pieces only this stage needs:
  generation/   generation through raywiz.inference, spread over Ray actors (ray_pool.py)
  report.py     summaries, result files, the table and the pass@1 plot
  cli.py        `raywiz eval run JOB.yaml` and `raywiz eval score --benchmark B SAMPLES.jsonl`
  config.py     the `eval:` section
Tasks, prompts, post-processing, the sandbox and scoring are the benchmarks library
(raywiz.benchmarks), which evolve's decontamination and serve's page use too.
"""
