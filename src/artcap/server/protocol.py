"""uvicorn's HTTP/1.1 protocol (h11), with its one plain-text answer made JSON like every other.

A request h11 cannot parse (a repeated or malformed Content-Length, a bad header line) never reaches
the app: uvicorn answers it itself, with a text/plain 400. This subclass answers the same 400 as
`{"error": "..."}` with nosniff. The server always runs this protocol (not `http="auto"`, which
would switch to httptools when it is installed), so the answer does not depend on what else is
installed."""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MALFORMED = ("malformed HTTP request ({detail}): check the request line and headers (e.g. Content-Length "
             "given twice or not a number) and send it again")


class JsonErrorH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": MALFORMED.format(detail=msg.rstrip("."))}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"x-content-type-options", b"nosniff"), (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()
