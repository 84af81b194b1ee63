"""Reading request bodies with a bound (the progress route, the dashboard's login form)."""

from __future__ import annotations

from aiohttp import web


async def read_at_most(request: web.Request, limit: int) -> bytes:
    """The body, or its first `limit` bytes when it is longer (the rest is never read), so a
    caller can tell "too long" (limit + 1 bytes asked, all came) without buffering the rest."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await request.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
