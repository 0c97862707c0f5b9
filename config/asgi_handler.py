"""Django under ASGI with one thread hop a request instead of half a dozen.

The portal's middleware and views are synchronous. Django's own ASGI handler runs them from an async middleware
chain: each request then hops between the event loop and a thread at every boundary (the request-started
signal's receivers, the chain, the view, the response's close), and gets a new thread of its own for its
thread-sensitive code, so thread-local objects (Celery's result backend, the database connection) are built
again on every request. Measured with py-spy under `make bench`, that machinery took about half of a web
process's CPU per predict request.

Here the whole synchronous part of a request (the request-started signal, the middleware chain, the view, and
for a whole response its close and the request-finished signal) runs in one call on a fixed pool of threads
(`ASGI_THREADS`), in the request's own context (so context-local state such as the URLconf and the request id
is the request's), and threads and what they hold are reused. What stays on the event loop is what needs it:
reading the body, sending the answer, streaming an async iterator chunk by chunk (an open stream holds no
thread), and noticing a client that went away, exactly as in Django's handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import FileResponse, HttpRequest, HttpResponseBase
from django.urls import set_script_prefix

_executor: ThreadPoolExecutor | None = None


def _threads() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=settings.ASGI_THREADS, thread_name_prefix="request")
    return _executor


async def in_thread(function, *args):
    """Run `function(*args)` on the request threads, in a copy of the caller's context."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_threads(), context.run, function, *args)


class OneHopASGIHandler(ASGIHandler):
    """`ASGIHandler` whose synchronous middleware chain and view run in one hop to a reused thread."""

    def __init__(self) -> None:
        super(ASGIHandler, self).__init__()
        self.load_middleware(is_async=False)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        async with ThreadSensitiveContext():  # for code that still asks for a thread-sensitive hop
            await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send) -> None:
        """Django 5.2's `ASGIHandler.handle`, with the synchronous part in one hop (see the module docstring)."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            await in_thread(error_response.close)
            return

        async def process_request() -> HttpResponseBase:
            response = await in_thread(self._respond, request, get_script_prefix(scope))
            with contextlib.suppress(asyncio.CancelledError):  # the client went away while it was sent
                await self.send_response(response, send)
            return response

        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request()),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()  # a stream learns here that its client is gone
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            await in_thread(signals.request_finished.send, self.__class__)
        else:
            if response.streaming:
                await in_thread(response.close)
        body_file.close()

    def _respond(self, request: HttpRequest, script_prefix: str) -> HttpResponseBase:
        """Everything synchronous about one request, on one thread; a whole response is closed here too, so the
        request-finished signal (which hands the database connection back) runs on the thread that used it."""
        set_script_prefix(script_prefix)
        signals.request_started.send(sender=self.__class__, scope=request.scope)
        response = self.get_response(request)
        response._handler_class = self.__class__
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size
        if not response.streaming:
            response.close()
        return response
