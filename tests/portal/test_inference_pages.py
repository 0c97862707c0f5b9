"""The playground, the request log and the circuit breaker on the servers page: who sees what, what the prefilled
body is, how the log narrows, and that nothing of tenant A ever shows to tenant B."""

import html
import json
import re
import time
import uuid
import warnings
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from django.db import connection
from django.utils import timezone
from django_tenants.utils import tenant_context
from mlflow.models import infer_signature

from apps.compliance.models import InferenceRecord
from apps.compliance.records import record_append
from apps.inference.hashing import sha256_hex
from apps.inference.payloads import payload_parse
from apps.inference.validation import signature_validate
from apps.portal.playground import MAX_EXAMPLE_ELEMENTS, example_body, example_hint, shell_quote
from apps.registry.models import ModelVersion, RegisteredModel
from apps.serving.services import server_create
from config.redis import get_redis
from tests.helpers import host_of, record_fields
from tests.serving.conftest import make_model

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
ROLES = ["alice", "dave", "olivia", "victor"]


def stored(signature) -> dict:
    """The registry's copy of an MLflow signature: each part parsed from its JSON string."""
    return {part: json.loads(text) for part, text in signature.to_dict().items() if text is not None}


def _page(response) -> str:
    return response.content.decode()


def _body_of(page: str) -> dict:
    """The JSON in the playground's text box, as a browser would read it."""
    text = re.search(r'<textarea id="playground-body"[^>]*>(.*?)</textarea>', page, re.S).group(1)
    return json.loads(html.unescape(text))


@pytest.fixture
def name() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def as_user(client_a, cast, in_tenant_a):
    def login_as(user: str):
        client_a.force_login(getattr(cast, user))
        return client_a

    return login_as


def record(**overrides) -> InferenceRecord:
    """One inference record in the current tenant's chain, as the predict path would append it."""
    fields = record_fields(user_id=None, run_id="run-abc", prompt_tokens=None, completion_tokens=None, cost=None)
    fields.update(overrides)
    return record_append(**fields)


def _request_ids(page: str) -> list[str]:
    return re.findall(r'<tr data-request="([^"]+)">', page)


# --- the prefilled body ----------------------------------------------------------------------------------------


def test_tabular_signature_gives_one_row_of_typed_placeholders_that_validates():
    frame = pd.DataFrame(
        {
            "amount": [1.5, 2.5],
            "count": [1, 2],
            "flag": [True, False],
            "country": ["fr", "de"],
            "when": pd.to_datetime(["2024-01-01", "2024-01-02"]),
        }
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        signature = stored(infer_signature(frame, np.array([0, 1]), params={"threshold": 0.5}))

    body = example_body(signature)

    assert body == {
        "dataframe_split": {
            "columns": ["amount", "count", "flag", "country", "when"],
            "data": [[0.0, 0, False, "", "2024-01-01T00:00:00"]],
        },
        "params": {"threshold": 0.5},
    }
    assert isinstance(body["dataframe_split"]["data"][0][0], float)
    signature_validate(payload_parse(body), signature)
    assert example_hint(signature) == ""


def test_the_iris_signature_prefills_its_four_double_columns():
    signature = stored(infer_signature(pd.DataFrame(ROWS, columns=COLUMNS), np.array([0, 2])))

    assert example_body(signature) == {"dataframe_split": {"columns": COLUMNS, "data": [[0.0, 0.0, 0.0, 0.0]]}}


def test_nested_column_types_get_nested_placeholders():
    signature = {
        "inputs": [
            {"name": "tags", "type": "array", "items": {"type": "string"}},
            {"name": "point", "type": "object", "properties": {"x": {"type": "double"}, "y": {"type": "long"}}},
            {"name": "extra", "type": "map", "values": {"type": "string"}, "required": False},
        ]
    }

    body = example_body(signature)

    assert body["dataframe_split"]["data"] == [[[""], {"x": 0.0, "y": 0}, {}]]
    signature_validate(payload_parse(body), signature)


def test_tensor_signature_gives_zeros_of_the_right_shape_and_dtype():
    floats = stored(infer_signature(np.array(ROWS, dtype=np.float64), np.array([0, 2])))
    ints = stored(infer_signature(np.zeros((2, 3, 2), dtype=np.int32)))

    assert example_body(floats) == {"inputs": [[0.0, 0.0, 0.0, 0.0]]}
    assert example_body(ints) == {"inputs": [[[0, 0], [0, 0], [0, 0]]]}
    for signature in (floats, ints):
        signature_validate(payload_parse(example_body(signature)), signature)
        assert example_hint(signature) == ""


def test_named_tensors_give_an_object_of_tensors():
    signature = {
        "inputs": [
            {"type": "tensor", "name": "a", "tensor-spec": {"dtype": "float32", "shape": [-1, 2]}},
            {"type": "tensor", "name": "b", "tensor-spec": {"dtype": "int64", "shape": [-1]}},
        ]
    }

    body = example_body(signature)

    assert body == {"inputs": {"a": [[0.0, 0.0]], "b": [0]}}
    signature_validate(payload_parse(body), signature)


def test_a_tensor_too_large_to_prefill_is_left_empty_with_a_hint():
    signature = {"inputs": [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 224, 224, 3]}}]}
    assert MAX_EXAMPLE_ELEMENTS < 224 * 224 * 3

    assert example_body(signature) == {"inputs": []}
    assert "(-1, 224, 224, 3)" in example_hint(signature)


