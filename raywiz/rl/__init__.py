"""The `rl` stage: reinforcement learning from execution rewards (GRPO).

grpo.py holds the algorithm (plain torch), rewards.py the tasks and the rewards the sandbox's trusted
checker computes, config.py the typed ``rl:`` section.
"""
