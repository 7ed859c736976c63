"""A stand-in for jupyterhub-singleuser in benchmarks/spawn_storm.py: it listens where the
hub told it (JUPYTERHUB_SERVICE_URL) and answers every request, so that a storm of spawns
measures podbay's part and the hub's, not a hundred JupyterLabs starting on two cores."""

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse


class Answer(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server API
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.end_headers()
        self.wfile.write(b"stand-in workspace\n")

    def log_message(self, *args):
        pass


url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
ThreadingHTTPServer((url.hostname or "127.0.0.1", url.port), Answer).serve_forever()