@pytest.mark.parametrize("signature", [None, {}, {"outputs": [{"type": "long"}]}, {"inputs": "not a list"}])
def test_no_input_signature_gives_an_empty_inputs_body_and_a_hint(signature):
    assert example_body(signature) == {"inputs": []}
    assert "no input signature" in example_hint(signature)


def test_shell_quote_survives_single_quotes():
    assert shell_quote("""{"name": "O'Brien"}""") == """'{"name": "O'\\''Brien"}'"""


# --- the playground page ---------------------------------------------------------------------------------------


def _iris_model(name: str):
    model = make_model(name, versions=(1, 2), aliases={"champion": 2, "challenger": 1})
    iris = stored(infer_signature(pd.DataFrame(ROWS, columns=COLUMNS), np.array([0, 2])))
    ModelVersion.objects.filter(model=model, version=2).update(signature=iris)
    ModelVersion.objects.filter(model=model, version=1).update(signature=None)
    return model, iris


@pytest.mark.parametrize("user", ["alice", "dave"])
def test_owners_and_developers_get_the_send_button_and_the_prefilled_body(as_user, cast, name, user):
    _, iris = _iris_model(name)

    response = as_user(user).get(f"/playground/?model={name}")

    assert response.status_code == 200
    page = _page(response)
    assert _body_of(page) == example_body(iris)
    assert 'id="playground-send"' in page
    assert 'name="csrfmiddlewaretoken"' in page
    url = f"http://{host_of(cast.tenant_a)}/api/v1/models/{name}/predict?alias=champion"
    assert f'data-predict-url="{url}"' in page
    curl = html.unescape(re.search(r'<pre class="code" id="playground-curl">(.*?)</pre>', page, re.S).group(1))
    assert f"curl -sS -X POST '{url}'" in curl
    assert 'Authorization: Bearer $API_KEY"' in curl
    assert "'Content-Type: application/json'" in curl
    assert '"sepal_length"' in curl


@pytest.mark.parametrize("user", ["olivia", "victor"])
def test_viewers_and_officers_see_the_playground_read_only(as_user, name, user):
    _, iris = _iris_model(name)

    response = as_user(user).get(f"/playground/?model={name}")

    assert response.status_code == 200
    page = _page(response)
    assert _body_of(page) == example_body(iris)
    assert "$API_KEY" in page
    assert 'id="playground-send"' not in page
    assert "csrfmiddlewaretoken" not in page.split("</header>", 1)[1]
    assert "may read this page but not call models" in page


def test_the_send_button_and_copy_button_need_the_script(as_user, name):
    _iris_model(name)

    page = _page(as_user("dave").get(f"/playground/?model={name}"))

    assert re.search(r'<button type="button" id="playground-send" data-needs-js hidden>', page)
    assert re.search(r'data-copy-target="#playground-curl" data-needs-js hidden>', page)
    assert "<noscript>" in page


