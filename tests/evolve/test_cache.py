from raywiz.evolve.cache import RequestCache
from raywiz.inference.chat import ChatRequest, ChatResult, request_key


def test_key_depends_on_model_prompt_and_params():
    base = ChatRequest.of("m", "hi", {"temperature": 0})
    assert base.key == ChatRequest.of("m", "hi", {"temperature": 0}).key
    assert base.key == request_key("m", [{"role": "user", "content": "hi"}], {"temperature": 0})
    others = [ChatRequest.of("m2", "hi", {"temperature": 0}), ChatRequest.of("m", "hi!", {"temperature": 0}),
              ChatRequest.of("m", "hi", {"temperature": 1}), ChatRequest.of("m", "hi", {"temperature": 0}, "sys")]
    assert len({base.key, *(o.key for o in others)}) == 5


def test_parts_survive_a_cut_line_and_skip_failures(tmp_path):
    cache = RequestCache(str(tmp_path))
    w1, w2 = cache.writer("a"), cache.writer("b")
    w1.put(ChatResult("k1", text="one", prompt_tokens=3, completion_tokens=1))
    w2.put(ChatResult("k2", text="two"))
    w2.put(ChatResult("k3", error="gave up"))  # failures are never cached
    w1.close(), w2.close()
    with open(w1.path, "ab") as f:
        f.write(b'{"key": "k4", "text": "cut sho')  # what a SIGKILL mid-write leaves
    answers = cache.load()
    assert set(answers) == {"k1", "k2"}
    assert answers["k1"].text == "one" and answers["k1"].prompt_tokens == 3
