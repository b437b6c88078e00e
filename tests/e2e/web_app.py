"""The app of the pod simulation: a small threaded HTTP server that shuts down the way a typical app does.

`python web_app.py --log FILE --port-file FILE [--sick-file FILE] MARKER`: serves `GET /` (a little work, then 200)
and `GET /healthz` (503 while the sick file exists) on a free port of 127.0.0.1, writes that port to `--port-file`, and records with
CLOCK_MONOTONIC (time.monotonic(), shared by every process on the machine) when it started, when SIGTERM
came, when it stopped accepting and when it exited. On SIGTERM it stops accepting (the serve loop ends
and the listening socket is closed, so connections still in the backlog are reset), finishes the requests
in flight and exits 0. The MARKER argument only makes its command line unique, for the agent's `app.match`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

WORK_SECONDS = 0.002  # each request does a little "work", so some are in flight at any moment


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection, closed after the answer
    sick_file: str | None = None

    def do_GET(self) -> None:
        status = 200
        if self.path == "/healthz":
            sick = self.sick_file is not None and os.path.exists(self.sick_file)
            status, body = (503, b"sick\n") if sick else (200, b"ok\n")
        else:
            time.sleep(WORK_SECONDS)
            body = b"hello from the app\n"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads: in-flight requests finish
    block_on_close = True
    request_queue_size = 128


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--sick-file", help="/healthz answers 503 while this file exists")
    parser.add_argument("marker", nargs="?")
    args = parser.parse_args()
    Handler.sick_file = args.sick_file
    log = open(args.log, "a", buffering=1)  # noqa: SIM115 - open for the whole life of the app

    def record(what: str) -> None:
        log.write(f"{what} {time.monotonic():.6f}\n")

    stopping = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        if not stopping.is_set():
            record("SIGTERM")
        stopping.set()

    signal.signal(signal.SIGTERM, on_term)
    server = Server(("127.0.0.1", 0), Handler)
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="serve")
    loop.start()
    temporary = args.port_file + ".tmp"
    with open(temporary, "w", encoding="ascii") as handle:
        handle.write(str(server.server_address[1]))
    os.replace(temporary, args.port_file)
    record(f"started:{os.getpid()}")
    while not stopping.wait(0.05):
        pass
    server.shutdown()  # the serve loop stops accepting
    loop.join()
    record("stopped-accepting")
    server.server_close()  # closes the listener (the backlog is reset), then joins the in-flight requests
    record("exit")
    log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
