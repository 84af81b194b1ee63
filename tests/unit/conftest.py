"""Fixtures of tests/harness that unit tests share."""

from __future__ import annotations

from harness import s3server

s3_server = s3server.s3_server_fixture  # the real S3-compatible server (SeaweedFS), session-wide
