"""The OpenAI-compatible API driven by the official `openai` SDK (sync and async) through the running portal.

gunicorn (uvicorn workers), a real Celery worker, and the demo OpenAI-compatible server (real all-MiniLM-L6-v2
embeddings, a test chat model) as the upstream; committed data in a tenant of the module's own.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path

import openai
import pytest
import requests
from django.db import connection
from django_tenants.utils import tenant_context

from apps.accounts.models import User
from apps.apikeys.services import apikey_create
from apps.compliance.models import InferenceRecord
from apps.compliance.records import chain_verify
from apps.inference.hashing import sha256_hex
from apps.registry import services as registry
from apps.serving import services as serving
from apps.tenants.services import tenant_signup
from tests.helpers import PASSWORD, free_port, start_portal_server
from tests.inference.conftest import pool_worker
from tests.registry.test_registry_api import zipped

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

CHAT, EMBED = "demo-chat", "minilm"


@pytest.fixture(scope="module")
def openai_server():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "apps.serving.openai_demo_server", "--host", "127.0.0.1", "--port", str(port),
         "--chat-model", CHAT, "--embed-model", EMBED, "--delay-ms", "1"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(0.3)
    else:
        raise RuntimeError("the OpenAI demo server did not start")
    yield url
    process.terminate()
    process.wait(30)


class Live:
    def __init__(self, **values):
        self.__dict__.update(values)

    def client(self, secret: str | None = None, **options) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.base}/v1",
            api_key=secret or self.secret,
            default_headers={"Host": self.host_header},
            max_retries=0,
            **options,
        )

    def async_client(self, secret: str | None = None) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.base}/v1", api_key=secret or self.secret, default_headers={"Host": self.host_header},
            max_retries=0,
        )  # fmt: skip

    def records(self, **filters) -> list[InferenceRecord]:
        with tenant_context(self.tenant):
            return list(InferenceRecord.objects.filter(**filters).order_by("sequence"))

    def key(self, **fields) -> str:
        with tenant_context(self.tenant):
            _, secret = apikey_create(
                actor=self.owner, name=f"k-{uuid.uuid4().hex[:6]}", scopes=["inference"], **fields
            )
        connection.set_schema_to_public()
        return secret


@pytest.fixture(scope="module")
def live(django_db_setup, django_db_blocker, mlflow_store, iris_model_dir, openai_server, tmp_path_factory):
    pool = f"o{uuid.uuid4().hex[:8]}"
    slug = f"oai{uuid.uuid4().hex[:6]}"
    scratch = tmp_path_factory.mktemp("oai")
    with start_portal_server(workers=2) as base, django_db_blocker.unblock():
        tenant = tenant_signup(
            name="OAI", slug=slug, owner_email=f"owner@{slug}.example", owner_password=PASSWORD, plan="enterprise"
        ).tenant
        with tenant_context(tenant):
            owner = User.objects.get(email=f"owner@{slug}.example")
            server = serving.server_create(
                actor=owner, name="llm", protocol="openai", gpu_pool=pool, replica_urls=[openai_server],
                request_timeout_seconds=5,
            )  # fmt: skip
            for name in (CHAT, EMBED):
                model = registry.model_create(actor=owner, name=name)
                archive = scratch / f"{name}.zip"
                archive.write_bytes(zipped(iris_model_dir).getvalue())
                version = registry.version_register_from_upload(actor=owner, model=model, archive=archive)
                registry.model_promote(actor=owner, model=model, version=version)
                serving.deployment_create(
                    actor=owner, model=model, server=server, alias="champion", price_per_1k_tokens=Decimal("0.5"),
                    price_per_request=Decimal("0.001"),
                )  # fmt: skip
            _, secret = apikey_create(actor=owner, name="sdk", scopes=["inference"])
        connection.set_schema_to_public()
        worker = pool_worker(pool, concurrency=16, pool_type="threads")
        port = base.rsplit(":", 1)[1]
        state = Live(
            base=f"http://127.0.0.1:{port}",
            host_header=f"{slug}.localhost:{port}",
            tenant=tenant,
            owner=owner,
            secret=secret,
            server=server,
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    state.client().embeddings.create(model=EMBED, input="warm up")
                    break
                except openai.APIError:
                    time.sleep(0.5)
            yield state
        finally:
            worker.terminate()
            worker.wait(30)
            connection.set_schema_to_public()


def test_models_lists_the_tenants_openai_deployments(live, as_db):
    names = sorted(model.id for model in live.client().models.list())
    assert names == [CHAT, EMBED]


def test_chat_answers_with_usage_and_a_record_with_tokens_and_cost(live, as_db):
    raw = live.client().chat.completions.with_raw_response.create(
        model=CHAT, messages=[{"role": "user", "content": "hello there portal"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "You said: hello there portal"
    assert completion.model == CHAT
    assert completion.usage.prompt_tokens > 0
    request_id = raw.headers["x-request-id"]
    assert raw.headers["x-model-version"] == "1"
    (record,) = live.records(request_id=request_id)
    assert record.status == "ok"
    assert (record.prompt_tokens, record.completion_tokens) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert record.tokens_estimated is False
    tokens = completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert record.cost >= Decimal("0.001") + Decimal("0.5") * tokens / 1000
    assert record.output_sha256 == sha256_hex(["You said: hello there portal"])


def test_a_stream_arrives_chunk_by_chunk_and_is_recorded_with_real_tokens_and_cost(live, as_db):
    client = live.client()
    stream = client.chat.completions.create(
        model=CHAT,
        messages=[{"role": "user", "content": "one two three four five six"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"delay_ms": 150},
    )
    arrivals, texts, usage = [], [], None
    for chunk in stream:
        arrivals.append(time.monotonic())
        if chunk.choices and chunk.choices[0].delta.content:
            texts.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    text = "".join(texts)
    assert text == "You said: one two three four five six"
    assert len(arrivals) >= 8
    assert arrivals[-1] - arrivals[0] > 0.8  # chunks came as they were made, not all at the end
    assert usage is not None
    assert usage.completion_tokens > 0
    (record,) = live.records(input_sha256__isnull=False, output_sha256=sha256_hex([text]), status="ok")[-1:]
    assert (record.prompt_tokens, record.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert record.cost > 0
    assert record.tokens_estimated is False


def test_a_stream_without_include_usage_gets_no_usage_chunk_but_the_record_has_the_tokens(live, as_db):
    chunks = list(
        live.client().chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "count me"}], stream=True
        )
    )
    assert all(chunk.usage is None for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    record = live.records(output_sha256=sha256_hex([text]))[-1]
    assert record.completion_tokens > 0
    assert record.cost > 0


def test_embeddings_are_real_vectors_with_usage(live, as_db):
    answer = live.client().embeddings.create(model=EMBED, input=["A man is eating food.", "A man eats bread."])
    assert len(answer.data) == 2
    assert len(answer.data[0].embedding) == 384
    assert abs(answer.data[0].embedding[0] - 0.0332) < 1e-3
    assert answer.usage.prompt_tokens > 0


def test_the_async_client_chats_and_streams(live, as_db):
    async def run() -> tuple[str, str]:
        client = live.async_client()
        completion = await client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "hi"}])
        stream = await client.chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "async stream"}], stream=True
        )
        parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        await client.close()
        return completion.choices[0].message.content, "".join(parts)

    plain, streamed = asyncio.run(run())
    assert plain == "You said: hi"
    assert streamed == "You said: async stream"


def test_an_invalid_key_is_an_authentication_error(live, as_db):
    with pytest.raises(openai.AuthenticationError) as caught:
        live.client(secret="aip_000000000000_" + "x" * 43).models.list()
    assert caught.value.status_code == 401


def test_an_unknown_model_is_not_found(live, as_db):
    with pytest.raises(openai.NotFoundError) as caught:
        live.client().chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "model_not_found"


def test_a_bad_body_is_a_bad_request_naming_the_param(live, as_db):
    with pytest.raises(openai.BadRequestError) as caught:
        live.client().chat.completions.create(model=CHAT, messages=[])
    assert caught.value.param == "messages"


def test_a_budget_refusal_is_a_rate_limit_error(live, as_db):
    secret = live.key(tokens_per_minute=60)  # one chat reserves its prompt plus 512 completion tokens
    with pytest.raises(openai.RateLimitError) as caught:
        live.client(secret=secret).chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "tokens_per_minute"
    assert int(caught.value.response.headers["retry-after"]) >= 1
    small = live.client(secret=secret).chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "x"}], max_tokens=5
    )
    assert small.choices[0].message.content


def test_concurrent_requests_never_overshoot_a_spend_budget(live, as_db):
    from concurrent.futures import ThreadPoolExecutor

    from apps.apikeys.budgets import budget_usage

    limit = Decimal("0.02")  # a request reserves 0.001 + 0.5 per 1k of (prompt + max_tokens): about 0.004
    secret = live.key(monthly_spend_limit=limit)

    def one(_: int) -> int | str:
        try:
            live.client(secret=secret).chat.completions.create(
                model=CHAT, messages=[{"role": "user", "content": "x"}], max_tokens=5
            )
        except openai.RateLimitError as error:
            return error.code
        return 200

    with ThreadPoolExecutor(30) as pool:
        statuses = list(pool.map(one, range(30)))
    statuses = [429 if status == "budget_exceeded" else status for status in statuses]
    assert set(statuses) <= {200, 429}

    assert statuses.count(200) >= 1
    assert statuses.count(429) >= 1
    prefix = secret.split("_")[0] + "_" + secret.split("_")[1]
    spent = sum(record.cost for record in live.records(key_prefix=prefix, status="ok"))
    assert len(live.records(key_prefix=prefix, status="ok")) == statuses.count(200)
    assert spent <= limit
    with tenant_context(live.tenant):
        assert budget_usage(schema=live.tenant.schema_name, key_prefix=prefix)["spend_this_month"] <= limit


def test_concurrent_chats_with_one_idempotency_key_call_the_model_once(live, as_db):
    from concurrent.futures import ThreadPoolExecutor

    secret = live.key()
    key = f"idem-{uuid.uuid4().hex}"
    body = {"model": CHAT, "messages": [{"role": "user", "content": "only once please"}], "delay_ms": 100}

    def one(_: int) -> requests.Response:
        return requests.post(
            f"{live.base}/v1/chat/completions",
            json=body,
            headers={"Host": live.host_header, "Authorization": f"Bearer {secret}", "Idempotency-Key": key},
            timeout=60,
        )

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(one, range(10)))

    assert {answer.status_code for answer in answers} == {200}
    assert len({answer.json()["id"] for answer in answers}) == 1  # the first answer, ten times
    assert sum(answer.headers.get("Idempotent-Replayed") == "true" for answer in answers) == 9
    prefix = "_".join(secret.split("_")[:2])
    records = live.records(key_prefix=prefix)
    assert len(records) == 10
    assert len([record for record in records if record.server_replica]) == 1  # one model call
    assert {record.error_code for record in records if not record.server_replica} == {"idempotent_replay"}
    other = requests.post(
        f"{live.base}/v1/chat/completions",
        json={**body, "messages": [{"role": "user", "content": "something else"}]},
        headers={"Host": live.host_header, "Authorization": f"Bearer {secret}", "Idempotency-Key": key},
        timeout=60,
    )
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"


def test_a_client_that_disconnects_stops_the_stream_and_the_record_says_so(live, as_db):
    before = {record.request_id for record in live.records(status="cancelled")}
    response = requests.post(
        f"{live.base}/v1/chat/completions",
        json={
            "model": CHAT,
            "messages": [{"role": "user", "content": " ".join(["word"] * 60)}],
            "stream": True,
            "delay_ms": 100,
        },
        headers={"Host": live.host_header, "Authorization": f"Bearer {live.secret}"},
        stream=True,
        timeout=30,
    )
    lines = response.iter_lines()
    first = next(line for line in lines if line)
    assert first.startswith(b"data: ")
    response.close()  # the client goes away after the first chunk

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        new = [record for record in live.records(status="cancelled") if record.request_id not in before]
        if new:
            break
        time.sleep(0.3)
    assert new, "the worker never recorded the cancelled stream"
    (record,) = new
    assert record.error_code == "client_disconnected"
    assert 0 < record.completion_tokens < 60  # what was produced before the client left, not the whole answer


def test_streams_do_not_hold_a_web_worker(live, as_db):
    """More open streams than the web has workers and threads to pin: all progress at once."""
    results: list[float] = []

    def one() -> None:
        started = time.monotonic()
        chunks = list(
            live.client().chat.completions.create(
                model=CHAT,
                messages=[{"role": "user", "content": "a b c d e"}],
                stream=True,
                extra_body={"delay_ms": 200},
            )
        )
        assert chunks
        results.append(time.monotonic() - started)

    threads = [threading.Thread(target=one) for _ in range(12)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 12
    assert time.monotonic() - started < 6  # 12 streams of ~1.6 s each, side by side on 2 web processes


def test_the_chain_holds_after_all_of_it(live, as_db):
    with tenant_context(live.tenant):
        assert chain_verify().ok