def test_choosing_a_version_prefills_from_that_version(as_user, cast, name):
    _iris_model(name)

    page = _page(as_user("dave").get(f"/playground/?model={name}&version=1"))

    assert _body_of(page) == {"inputs": []}
    assert "no input signature" in page
    assert f"/api/v1/models/{name}/predict?version=1" in page


def test_another_alias_prefills_from_the_version_it_points_to(as_user, name):
    _iris_model(name)

    page = _page(as_user("dave").get(f"/playground/?model={name}&alias=challenger"))

    assert _body_of(page) == {"inputs": []}
    assert "predict?alias=challenger" in page
    assert '<option value="challenger">' in page


def test_an_alias_that_is_not_set_says_so(as_user, name):
    _iris_model(name)

    page = _page(as_user("dave").get(f"/playground/?model={name}&alias=staging"))

    assert f"{name}@staging is not set" in page
    assert _body_of(page) == {"inputs": []}


def test_without_a_choice_the_first_model_and_champion_are_shown(as_user, name):
    make_model(f"a-{name}", versions=(1,), aliases={"champion": 1})
    first = RegisteredModel.objects.order_by("name").first().name

    page = _page(as_user("dave").get("/playground/"))

    assert f"/api/v1/models/{first}/predict?alias=champion" in page
    assert f'<option value="{first}" selected>' in page


@pytest.mark.parametrize("query", ["?model=does-not-exist", "?model=", "?version=abc"])
def test_a_bad_choice_is_a_form_error_not_a_500(as_user, name, query):
    _iris_model(name)

    response = as_user("dave").get(f"/playground/{query}")

    assert response.status_code == 200
    page = _page(response)
    assert 'class="error"' in page
    assert 'id="playground-body"' not in page


def test_the_playground_without_models_points_to_the_models_page(client_b, cast):
    with tenant_context(cast.tenant_b):
        client_b.force_login(cast.charlie)

    page = _page(client_b.get("/playground/"))

    assert "No models yet" in page


def test_the_model_page_links_to_its_playground_and_request_log(as_user, name):
    _iris_model(name)

    page = _page(as_user("victor").get(f"/models/{name}/"))

    assert f'href="/playground/?model={name}"' in page
    assert f'href="/requests/?model={name}"' in page


# --- who sees what -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ROLES)
def test_every_role_sees_the_request_log_and_both_nav_links(as_user, user):
    client = as_user(user)

    nav = _page(client.get("/")).split("</header>")[0]

    assert 'href="/playground/"' in nav
    assert 'href="/requests/"' in nav
    assert client.get("/requests/").status_code == 200
    assert client.get("/playground/").status_code == 200


@pytest.mark.parametrize("path", ["/playground/", "/requests/", "/requests/abcdefgh12/"])
def test_anonymous_visitors_are_sent_to_log_in(client_a, cast, path):
    response = client_a.get(path)

    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


@pytest.mark.parametrize("path", ["/playground/", "/requests/"])
def test_the_pages_are_read_only(as_user, path):
    assert as_user("alice").post(path, {}).status_code == 405


def test_the_developer_and_viewer_roles_hold_the_record_permission(cast, in_tenant_a):
    for user in (cast.alice, cast.dave, cast.olivia, cast.victor):
        assert user.has_perm("compliance.view_inferencerecord"), user.email


# --- the request log ---------------------------------------------------------------------------------------------


