"""What a request must pass before any route sees it: the API key (for /v1) and the body size limit.

Both are plain ASGI middleware so that they run before the body is parsed: a request without the
key gets 401 whatever its body, and a huge body is refused without being held in memory. (Starlette
and uvicorn limit headers, not bodies, so the size check is written here.)
"""

from __future__ import annotations

import secrets

from decoderlm.serve.errors import error_response


class RequireAPIKey:
    def __init__(self, app, api_key: str | None, prefix: str = "/v1"):
        self.app, self.prefix = app, prefix
        self.expected = None if api_key is None else f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if self.expected is None or scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not secrets.compare_digest(given, self.expected):  # constant time: no guessing byte by byte
            message = ("missing API key: send the header 'Authorization: Bearer KEY'" if not given
                       else "incorrect API key")
            return await error_response(401, message, code="invalid_api_key")(scope, receive, send)
        return await self.app(scope, receive, send)


class LimitBodySize:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        # Read the body here (it is small by now) so a sender without Content-Length is held to the limit too.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards: disconnect notices

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        response = error_response(413, f"the request body is larger than {self.max_bytes} bytes")
        await response(scope, receive, send)
