"""HTTP/1.1 test backend for header mode: answers every request (keep-alive)
with a JSON description of what it received: method, path, the headers in
order (duplicates kept), the peer port, and the body's length and SHA-256.
Python's http.server parses the heads; chunked bodies are decoded here.
Prints its port on the first line of stdout."""

import hashlib
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def read_chunked(self):
        body = b""
        while True:
            line = self.rfile.readline(65537)
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                trailers = []
                while True:
                    t = self.rfile.readline(65537)
                    if t in (b"\r\n", b"\n", b""):
                        return body, trailers
                    trailers.append(t.decode("latin-1").rstrip("\r\n"))
            body += self.rfile.read(size)
            self.rfile.readline(3)

    def answer(self):
        trailers = []
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body, trailers = self.read_chunked()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        out = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": self.headers.items(),
                "trailers": trailers,
                "peer_port": self.client_address[1],
                "body_len": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = answer

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
print(server.server_address[1], flush=True)
server.serve_forever()