def test_the_log_lists_records_newest_first_with_every_column(as_user, cast, name):
    start = timezone.now() - timedelta(minutes=5)
    older = record(model_name=name, received_at=start, user_id=cast.dave.pk, key_prefix="pk_dave")
    newer = record(
        model_name=name,
        received_at=start + timedelta(minutes=1),
        status=InferenceRecord.Status.FAILED,
        error_code="upstream_error",
        output_sha256="",
        latency_ms=30001,
        upstream_ms=None,
        key_prefix="",
        key_id=None,
        user_id=cast.alice.pk,
    )

    page = _page(as_user("victor").get(f"/requests/?model={name}"))

    assert _request_ids(page) == [newer.request_id, older.request_id]
    old_row = page[page.index(f'data-request="{older.request_id}"') :].split("</tr>")[0]
    assert start.strftime("%Y-%m-%d %H:%M:%S") in old_row
    assert f'href="/requests/{older.request_id}/"' in old_row
    assert f"<td>{name}</td>" in old_row
    assert "v2" in old_row
    assert '<span class="tag alias">champion</span>' in old_row
    assert "<code>pk_dave</code>" in old_row
    assert cast.dave.email in old_row
    assert '<span class="status status-ok">ok</span>' in old_row
    assert "12 ms" in old_row
    assert "9 ms" in old_row
    assert "<code>http://127.0.0.1:5001</code>" in old_row
    assert f'title="{"a" * 64}">{"a" * 12}…</code>' in old_row
    assert f'title="{"b" * 64}">{"b" * 12}…</code>' in old_row
    new_row = page[page.index(f'data-request="{newer.request_id}"') :].split("</tr>")[0]
    assert "failed</span> <code>upstream_error</code>" in new_row
    assert cast.alice.email in new_row
    assert "30001 ms" in new_row


def test_each_filter_narrows_the_log(as_user, name):
    base = datetime(2030, 1, 1, 10, 0, tzinfo=UTC)
    other = f"{name}-other"
    a = record(model_name=name, model_version=1, key_prefix="pk_one", received_at=base)
    b = record(model_name=name, model_version=2, key_prefix="pk_two", received_at=base + timedelta(hours=1))
    c = record(
        model_name=name,
        model_version=2,
        key_prefix="pk_one",
        received_at=base + timedelta(hours=2),
        status=InferenceRecord.Status.TIMEOUT,
        error_code="upstream_timeout",
        output_sha256="",
    )
    d = record(model_name=other, model_version=1, key_prefix="pk_one", received_at=base + timedelta(hours=3))
    client = as_user("olivia")

    def ids(query: str) -> set[str]:
        response = client.get(f"/requests/?{query}")
        assert response.status_code == 200
        return set(_request_ids(_page(response)))

    assert ids(f"model={name}") == {a.request_id, b.request_id, c.request_id}
    assert ids(f"model={other}") == {d.request_id}
    assert ids(f"model={name}&version=2") == {b.request_id, c.request_id}
    assert ids(f"model={name}&key_prefix=pk_one") == {a.request_id, c.request_id}
    assert ids(f"model={name}&status=timeout") == {c.request_id}
    assert ids(f"model={name}&received_from=2030-01-01T10:30") == {b.request_id, c.request_id}
    assert ids(f"model={name}&received_to=2030-01-01T12:00") == {a.request_id, b.request_id}
    window = "received_from=2030-01-01T10:30&received_to=2030-01-01T13:30"
    assert ids(f"key_prefix=pk_one&{window}") == {c.request_id, d.request_id}
    assert ids(f"model={name}&status=ok&version=1&key_prefix=pk_one") == {a.request_id}


def test_the_log_is_paginated_by_50_and_the_links_keep_the_filters(as_user, name):
    base = timezone.now() - timedelta(hours=1)
    made = [record(model_name=name, received_at=base + timedelta(seconds=index)) for index in range(53)]
    newest_first = [row.request_id for row in reversed(made)]
    client = as_user("dave")

    first = _page(client.get(f"/requests/?model={name}"))
    second = _page(client.get(f"/requests/?model={name}&page=2"))

    assert _request_ids(first) == newest_first[:50]
    assert _request_ids(second) == newest_first[50:]
    assert "53 requests · page 1 of 2" in first
    assert f'href="?model={name}&amp;page=2"' in first
    assert f'href="?model={name}&amp;page=1"' in second
    for bad in ("999", "abc", "-1"):
        assert client.get(f"/requests/?model={name}&page={bad}").status_code == 200


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("version=abc", "version"),
        ("version=0", "version"),
        ("version=99999999999999999999", "version"),
        ("status=exploded", "status"),
        ("received_from=yesterday", "received_from"),
        ("received_to=2030-13-45T99:99", "received_to"),
        ("received_from=2030-01-02T00:00&received_to=2030-01-01T00:00", "received_to"),
        (f"model={'x' * 200}", "model"),
    ],
)
def test_bad_filter_input_is_a_form_error_not_a_500(as_user, query, field):
    record()

    response = as_user("dave").get(f"/requests/?{query}")

    assert response.status_code == 200
    assert response.context["form"].errors.get(field), response.context["form"].errors
    page = _page(response)
    assert 'class="error"' in page
    assert 'id="requests"' not in page


