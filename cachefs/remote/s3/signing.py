"""Credentials and SigV4 signatures for S3 requests, by botocore.

botocore resolves credentials the way every AWS tool does (environment,
shared credentials and config files, profiles, SSO, container and instance
roles) and signs with SigV4; we only move its signed headers onto the httpx
request. Credentials live in memory only: nothing here logs, stores or
formats them into messages.
"""

from __future__ import annotations

import logging
from typing import Protocol

import botocore.session
import httpx
import trio
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials
from botocore.exceptions import BotoCoreError, ProfileNotFound

from ..base import AccessDenied
from .address import DEFAULT_REGION

SERVICE = "s3"
# The request headers that take part in the signature. The rest (User-Agent,
# Accept, Connection) may be changed by httpx or a proxy without breaking it.
_HEADERS_TO_SIGN = ("host", "range", "if-match")
_SIGNATURE_HEADERS = (
    "Authorization",
    "X-Amz-Date",
    "X-Amz-Content-SHA256",
    "X-Amz-Security-Token",
)

# botocore's debug log prints canonical requests, which include the session
# token header: keep it quiet whatever level the daemon logs at.
logging.getLogger("botocore").setLevel(logging.WARNING)


class NoCredentials(AccessDenied):
    """The credential chain found nothing (or something unusable)."""


class Signer(Protocol):
    """Adds whatever authenticates a request to it, in place."""

    async def sign(self, request: httpx.Request) -> None: ...


class AnonymousSigner:
    """--no-sign-request: requests go out as they are, for public buckets."""

    async def sign(self, request: httpx.Request) -> None:
        return None


def make_session(profile: str | None) -> botocore.session.Session:
    """A botocore session; ValueError (one line) for a profile that does not exist."""
    session = botocore.session.Session(profile=profile)
    try:
        # Reading any setting is what makes botocore look the profile up.
        session.get_config_variable("region")
    except ProfileNotFound:
        raise ValueError(f"AWS profile {profile!r} not found in the AWS config files") from None
    return session


def resolve_region(session: botocore.session.Session, region: str | None) -> str:
    """--region, else the profile's or environment's region, else us-east-1."""
    return region or session.get_config_variable("region") or DEFAULT_REGION


class SigV4Signer:
    """Signs with credentials from the standard chain, refreshing them as needed."""

    def __init__(self, session: botocore.session.Session, region: str, where: str) -> None:
        self._session = session
        self._region = region
        # Names the mount in errors (e.g. "s3://bucket/"), never a secret.
        self._where = where
        self._credentials: Credentials | None = None
        self._frozen: ReadOnlyCredentials | None = None
        self._lock = trio.Lock()

    async def sign(self, request: httpx.Request) -> None:
        frozen = await self._current()
        aws = AWSRequest(
            method=request.method,
            url=str(request.url),
            headers={k: request.headers[k] for k in _HEADERS_TO_SIGN if k in request.headers},
        )
        S3SigV4Auth(frozen, SERVICE, self._region).add_auth(aws)
        for name in _SIGNATURE_HEADERS:
            if name in aws.headers:
                request.headers[name] = aws.headers[name]

    async def _current(self) -> ReadOnlyCredentials:
        """Credentials valid now; the chain is walked once, refreshes as due."""
        if self._frozen is not None and not self._refresh_due():
            return self._frozen
        async with self._lock:
            if self._frozen is None or self._refresh_due():
                # Walking the chain or refreshing may mean network calls (STS,
                # SSO, instance metadata) and file reads: off the event loop.
                self._frozen = await trio.to_thread.run_sync(self._resolve)
        return self._frozen

    def _refresh_due(self) -> bool:
        # Static credentials never are; refreshable ones say so themselves.
        refresh_needed = getattr(self._credentials, "refresh_needed", None)
        return bool(refresh_needed is not None and refresh_needed())

    def _resolve(self) -> ReadOnlyCredentials:
        try:
            if self._credentials is None:
                self._credentials = self._session.get_credentials()
            if self._credentials is None:
                raise NoCredentials(
                    "no credentials",
                    summary=(
                        f"no AWS credentials found for {self._where} (set AWS_ACCESS_KEY_ID "
                        "and AWS_SECRET_ACCESS_KEY, use --profile, or --no-sign-request "
                        "for a public bucket)"
                    ),
                )
            frozen = self._credentials.get_frozen_credentials()
        except BotoCoreError as exc:
            # botocore's messages name files and profiles, not secret values.
            raise NoCredentials(
                f"credentials: {exc}",
                summary=f"cannot get AWS credentials for {self._where}: {exc}",
            ) from None
        if not frozen.access_key or not frozen.secret_key:
            raise NoCredentials(
                "incomplete credentials",
                summary=f"incomplete AWS credentials for {self._where}",
            )
        return frozen
