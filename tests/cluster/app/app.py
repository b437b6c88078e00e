"""The test app: a WSGI app served by gunicorn (gthread workers, keep-alive) in the cluster tests' image.

GET / answers 200 with the pod's name; GET /hang makes every later request of the process block, as an app whose
threads are stuck does (the liveness scenario); SIGTERM is gunicorn's own graceful stop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable

HUNG = threading.Event()
NAME = os.environ.get("POD_NAME", "app").encode()


def app(environ: dict[str, object], start_response: Callable[..., object]) -> Iterable[bytes]:
    """The WSGI entry point."""
    if environ.get("PATH_INFO") == "/hang":
        HUNG.set()
    if HUNG.is_set():
        threading.Event().wait()  # never returns: the app is stuck
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(NAME)))])
    return [NAME]