def test_the_detail_page_shows_the_whole_record_and_its_chain_position(as_user, cast):
    row = record(user_id=cast.dave.pk, prompt_tokens=4, completion_tokens=1, run_id="run-xyz")

    response = as_user("victor").get(f"/requests/{row.request_id}/")

    assert response.status_code == 200
    page = _page(response)
    for value in (
        row.request_id,
        f"Record {row.sequence} of",
        row.prev_hash,
        row.record_hash,
        row.input_sha256,
        row.output_sha256,
        "run-xyz",
        "http://127.0.0.1:5001",
        "192.0.2.10",
        cast.dave.email,
        "pk_test",
        "12 ms",
        "9 ms",
    ):
        assert value in page, value


def test_an_unknown_request_id_is_404(as_user):
    assert as_user("dave").get(f"/requests/{uuid.uuid4().hex}/").status_code == 404


def test_the_log_never_shows_a_payload(as_user, name):
    payload = {"dataframe_split": {"columns": ["card_number"], "data": [["4111-1111-1111-1111"]]}}
    output = {"predictions": ["fraud-suspected-7c1e"]}
    row = record(model_name=name, input_sha256=sha256_hex(payload), output_sha256=sha256_hex(output))
    client = as_user("alice")

    for path in (f"/requests/?model={name}", f"/requests/{row.request_id}/"):
        page = _page(client.get(path))
        assert sha256_hex(payload)[:12] in page
        for secret in ("4111-1111-1111-1111", "card_number", "fraud-suspected-7c1e"):
            assert secret not in page, path
    stored_fields = {field.name for field in InferenceRecord._meta.get_fields()}
    assert not {field for field in stored_fields if "payload" in field or field in ("input", "output", "body")}


def test_the_log_costs_the_same_queries_for_3_or_50_records(as_user, cast, name, django_assert_max_num_queries):
    from django.test.utils import CaptureQueriesContext

    client = as_user("dave")
    users = [cast.alice.pk, cast.dave.pk, None]
    for index in range(3):
        record(model_name=name, user_id=users[index])
    client.get("/")

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert client.get(f"/requests/?model={name}").status_code == 200
        return len(queries)

    few = count()
    for index in range(47):
        record(model_name=name, user_id=users[index % 3])
    assert count() == few
    # Session, user, two permission reads, COUNT, one page of records with their emails (each after a SET search_path).
    with django_assert_max_num_queries(12):
        client.get(f"/requests/?model={name}")


# --- cross-tenant ------------------------------------------------------------------------------------------------


def test_tenant_b_sees_none_of_tenant_as_records_and_gets_404_on_their_detail(client_b, cast, name):
    with tenant_context(cast.tenant_a):
        theirs = record(model_name=name)
    with tenant_context(cast.tenant_b):
        ours = record(model_name=name, key_prefix="pk_bravo")
    with tenant_context(cast.tenant_b):
        client_b.force_login(cast.charlie)

    page = _page(client_b.get("/requests/"))
    filtered = _page(client_b.get(f"/requests/?model={name}"))

    assert theirs.request_id not in page
    assert _request_ids(filtered) == [ours.request_id]
    assert client_b.get(f"/requests/{theirs.request_id}/").status_code == 404
    assert client_b.get(f"/requests/{ours.request_id}/").status_code == 200


def test_tenant_b_cannot_open_tenant_as_model_in_the_playground(client_b, cast, name):
    with tenant_context(cast.tenant_a):
        _iris_model(name)
    with tenant_context(cast.tenant_b):
        client_b.force_login(cast.charlie)

    response = client_b.get(f"/playground/?model={name}")

    assert response.status_code == 200
    assert 'id="playground-body"' not in _page(response)
    assert f"/api/v1/models/{name}/predict" not in _page(response)


# --- circuit state on the servers page ---------------------------------------------------------------------------


