"""kombu's Redis transport, with one Redis client per channel instead of one per command.

kombu builds a new `redis.Redis` around its connection pool for every publish and every acknowledgement. With
redis-py 8 that constructor is dear (a table of response callbacks, driver info, an event dispatcher): py-spy
under `make bench` put about a tenth of a worker's CPU per predict request there, and some of the web's. A
`redis.Redis` is safe to share between threads (each command takes a connection from the pool), and pipelines
are built per call, so a channel can keep the one it made.
"""

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _create_client(self, asynchronous: bool = False):
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self.__dict__.get("_shared_client")
        if client is None:
            client = self._shared_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
