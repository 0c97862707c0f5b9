"""The inference task's message, written by the web process itself: the one Celery would send, on the real broker."""

import base64
import datetime as dt
import json
import time
import uuid

import pytest
from django.db import connection
from django_tenants.utils import tenant_context

from apps.inference import queueing
from apps.inference.tasks import predict_on_worker

pytestmark = pytest.mark.django_db

PER_MESSAGE = {"id", "root_id", "argsrepr"}  # ids are fresh per message; argsrepr differs on purpose
PER_MESSAGE_PROPERTIES = {"correlation_id", "delivery_tag", "expiration"}


@pytest.fixture
def queue():
    name = f"test.queueing.{uuid.uuid4().hex[:8]}"
    yield name
    queueing._broker_redis().delete(name)


def _messages(queue: str) -> list[dict]:
    return [json.loads(raw) for raw in reversed(queueing._broker_redis().lrange(queue, 0, -1))]


def _body(message: dict) -> list:
    return json.loads(base64.b64decode(message["body"]))


def test_pushed_message_is_the_one_celery_sends(cast, queue):
    envelope = {"request_id": "r1", "body": {"inputs": [[1.5, 2]]}, "deadline": time.time() + 30}
    expires_at = envelope["deadline"]
    with tenant_context(cast.tenant_a):
        predict_on_worker.apply_async(
            args=[envelope], queue=queue, expires=dt.datetime.fromtimestamp(expires_at, dt.UTC)
        )
        task_id = queueing.task_send(predict_on_worker, [envelope], queue=queue, expires_at=expires_at, argsrepr="[r1]")
    celerys, ours = _messages(queue)

    assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"] == task_id
    assert {k: v for k, v in ours["headers"].items() if k not in PER_MESSAGE} == {
        k: v for k, v in celerys["headers"].items() if k not in PER_MESSAGE
    }
    assert {k: v for k, v in ours["properties"].items() if k not in PER_MESSAGE_PROPERTIES} == {
        k: v for k, v in celerys["properties"].items() if k not in PER_MESSAGE_PROPERTIES
    }
    assert abs(int(ours["properties"]["expiration"]) - int(celerys["properties"]["expiration"])) < 5000
    assert {k: v for k, v in ours.items() if k not in {"headers", "properties"}} == {
        k: v for k, v in celerys.items() if k not in {"headers", "properties"}
    }
    assert _body(ours) == _body(celerys) == [[envelope], {}, queueing._EMBED]


def test_message_carries_its_senders_tenant_and_expires_at_the_deadline(cast, queue):
    deadline = time.time() + 12
    for tenant in (cast.tenant_a, cast.tenant_b):
        with tenant_context(tenant):
            queueing.task_send(predict_on_worker, [{"request_id": "r"}], queue=queue, expires_at=deadline, argsrepr="")
    schemas = [message["headers"]["_schema_name"] for message in _messages(queue)]
    assert schemas == [cast.tenant_a.schema_name, cast.tenant_b.schema_name]
    for message in _messages(queue):
        assert dt.datetime.fromisoformat(message["headers"]["expires"]).timestamp() == pytest.approx(deadline)
    assert connection.schema_name == "public"


def test_other_brokers_get_the_same_message_through_celery(cast, queue, settings):
    settings.CELERY_BROKER_TRANSPORT = None  # as with RabbitMQ: no direct push
    assert not queueing.pushes_directly()
    envelope = {"request_id": "r2", "body": {"inputs": [["secret input"]]}}
    deadline = time.time() + 20
    with tenant_context(cast.tenant_b):
        queueing.task_send(predict_on_worker, [envelope], queue=queue, expires_at=deadline, argsrepr="[r2]")
    (message,) = _messages(queue)  # Celery's publish, on the same Redis in this suite
    assert message["headers"]["_schema_name"] == cast.tenant_b.schema_name
    assert message["headers"]["argsrepr"] == "[r2]"
    assert dt.datetime.fromisoformat(message["headers"]["expires"]).timestamp() == pytest.approx(deadline)
    assert _body(message)[0] == [envelope]


def test_key_prefixed_broker_is_not_pushed_to_directly(settings):
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": "portal:"}
    assert not queueing.pushes_directly()
