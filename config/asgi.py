"""ASGI entry point (gunicorn's default uvicorn workers): streams hold no thread, the rest runs in one hop to a
reused thread (see `config.asgi_handler`)."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup(set_prefix=False)

from config.asgi_handler import OneHopASGIHandler  # noqa: E402 (needs the apps loaded)

application = OneHopASGIHandler()
