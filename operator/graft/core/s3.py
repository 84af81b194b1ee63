"""S3 addressing and AWS Signature Version 4, standard library only.

Two programs talk to S3-compatible stores: `graft fetch` in pods (graft.dataplane.fetch, with
urllib) and the gateway's dataset uploads (graft.gateway.stores, with aiohttp). What they share
is here, so there is one signer and one reading of the environment: where the store is
(AWS_REGION, AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for MinIO, Ceph, SeaweedFS, R2, ...,
addressed path-style) and as whom (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optionally
AWS_SESSION_TOKEN; none: unsigned requests, for public buckets). Instance profiles and
web-identity (IRSA) credentials are not read: put keys in the environment.
"""

from __future__ import annotations

import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Self

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
"""x-amz-content-sha256 of a body streamed on without being read first (its hash is not known
when the request is signed); S3 and the compatible stores accept it."""


def split_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of s3://<bucket>/<key>; the key is unquoted and may be empty.
    ValueError when there is no bucket."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri}: expected s3://<bucket>/<key>")
    return parsed.netloc, urllib.parse.unquote(parsed.path.lstrip("/"))


def quote(text: str, safe: str = "-_.~") -> str:
    """URI-encoding as Signature V4 wants it (RFC 3986 unreserved characters kept)."""
    return urllib.parse.quote(text, safe=safe)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def sigv4_authorization(
    *,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    payload_sha256: str,
    access_key: str,
    secret_key: str,
    region: str,
    amz_date: str,
    service: str = "s3",
) -> str:
    """The Authorization header of an AWS Signature V4 request. `path` is already URI-encoded;
    every header in `headers` (which must include host and x-amz-date) is signed."""
    canonical_headers = {k.lower(): " ".join(v.split()) for k, v in headers.items()}
    signed = ";".join(sorted(canonical_headers))
    canonical_query = "&".join(f"{quote(k)}={quote(v)}" for k, v in sorted(query.items()))
    canonical = "\n".join(
        [
            method,
            path,
            canonical_query,
            "".join(f"{k}:{canonical_headers[k]}\n" for k in sorted(canonical_headers)),
            signed,
            payload_sha256,
        ]
    )
    date = amz_date[:8]
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(("AWS4" + secret_key).encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope},SignedHeaders={signed},"
        f"Signature={signature}"
    )


@dataclass(frozen=True)
class S3:
    """Where and as whom to talk to S3 (or an S3-compatible store)."""

    region: str
    endpoint: str | None  # custom endpoint: path-style addressing
    access_key: str | None
    secret_key: str | None
    session_token: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        return cls(
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            endpoint=(env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None),
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
        )

    def url(self, bucket: str, key: str) -> tuple[str, str, str]:
        """(base URL, host, encoded path) of an object or of the bucket (key "")."""
        encoded_key = quote(key, safe="-_.~/")
        if self.endpoint:
            parsed = urllib.parse.urlparse(self.endpoint.rstrip("/"))
            prefix = parsed.path.rstrip("/")
            path = f"{prefix}/{bucket}/{encoded_key}"
            return f"{parsed.scheme}://{parsed.netloc}", parsed.netloc, path
        if "." in bucket:  # virtual-hosted names with dots break TLS certificate matching
            host = f"s3.{self.region}.amazonaws.com"
            return f"https://{host}", host, f"/{bucket}/{encoded_key}"
        host = f"{bucket}.s3.{self.region}.amazonaws.com"
        return f"https://{host}", host, f"/{encoded_key}"

    def signed(
        self,
        method: str,
        bucket: str,
        key: str,
        *,
        query: Mapping[str, str] | None = None,
        payload_sha256: str = EMPTY_SHA256,
        headers: Mapping[str, str] | None = None,
        now: datetime | None = None,
    ) -> tuple[str, dict[str, str]]:
        """(URL, headers) of one request, signed when there are credentials. `headers` are
        sent and signed as well (x-amz-copy-source, ...); Content-Length is the HTTP client's
        business and stays unsigned. Header names come back in lower case, once each."""
        query = dict(query or {})
        base, host, path = self.url(bucket, key)
        out = {"host": host, **{k.lower(): v for k, v in (headers or {}).items()}}
        if self.access_key and self.secret_key:
            amz_date = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
            signed = {
                "host": host,
                "x-amz-date": amz_date,
                "x-amz-content-sha256": payload_sha256,
                **{k.lower(): v for k, v in (headers or {}).items()},
            }
            if self.session_token:
                signed["x-amz-security-token"] = self.session_token
            out.update(signed)
            out["Authorization"] = sigv4_authorization(
                method=method,
                path=path,
                query=query,
                headers=signed,
                payload_sha256=payload_sha256,
                access_key=self.access_key,
                secret_key=self.secret_key,
                region=self.region,
                amz_date=amz_date,
            )
        qs = "&".join(f"{quote(k)}={quote(v)}" for k, v in sorted(query.items()))
        return base + path + (f"?{qs}" if qs else ""), out
