"""The inference task's message, written by the web process itself: the one Celery would send, on the real broker."""

import base64
import json
import time
import uuid

import pytest
from django.db import connection
from django_tenants.utils import tenant_context

from apps.inference import queueing
from apps.inference.tasks import predict_on_worker
from config.redis import get_broker_redis

pytestmark = pytest.mark.django_db

PER_MESSAGE = {"id", "root_id", "argsrepr"}  # ids are fresh per message; argsrepr differs on purpose
PER_MESSAGE_PROPERTIES = {"correlation_id", "delivery_tag"}


@pytest.fixture
def queue():
    name = f"test.queueing.{uuid.uuid4().hex[:8]}"
    yield name
    get_broker_redis().delete(name)


def _messages(queue: str) -> list[dict]:
    return [json.loads(raw) for raw in reversed(get_broker_redis().lrange(queue, 0, -1))]


def _body(message: dict) -> list:
    return json.loads(base64.b64decode(message["body"]))


def test_pushed_message_is_the_one_celery_sends(cast, queue):
    envelope = {"request_id": "r1", "body": {"inputs": [[1.5, 2]]}, "deadline": time.time() + 30}
    with tenant_context(cast.tenant_a):
        predict_on_worker.apply_async(args=[envelope], queue=queue)
        task_id = queueing.task_send(predict_on_worker, [envelope], queue=queue, argsrepr="[r1]")
    celerys, ours = _messages(queue)

    assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"] == task_id
    assert {k: v for k, v in ours["headers"].items() if k not in PER_MESSAGE} == {
        k: v for k, v in celerys["headers"].items() if k not in PER_MESSAGE
    }
    assert {k: v for k, v in ours["properties"].items() if k not in PER_MESSAGE_PROPERTIES} == {
        k: v for k, v in celerys["properties"].items() if k not in PER_MESSAGE_PROPERTIES
    }
    assert {k: v for k, v in ours.items() if k not in {"headers", "properties"}} == {
        k: v for k, v in celerys.items() if k not in {"headers", "properties"}
    }
    assert _body(ours) == _body(celerys) == [[envelope], {}, queueing._EMBED]


def test_message_carries_its_senders_tenant(cast, queue):
    for tenant in (cast.tenant_a, cast.tenant_b):
        with tenant_context(tenant):
            queueing.task_send(predict_on_worker, [{"request_id": "r"}], queue=queue, argsrepr="")
    schemas = [message["headers"]["_schema_name"] for message in _messages(queue)]
    assert schemas == [cast.tenant_a.schema_name, cast.tenant_b.schema_name]
    assert connection.schema_name == "public"


def test_predict_message_names_the_request_but_never_copies_its_input(cast, queue):
    from types import SimpleNamespace

    from apps.inference import services

    route = SimpleNamespace(queue_name=queue, model_name="fraud-scorer")
    envelope = {"request_id": "r9", "body": {"inputs": [["4111 1111 1111 1111"]]}}
    with tenant_context(cast.tenant_a):
        services.envelope_send(envelope, route)
    (message,) = _messages(queue)
    assert message["headers"]["argsrepr"] == "[<request r9 to fraud-scorer>]"
    assert "4111" not in json.dumps(message["headers"])
    assert _body(message)[0] == [envelope]


def test_other_brokers_get_the_same_message_through_celery(cast, queue, settings):
    settings.CELERY_BROKER_TRANSPORT = None  # as with RabbitMQ: no direct push
    assert not queueing.pushes_directly()
    envelope = {"request_id": "r2", "body": {"inputs": [["secret input"]]}}
    with tenant_context(cast.tenant_b):
        queueing.task_send(predict_on_worker, [envelope], queue=queue, argsrepr="[r2]")
    (message,) = _messages(queue)  # Celery's publish, on the same Redis in this suite
    assert message["headers"]["_schema_name"] == cast.tenant_b.schema_name
    assert message["headers"]["argsrepr"] == "[r2]"
    assert "secret input" not in json.dumps(message["headers"])
    assert _body(message)[0] == [envelope]


def test_key_prefixed_broker_is_not_pushed_to_directly(settings):
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": "portal:"}
    assert not queueing.pushes_directly()
