"""Typed application keys of the shared resources, created in ``cleanup_ctx`` by ``create_app``."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from referral.config import Settings
from referral.core.service_keys import ServiceKeyRing

settings_key = web.AppKey("settings_key", Settings)
engine_key = web.AppKey("engine_key", AsyncEngine)
sessionmaker_key = web.AppKey("sessionmaker_key", async_sessionmaker[AsyncSession])
service_keys_key = web.AppKey("service_keys_key", ServiceKeyRing)
