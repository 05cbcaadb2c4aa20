"""The local notification receiver: where the embedded stack's notification block sends.

Prefect's automations notify through a notification block; on one machine there is no Slack
to post to, so `driftloop up` starts this receiver and its default webhook block points here.
Each notification is appended, as one JSON object per line, to
``.driftloop/logs/notifications.jsonl`` (and `driftloop up` prints its subject). Standard
library only: it starts in a fraction of a second.

    $ python -m driftloop.app.notify_receiver --port 4280 --file .driftloop/logs/notifications.jsonl
    $ curl -s -XPOST localhost:4280/notify -d '{"subject": "hi", "body": "there"}'
    $ tail -1 .driftloop/logs/notifications.jsonl
    {"received": "2026-11-22T10:00:00+00:00", "subject": "hi", "body": "there"}
"""

from __future__ import annotations

import argparse
import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

NOTIFY_PATH = "/notify"
HEALTH_PATH = "/health"


def record(body: bytes, file: Path, lock: threading.Lock) -> dict:
    """Parse one notification and append it to the file. A body that is not a JSON object is
    kept as text: a notification is never dropped for its format."""
    try:
        message = json.loads(body)
        if not isinstance(message, dict):
            message = {"body": message}
    except ValueError:
        message = {"body": body.decode("utf-8", "replace")}
    entry = {"received": datetime.now(UTC).isoformat(), **message}
    line = json.dumps(entry, ensure_ascii=False)
    with lock, file.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    return entry


def make_server(host: str, port: int, file: Path) -> ThreadingHTTPServer:
    """The receiver's HTTP server (not yet serving)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._reply(200 if self.path == HEALTH_PATH else 404)

        def do_POST(self) -> None:
            if self.path != NOTIFY_PATH:
                self._reply(404)
                return
            length = int(self.headers.get("Content-Length") or 0)
            entry = record(self.rfile.read(length), file, lock)
            print(f"notification: {entry.get('subject', '')}", flush=True)
            self._reply(204)

        def _reply(self, code: int) -> None:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per notification (above) is enough

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", type=Path, required=True)
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, args.file)
    print(f"receiving notifications on http://{args.host}:{args.port}{NOTIFY_PATH}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
