"""Putting an inference request on its GPU pool's queue.

Celery's `apply_async` builds a producer, the message's headers and properties, a `saferepr` of the arguments and
a kombu publish on every call: about a fifth of a web process's CPU per predict under `make bench`. With the Redis
broker (the default), the web writes the message itself: the Celery protocol-2 message kombu would write (a test
compares the two field by field), pushed with one `LPUSH` onto the queue's list, which is all kombu's Redis
publish does for a queue bound to the default exchange. With any other broker (RabbitMQ), `apply_async` sends it.

On both paths `argsrepr` names the request instead of repeating its input, so a model's input is not copied into
message headers that monitoring tools (Flower, worker logs) display. The message carries no Celery `expires`: the
worker drops a request past its deadline itself, before calling any model (`apps.inference.worker.predict_run`),
and Celery's own check parsed a date and looked its timezone setting up for every message, about a twentieth of a
worker's CPU per request.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid

from celery import Task
from django.conf import settings
from django.db import connection

from config.redis import get_broker_redis

REDIS_TRANSPORT = "config.celery_transport:Transport"
_HOST = socket.gethostname()
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def pushes_directly() -> bool:
    """True when the broker is the portal's Redis transport with its plain key layout (no key prefix)."""
    options = getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}
    return getattr(settings, "CELERY_BROKER_TRANSPORT", None) == REDIS_TRANSPORT and not options.get("global_keyprefix")


def task_send(task: Task, args: list, *, queue: str, argsrepr: str) -> str:
    """Queue one run of `task` in the current tenant's schema; returns the task id."""
    if not pushes_directly():
        return task.apply_async(args=args, queue=queue, argsrepr=argsrepr).id
    task_id = str(uuid.uuid4())
    message = task_message(task, args, task_id=task_id, queue=queue, argsrepr=argsrepr)
    get_broker_redis().lpush(queue, json.dumps(message))
    return task_id


def task_message(task: Task, args: list, *, task_id: str, queue: str, argsrepr: str) -> dict:
    """The message kombu's Redis transport stores for `task.apply_async(args, queue=queue)`."""
    body = json.dumps([args, {}, _EMBED]).encode("utf-8")
    return {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task.name,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": argsrepr,
            "kwargsrepr": "{}",
            "origin": f"gen{os.getpid()}@{_HOST}",
            "ignore_result": task.ignore_result,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
            # What tenant-schemas-celery stamps on every message: the worker runs the task in this schema.
            "_schema_name": connection.schema_name,
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": task.app.thread_oid,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
