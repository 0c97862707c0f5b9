"""The Redis transport: the inference task skips kombu's unacknowledged index, every other task keeps it."""

import threading
import uuid

import pytest
import redis
from django.conf import settings
from kombu import Connection
from kombu.asynchronous import Hub, get_event_loop, set_event_loop

from config.celery_transport import UNINDEXED_TASKS

INFERENCE_TASK = next(iter(UNINDEXED_TASKS))
OTHER_TASK = "apps.accounts.tasks.clear_expired_sessions"


@pytest.fixture
def broker():
    queue_name = f"test.transport.{uuid.uuid4().hex[:8]}"
    with Connection(settings.CELERY_BROKER_URL, transport="config.celery_transport:Transport") as connection:
        queue = connection.SimpleQueue(queue_name)
        yield queue
        queue.clear()
        queue.close()


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL)


def _waiting(queue) -> int:
    return _client().llen(queue.queue.name)


def _indexed(tag: str) -> bool:
    client = _client()
    return bool(client.hexists("unacked", tag)) or client.zscore("unacked_index", tag) is not None


def test_inference_message_is_not_indexed_and_acks_without_it(broker):
    queue = broker
    queue.put({"n": 1}, headers={"task": INFERENCE_TASK})
    message = queue.get(timeout=5)
    assert not _indexed(message.delivery_tag)
    message.ack()
    assert not _indexed(message.delivery_tag)
    assert _waiting(queue) == 0


def test_other_tasks_keep_the_index_until_acked(broker):
    queue = broker
    queue.put({"n": 2}, headers={"task": OTHER_TASK})
    message = queue.get(timeout=5)
    assert _indexed(message.delivery_tag)
    message.ack()
    assert not _indexed(message.delivery_tag)


def test_unacked_inference_message_goes_back_on_its_queue_at_shutdown(broker):
    queue = broker
    queue.put({"n": 3}, headers={"task": INFERENCE_TASK})
    queue.get(timeout=5)  # delivered, never acknowledged
    queue.consumer.channel.qos.restore_unacked()
    again = queue.get(timeout=5)
    assert again.payload == {"n": 3}
    assert again.headers.get("redelivered") is True
    again.ack()


def test_rejected_inference_message_is_requeued_or_dropped_as_asked(broker):
    queue = broker
    queue.put({"n": 4}, headers={"task": INFERENCE_TASK})
    queue.get(timeout=5).reject(requeue=True)
    again = queue.get(timeout=5)
    assert again.payload == {"n": 4}
    again.reject(requeue=False)
    assert _waiting(queue) == 0


class _RecordingHub(Hub):
    """kombu's event loop, noting the calls it is asked to make soon (it is never run here)."""

    def __init__(self):
        super().__init__()
        self.soon = []

    def call_soon(self, callback, *args):
        self.soon.append(callback)
        return super().call_soon(callback, *args)


@pytest.fixture
def event_loop_of_the_worker():
    previous = get_event_loop()
    hub = set_event_loop(_RecordingHub())
    yield hub
    set_event_loop(previous)
    hub.close()


@pytest.mark.parametrize("task", [INFERENCE_TASK, OTHER_TASK])
def test_ack_that_reopens_a_full_prefetch_window_wakes_the_event_loop(broker, event_loop_of_the_worker, task):
    queue = broker
    qos = queue.consumer.channel.qos
    qos.prefetch_count = 1
    queue.put({"n": 5}, headers={"task": task})
    message = queue.get(timeout=5)
    assert not qos.can_consume()
    acked_in_a_pool_thread = threading.Thread(target=message.ack)
    acked_in_a_pool_thread.start()
    acked_in_a_pool_thread.join()
    assert qos.can_consume()
    assert len(event_loop_of_the_worker.soon) == 1


def test_ack_with_room_left_does_not_wake_the_event_loop(broker, event_loop_of_the_worker):
    queue = broker
    queue.consumer.channel.qos.prefetch_count = 2
    queue.put({"n": 6}, headers={"task": INFERENCE_TASK})
    queue.get(timeout=5).ack()
    assert event_loop_of_the_worker.soon == []
