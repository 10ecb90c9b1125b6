"""Users: the owners of wallets."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from wallet.db.models import User
from wallet.errors import UserAlreadyExists


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: uuid.UUID
    username: str
    created_at: datetime
    created: bool


async def user_exists(conn: AsyncConnection, user_id: uuid.UUID) -> bool:
    found = await conn.scalar(select(User.id).where(User.id == user_id))
    return found is not None


async def create_user(
    conn: AsyncConnection, *, username: str, user_id: uuid.UUID | None = None
) -> UserRecord:
    """Create a user; repeating the same (id, username) returns the existing user."""
    new_id = user_id or uuid.uuid4()
    inserted = (
        await conn.execute(
            text(
                "INSERT INTO users (id, username) VALUES (:id, :username)"
                " ON CONFLICT DO NOTHING RETURNING id, username, created_at"
            ),
            {"id": new_id, "username": username},
        )
    ).one_or_none()
    if inserted is not None:
        return UserRecord(inserted.id, inserted.username, inserted.created_at, created=True)
    if user_id is not None:
        existing = (
            await conn.execute(
                select(User.id, User.username, User.created_at).where(User.id == user_id)
            )
        ).one_or_none()
        if existing is not None and existing.username == username:
            return UserRecord(existing.id, existing.username, existing.created_at, created=False)
        if existing is not None:
            raise UserAlreadyExists(f"User {user_id} already exists with another username.")
    raise UserAlreadyExists(f"Username {username!r} is taken.")
