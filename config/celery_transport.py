"""kombu's Redis transport, tuned for the inference hot path.

Two changes, both measured with `make bench` (docs/benchmarks.md):

- One Redis client per channel instead of one per command. kombu builds a new `redis.Redis` around its connection
  pool for every publish and every acknowledgement, and with redis-py 8 that constructor is dear (a table of
  response callbacks, driver info, an event dispatcher). A `redis.Redis` is safe to share between threads (each
  command takes a connection from the pool), and pipelines are built per call, so a channel can keep the one it
  made.
- No unacknowledged-message index for the inference task. kombu emulates acknowledgements on Redis by copying
  every delivered message into a hash and a sorted set (one pipeline on receipt, another on ack), so that a
  message whose worker died is put back on its queue after the visibility timeout (an hour). An inference
  request must never be run twice, is acknowledged as it starts, and expires at its deadline, long before any
  such restore; a worker that dies with it is recorded by the waiting web process (`worker_lost`). The index
  bought it nothing and cost a quarter of a worker's CPU per request. Every other task keeps it. Messages of
  the inference task still held when a worker shuts down are put back on their queue, as kombu does for the rest.
- An acknowledgement that reopens a full prefetch window wakes the worker's event loop. The loop asks Redis for
  the next message (`BRPOP`) only while the window has room; with it full, the loop sleeps in `epoll` for up to a
  second, and an acknowledgement made in a pool thread did not wake it. Under load that left requests waiting on
  their queue for up to a second with threads free to run them: the spikes of about a second in `make bench`'s
  p99 at 32 connections.
"""

from kombu.asynchronous import get_event_loop
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

# Tasks whose messages skip the unacknowledged index (see above).
UNINDEXED_TASKS = frozenset({"apps.inference.tasks.predict_on_worker"})


class QoS(kombu_redis.QoS):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._unindexed: set[str] = set()

    def append(self, message, delivery_tag):
        if (message.headers or {}).get("task") in UNINDEXED_TASKS:
            self._unindexed.add(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)

    def ack(self, delivery_tag):
        was_full = not self.can_consume()
        if delivery_tag in self._unindexed:
            self._unindexed.discard(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)
        else:
            super().ack(delivery_tag)
        if was_full:
            _wake_event_loop()

    def reject(self, delivery_tag, requeue=False):
        was_full = not self.can_consume()
        if delivery_tag not in self._unindexed:
            super().reject(delivery_tag, requeue=requeue)
        else:
            self._unindexed.discard(delivery_tag)
            if requeue:
                self._put_back(self._delivered[delivery_tag], leftmost=True)
            virtual.QoS.ack(self, delivery_tag)
        if was_full:
            _wake_event_loop()

    def restore_by_tag(self, tag, client=None, leftmost=False):
        if tag not in self._unindexed:
            return super().restore_by_tag(tag, client=client, leftmost=leftmost)
        self._unindexed.discard(tag)
        message = self._delivered.get(tag)
        if message is not None:
            self._put_back(message, leftmost=leftmost, client=client)

    def _put_back(self, message, *, leftmost: bool, client=None) -> None:
        """What kombu's restore does with a message from its index, from the message held here."""
        exchange, routing_key = message.delivery_info["exchange"], message.delivery_info["routing_key"]
        with self.channel.conn_or_acquire(client) as connection:
            pipe = connection.pipeline()
            self.channel._do_restore_message(message._raw, exchange, routing_key, pipe, leftmost)
            pipe.execute()


def _wake_event_loop() -> None:
    """Have the worker's event loop run a round now, so it asks for the next message (thread-safe)."""
    loop = get_event_loop()
    if loop is not None:
        loop.call_soon(_next_round)


def _next_round() -> None:
    """Nothing to do: waking the loop is the point; its round starts by asking for messages where there is room."""


class Channel(kombu_redis.Channel):
    QoS = QoS

    def _create_client(self, asynchronous: bool = False):
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self.__dict__.get("_shared_client")
        if client is None:
            client = self._shared_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
