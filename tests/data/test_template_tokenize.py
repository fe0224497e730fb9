from raywiz.data.template import WIZARDCODER_PROMPT, format_prompt
from raywiz.data.tokenize import IGNORE_INDEX, fit_to_length, tokenize_sample
from raywiz.modeling import load_tokenizer


def test_wizardcoder_prompt_is_exact():
    assert format_prompt("Add two numbers.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nAdd two numbers.\n\n### Response:"
    )
    # WizardCoder folds a Code Alpaca input into the instruction; the alpaca template gets its own section.
    assert "Add.\n[1, 2]" in format_prompt("Add.", "[1, 2]")
    assert "### Input:\n[1, 2]" in format_prompt("Add.", "[1, 2]", template="alpaca")
    assert format_prompt("x", template="custom", custom="Q: {instruction}\nA:") == "Q: x\nA:"


def test_prompt_is_masked_and_response_ends_with_eos():
    tok = load_tokenizer("tiny-gpt-bigcode")
    s = tokenize_sample(tok, "Write hello.", "print('hello')")
    prompt_len = len(tok(WIZARDCODER_PROMPT.format(instruction="Write hello."), add_special_tokens=False)["input_ids"])
    assert s.labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert s.labels[prompt_len:] == s.input_ids[prompt_len:]
    assert s.input_ids[-1] == tok.eos_token_id
    assert tok.decode(s.input_ids[prompt_len:-1]) == "print('hello')"


def test_overlong_drop_and_truncate():
    tok = load_tokenizer("tiny-gpt-bigcode")
    s = tokenize_sample(tok, "Write a long thing.", "x = 1\n" * 200)
    assert fit_to_length(s, 64, "drop") is None
    t = fit_to_length(s, 64, "truncate")
    assert len(t.input_ids) == 64 and any(lab != IGNORE_INDEX for lab in t.labels)
    # a prompt that alone fills the row leaves nothing to learn: dropped even when truncating
    long_prompt = tokenize_sample(tok, "word " * 200, "ok")
    assert fit_to_length(long_prompt, 64, "truncate") is None