@pytest.fixture
def redis_keys():
    """Redis keys a test writes; Redis is not rolled back with the test's transaction, so they are deleted after."""
    keys: list[str] = []
    yield keys
    if keys:
        get_redis().delete(*keys)


def test_servers_page_shows_open_and_closed_circuits(as_user, cast, redis_keys):
    broken, busy = "http://10.9.0.1:8080", "http://10.9.0.2:8080"
    server = server_create(
        actor=cast.alice,
        name=f"cb-{uuid.uuid4().hex[:6]}",
        protocol="mlflow",
        gpu_pool="cpu",
        replica_urls=[broken, busy],
    )
    schema = connection.schema_name
    opened_until = time.time() + 60
    circuit, outstanding = f"cb:{schema}:{server.pk}:{broken}", f"lb:{schema}:{server.pk}:{busy}"
    redis_keys += [circuit, outstanding]
    get_redis().hset(circuit, mapping={"state": "open", "failures": 3, "opened_until": opened_until})
    get_redis().zadd(outstanding, {"req-1": time.time() + 60, "req-2": time.time() + 60})

    response = as_user("victor").get("/servers/")

    assert response.status_code == 200
    page = _page(response)
    row = page[page.index(f'data-server="{server.name}"') :].split("</tr>")[0]
    until = timezone.localtime(datetime.fromtimestamp(opened_until, tz=UTC))
    broken_item = row[row.index(f'data-replica="{broken}"') :].split("</li>")[0]
    busy_item = row[row.index(f'data-replica="{busy}"') :].split("</li>")[0]
    assert f"circuit open until {until:%H:%M:%S}, 3 failures" in broken_item
    assert "circuit-open" in broken_item
    assert "circuit closed, 2 in flight" in busy_item


def test_a_circuit_past_its_open_time_shows_half_open(as_user, cast, redis_keys):
    url = "http://10.9.0.3:8080"
    server = server_create(
        actor=cast.alice, name=f"cb-{uuid.uuid4().hex[:6]}", protocol="mlflow", gpu_pool="cpu", replica_urls=[url]
    )
    key = f"cb:{connection.schema_name}:{server.pk}:{url}"
    redis_keys.append(key)
    get_redis().hset(key, mapping={"state": "open", "failures": 4, "opened_until": time.time() - 1})

    page = _page(as_user("dave").get("/servers/"))

    assert "circuit half-open: the next request is a trial, 4 failures" in page


def test_tenant_b_servers_page_shows_its_own_circuits_only(client_b, cast, redis_keys):
    url = "http://10.9.0.4:8080"
    with tenant_context(cast.tenant_a):
        server_a = server_create(
            actor=cast.alice, name="cb-shared", protocol="mlflow", gpu_pool="cpu", replica_urls=[url]
        )
        key = f"cb:{connection.schema_name}:{server_a.pk}:{url}"
    with tenant_context(cast.tenant_b):
        server_b = server_create(
            actor=cast.charlie, name="cb-shared", protocol="mlflow", gpu_pool="cpu", replica_urls=[url]
        )
    redis_keys.append(key)
    get_redis().hset(key, mapping={"state": "open", "failures": 3, "opened_until": time.time() + 60})
    with tenant_context(cast.tenant_b):
        client_b.force_login(cast.charlie)

    page = _page(client_b.get("/servers/"))

    row = page[page.index(f'data-server="{server_b.name}"') :].split("</tr>")[0]
    assert "circuit closed, 0 in flight" in row
    assert "circuit open" not in row


def test_without_redis_the_servers_page_still_shows_health(as_user, cast, monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    calls = []

    def unreachable(**kwargs):
        calls.append(kwargs)
        raise RedisConnectionError("Redis is down")

    for index in range(2):
        server_create(
            actor=cast.alice, name=f"nr-{index}", protocol="mlflow", gpu_pool="cpu", replica_urls=["http://10.9.0.5"]
        )
    monkeypatch.setattr("apps.portal.models_pages.circuit_states", unreachable)

    response = as_user("dave").get("/servers/")

    assert response.status_code == 200
    assert "circuit state unavailable" in _page(response)
    assert len(calls) == 1
