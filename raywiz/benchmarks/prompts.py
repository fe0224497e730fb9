"""The text a model sees for each task.

`wizardcoder` (default) is WizardCoder's evaluation prompting, exactly as in its scripts
(nlpxucan/WizardLM WizardCoder/src/*_gen.py): the training template
(raywiz.data.template.WIZARDCODER_PROMPT) around
  HumanEval(+): "Create a Python script for this problem:\\n{prompt}"
  MBPP:         "Create a Python script for this problem:\\n\\n{text}\\nTest examples:\\n{asserts}"
  MBPP+:        WizardCoder's mbppplus.json instruction (the description and one assertion)
with every 4-space indent turned into a tab before generation (and back after it), as they did for
StarCoder's tokenizer. For DS-1000, whose prompts WizardCoder did not publish, the instruction is
the problem text.

`completion` is for base models: the raw prompt to continue (HumanEval's signature + docstring,
MBPP in the bigcode-harness docstring style), cut at `stop` sequences.
`custom` formats a template with {prompt}, {instruction}, {entry_point}, {tests}; `chat` wraps the
instruction in the tokenizer's chat template.
"""

from __future__ import annotations

from raywiz.data.template import CHAT_STYLE_TEMPLATES, format_prompt
from raywiz.benchmarks import Task

STYLES = ("wizardcoder", "completion", "custom", "chat")
CREATE_SCRIPT = "Create a Python script for this problem:\n"
# bigcode-evaluation-harness's stop words for HumanEval/MBPP completion, used when `stop` is unset.
COMPLETION_STOP = ["\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```"]


def _mbpp_problem(task: Task) -> str:
    """mbpp_gen.py's problem text; task 493's asserts are too long, so only its signature is shown."""
    text = f"\n{task.prompt}\nTest examples:"
    if task.task_id == "493":
        return text + "\ncalculate_polygons(startx, starty, endx, endy, radius)"
    return text + "".join(f"\n{t}" for t in task.test_list)


def _mbppplus_instruction(task: Task) -> str:
    if task.instruction:
        return task.instruction
    # No mbppplus.json: the same shape, built from the task (its first assertion).
    description = task.prompt.strip().strip("'\"").strip()
    first = next((line for line in task.assertion.splitlines() if line.strip().startswith("assert")), "")
    return f"{description} Your code should satisfy the following assertion:\n```python\n{first.strip()}\n```"


def instruction_for(task: Task) -> str:
    """The instruction for instruction-tuned models (before tabs are applied)."""
    if task.benchmark in ("humaneval", "humaneval+"):
        return CREATE_SCRIPT + task.prompt
    if task.benchmark == "mbpp":
        return CREATE_SCRIPT + _mbpp_problem(task)
    if task.benchmark == "mbpp+":
        return _mbppplus_instruction(task)
    return task.prompt


def completion_prompt(task: Task) -> str:
    """What a base model continues."""
    if task.benchmark == "mbpp":
        return f'"""\n{task.prompt}\n{task.test_list[0] if task.test_list else ""}\n"""\n'
    return task.prompt


def build_prompt(task: Task, style: str = "wizardcoder", template: str | None = None, tokenizer=None,
                 trained: dict | None = None) -> str:
    """`trained` is the checkpoint's ModelInfo (raywiz.artifacts) as a dict: in the `wizardcoder` style the instruction goes into
    the template the model was trained with ("chat": the tokenizer's; "custom": its saved string;
    WizardCoder's otherwise, which is also what "alpaca" gives without an input)."""
    if style == "wizardcoder":
        instruction = instruction_for(task).replace("    ", "\t")
        name, custom = (trained or {}).get("template"), (trained or {}).get("prompt")
        if name in CHAT_STYLE_TEMPLATES and tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return format_prompt(instruction, template="chat", tokenizer=tokenizer)
        if name == "custom" and custom:
            return format_prompt(instruction, template="custom", custom=custom)
        return format_prompt(instruction, template="wizardcoder")
    if style == "completion":
        return completion_prompt(task)
    if style == "custom":
        if not template:
            raise ValueError("prompt style 'custom' needs eval.prompt.template")
        return template.format(prompt=task.prompt, instruction=instruction_for(task),
                               entry_point=task.entry_point or "", tests="\n".join(task.test_list))
    if style == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("prompt style 'chat' needs a tokenizer with a chat_template")
        messages = [{"role": "user", "content": instruction_for(task)}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ValueError(f"unknown prompt style {style!r}; expected one of {STYLES}")


def default_stop(style: str) -> list[str]:
    return list(COMPLETION_STOP) if style == "completion" else []
