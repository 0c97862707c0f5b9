"""Pure pieces of the OpenAI path: what the record hashes, usage, token estimates, the error shape."""

import pytest

from apps.api.errors import openai_error_body
from apps.inference.adapters.openai import openai_output_digest, usage_tokens
from apps.inference.tokens import prompt_texts, tokens_estimate


def test_a_streamed_and_a_whole_answer_hash_the_same_texts():
    whole = {"id": "a", "created": 1, "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}]}
    assembled = {"choices": [{"message": {"content": "Hi"}}]}
    assert openai_output_digest("chat", whole) == openai_output_digest("chat", assembled) == ["Hi"]
    assert openai_output_digest("completions", {"choices": [{"text": "x"}, {"text": "y"}]}) == ["x", "y"]
    assert openai_output_digest("embeddings", {"data": [{"embedding": [0.1, 0.2]}]}) == [[0.1, 0.2]]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}, (3, 4)),
        ({"usage": {"prompt_tokens": 5, "total_tokens": 5}}, (5, 0)),  # embeddings report no completion
        ({"usage": None}, (None, None)),
        ({}, (None, None)),
        ({"usage": {"prompt_tokens": -1}}, (None, None)),
        ("not a dict", (None, None)),
    ],
)
def test_usage_is_read_only_when_it_makes_sense(body, expected):
    assert usage_tokens(body) == expected


def test_prompt_texts_by_operation():
    chat = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": [{"type": "text", "text": "Hello"}]}]}  # fmt: skip
    assert prompt_texts("chat", chat) == ["Be brief.", "Hello"]
    assert prompt_texts("completions", {"prompt": ["a", "b"]}) == ["a", "b"]
    assert prompt_texts("embeddings", {"input": "text"}) == ["text"]
    assert prompt_texts("embeddings", {"input": [[1, 2, 3]]}) == []


def test_token_estimates_grow_with_the_text():
    assert tokens_estimate([]) == 0
    assert tokens_estimate(["", ""]) == 0
    short, longer = tokens_estimate(["hello"]), tokens_estimate(["hello there, how are you today?"])
    assert 0 < short < longer


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "invalid_request", "invalid_request_error"),
        (401, "invalid_api_key", "authentication_error"),
        (403, "missing_scope", "permission_error"),
        (404, "model_not_found", "invalid_request_error"),
        (429, "tokens_per_minute", "rate_limit_error"),
        (429, "budget_exceeded", "insufficient_quota"),
        (503, "model_unavailable", "server_error"),
    ],
)
def test_the_openai_error_shape(status, code, kind):
    assert openai_error_body(status, code, "msg", "messages") == {
        "error": {"message": "msg", "type": kind, "param": "messages", "code": code}
    }


def test_tokens_the_server_did_not_report_are_estimated_and_marked():
    from apps.inference.worker import usage_fields

    envelope = {"operation": "chat", "body": {"messages": [{"role": "user", "content": "how many tokens is this"}]}}
    answer = {"choices": [{"message": {"content": "a fair few, I would say"}}]}

    reported = usage_fields(envelope, 7, 5, answer)
    estimated = usage_fields(envelope, None, None, answer)

    assert reported == {"prompt_tokens": 7, "completion_tokens": 5, "tokens_estimated": False}
    assert estimated["tokens_estimated"] is True
    assert estimated["prompt_tokens"] == tokens_estimate(["how many tokens is this"]) > 0
    assert estimated["completion_tokens"] == tokens_estimate(["a fair few, I would say"]) > 0
    assert usage_fields({"operation": "predict", "body": {}}, None, None, [1]) == {
        "prompt_tokens": None,
        "completion_tokens": None,
        "tokens_estimated": False,
    }
