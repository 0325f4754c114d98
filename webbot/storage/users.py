"""People who sign in (WEBBOT_AUTH=accounts): names, argon2 password hashes, admin and disabled flags, API keys.

Passwords are hashed with argon2id (argon2-cffi's defaults) and re-hashed on sign-in when
those defaults change. Each user has a `session_version`, part of what their browser's
session holds: changing the password or disabling the account bumps it, which signs out
every session at once. API keys are 32 random bytes shown once; only their SHA-256 is
kept (they are random, so a slow hash would add nothing).
"""

import hashlib
import re
import secrets
import time
from functools import cached_property

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    func,
    select,
    update,
)

metadata = MetaData()

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),  # stored lower-case
    Column("password_hash", String(255), nullable=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("session_version", Integer, nullable=False, default=1),
    Column("created_at", Float, nullable=False),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("name", String(64), nullable=False),
    Column("prefix", String(16), nullable=False),  # shown in the list so a key can be recognised
    Column("digest", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float),
)

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024  # argon2 takes any length; this only bounds the work a request can ask for
KEY_PREFIX = "wb-"
PUBLIC = ("id", "name", "is_admin", "disabled", "session_version", "created_at")  # all but the hash
PUBLIC_COLUMNS = [users.c[key] for key in PUBLIC]


class UserError(ValueError):
    """A name or password that cannot be used; the message says what to change."""


def check_password_rules(password: str) -> None:
    """Raise UserError unless the password is long enough (and not absurdly long)."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise UserError(f"Choose a password of at least {MIN_PASSWORD_CHARS} characters.")
    if len(password) > MAX_PASSWORD_CHARS:
        raise UserError(f"Choose a password of at most {MAX_PASSWORD_CHARS} characters.")


def normal_name(name: str) -> str:
    """A user name as stored: trimmed and lower-case; UserError when it has other characters."""
    name = (name or "").strip().lower()
    if not NAME.fullmatch(name):
        raise UserError("A user name is 1 to 64 letters, digits, dots, dashes or underscores, "
                        "starting with a letter or digit.")
    return name


def key_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Users:
    """Reads and writes users and their API keys in the app's database; safe to share between threads."""

    def __init__(self, engine, hasher: PasswordHasher | None = None):
        self.engine = engine
        self.hasher = hasher or PasswordHasher()

    @cached_property
    def _dummy_hash(self) -> str:
        """Checked against for unknown names, so they cost as much time as known ones."""
        return self.hasher.hash(secrets.token_hex(16))

    def create(self, name: str, password: str, admin: bool = False) -> dict:
        """A new user; UserError when the name is taken or the name or password breaks the rules."""
        name = normal_name(name)
        check_password_rules(password)
        row = {"name": name, "password_hash": self.hasher.hash(password), "is_admin": admin, "disabled": False,
               "session_version": 1, "created_at": time.time()}
        with self.engine.begin() as db:
            if db.execute(select(users.c.id).where(users.c.name == name)).first() is not None:
                raise UserError(f"The name {name!r} is taken; choose another.")
            row["id"] = db.execute(users.insert().values(**row)).inserted_primary_key[0]
        return {key: row[key] for key in PUBLIC}

    def get(self, user_id: int) -> dict | None:
        return self._one(users.c.id == user_id)

    def by_name(self, name: str) -> dict | None:
        return self._one(users.c.name == (name or "").strip().lower())

    def _one(self, condition, columns=PUBLIC_COLUMNS) -> dict | None:
        with self.engine.connect() as db:
            row = db.execute(select(*columns).where(condition)).mappings().first()
        return dict(row) if row else None

    def all(self) -> list[dict]:
        with self.engine.connect() as db:
            rows = db.execute(select(*PUBLIC_COLUMNS).order_by(users.c.name)).mappings().all()
        return [dict(r) for r in rows]

    def count(self) -> int:
        with self.engine.connect() as db:
            return db.execute(select(func.count()).select_from(users)).scalar_one()

    def authenticate(self, name: str, password: str) -> dict | None:
        """The user when the name and password match (disabled or not: the caller says which), else None."""
        row = self._one(users.c.name == (name or "").strip().lower(), users.c)
        stored = row["password_hash"] if row else self._dummy_hash
        try:
            self.hasher.verify(stored, password or "")
        except (VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        if self.hasher.check_needs_rehash(stored):
            with self.engine.begin() as db:
                db.execute(update(users).where(users.c.id == row["id"])
                           .values(password_hash=self.hasher.hash(password)))
        return {key: row[key] for key in PUBLIC}

    def set_password(self, user_id: int, password: str) -> None:
        """A new password; every session signed in with the old one is signed out."""
        check_password_rules(password)
        self._update(user_id, password_hash=self.hasher.hash(password),
                     session_version=users.c.session_version + 1)

    def set_disabled(self, user_id: int, disabled: bool) -> None:
        """Disable (signs out every session and stops the user's API keys) or enable again."""
        self._update(user_id, disabled=disabled, session_version=users.c.session_version + 1)

    def set_admin(self, user_id: int, admin: bool) -> None:
        self._update(user_id, is_admin=admin)

    def _update(self, user_id: int, **values) -> None:
        with self.engine.begin() as db:
            if db.execute(update(users).where(users.c.id == user_id).values(**values)).rowcount != 1:
                raise UserError(f"There is no user with id {user_id}.")

    def create_key(self, user_id: int, name: str) -> tuple[str, dict]:
        """A new API key for the user: (the key, shown only now; its stored row)."""
        name = (name or "").strip() or "API key"
        if len(name) > 64:
            raise UserError("Name the key in at most 64 characters.")
        if any(ord(char) < 32 or 0xD800 <= ord(char) <= 0xDFFF for char in name):
            raise UserError("Name the key in letters, digits and punctuation; control characters cannot be kept.")
        token = KEY_PREFIX + secrets.token_urlsafe(32)
        row = {"user_id": user_id, "name": name, "prefix": token[:10], "digest": key_digest(token),
               "created_at": time.time(), "last_used_at": None}
        with self.engine.begin() as db:
            row["id"] = db.execute(api_keys.insert().values(**row)).inserted_primary_key[0]
        return token, row

    def keys(self, user_id: int) -> list[dict]:
        """The user's API keys (without their digests), newest first."""
        columns = [api_keys.c[k] for k in ("id", "name", "prefix", "created_at", "last_used_at")]
        with self.engine.connect() as db:
            rows = db.execute(select(*columns).where(api_keys.c.user_id == user_id)
                              .order_by(api_keys.c.id.desc())).mappings().all()
        return [dict(r) for r in rows]

    def revoke_key(self, user_id: int, key_id: int) -> bool:
        """Delete one of the user's keys; False when it is not theirs."""
        with self.engine.begin() as db:
            return db.execute(delete(api_keys).where(api_keys.c.id == key_id,
                                                     api_keys.c.user_id == user_id)).rowcount == 1

    def user_for_key(self, token: str) -> dict | None:
        """The enabled user an API key belongs to, or None."""
        if not token.startswith(KEY_PREFIX):
            return None
        digest = key_digest(token)
        with self.engine.begin() as db:
            row = db.execute(select(*PUBLIC_COLUMNS, api_keys.c.id.label("key_id"))
                             .join(api_keys, api_keys.c.user_id == users.c.id)
                             .where(api_keys.c.digest == digest)).mappings().first()
            if row is None or row["disabled"]:
                return None
            db.execute(update(api_keys).where(api_keys.c.id == row["key_id"]).values(last_used_at=time.time()))
        return {key: row[key] for key in PUBLIC}
