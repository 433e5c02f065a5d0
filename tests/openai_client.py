"""Drives `llmcad serve` with the official `openai` package (tests/server.rs starts the server
and runs this with its base URL). Exits non-zero, with the reason, when anything is off."""

import sys

import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="unused", timeout=120, max_retries=0)
model = client.models.list().data[0].id
messages = [{"role": "user", "content": "ab ba"}]
extra = {"ignore_eos": True}

whole = client.chat.completions.create(
    model=model, messages=messages, max_tokens=16, temperature=0, extra_body=extra
)
answer = whole.choices[0].message.content
assert whole.choices[0].finish_reason == "length", whole
assert whole.usage.completion_tokens == 16, whole.usage
assert whole.usage.prompt_tokens > 0, whole.usage

chunks = list(
    client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra,
    )
)
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed == answer, (streamed, answer)
assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
assert chunks[-1].usage.completion_tokens == 16, chunks[-1]

completion = client.completions.create(
    model=model, prompt="ab ba", max_tokens=8, temperature=0, extra_body=extra
)
assert completion.choices[0].finish_reason == "length", completion
streamed = "".join(
    c.choices[0].text
    for c in client.completions.create(
        model=model, prompt="ab ba", max_tokens=8, temperature=0, stream=True, extra_body=extra
    )
)
assert streamed == completion.choices[0].text, (streamed, completion)

try:
    client.chat.completions.create(model=model, messages=messages, n=2)
    sys.exit("n=2 was accepted")
except openai.BadRequestError as e:
    assert "n = 1" in str(e), e
try:
    client.chat.completions.create(model=model, messages=[])
    sys.exit("empty messages were accepted")
except openai.BadRequestError:
    pass
print("ok")
