"""uvicorn's h11 protocol, answering unparseable requests with an OpenAI envelope.

Requests h11 cannot parse never reach the app: uvicorn answers them with a plain-text
400. This subclass sends the JSON envelope instead, with 431 when the request line and
headers passed ``--max-header-bytes`` (h11's ``max_incomplete_event_size``).
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.core.context import new_request_id


class EnvelopeH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        limit = self.config.h11_max_incomplete_event_size
        oversized = limit is not None and len(self.conn.trailing_data[0]) > limit
        status = 431 if oversized else 400
        request_id = new_request_id()
        message = (
            f"The request line and headers exceed {limit} bytes."
            if oversized
            else "Invalid HTTP request received."
        )
        code = "request_header_fields_too_large" if oversized else "invalid_http_request"
        body = json.dumps({
            "error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": code, "requestId": request_id},
            "htdi": {"requestId": request_id, "houseId": None, "source": None,
                     "latencyMs": 0.0, "model": None},
        }).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
            (b"connection", b"close"),
        ]
        self.transport.write(self.conn.send(h11.Response(status_code=status, headers=headers)))
        self.transport.write(self.conn.send(h11.Data(data=body)))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()
