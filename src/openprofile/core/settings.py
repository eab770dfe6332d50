"""Settings, read from options and `OPENPROFILE_*` environment variables.

One object carries every setting so the server, the workers and the CLI agree on where the data is.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AuthMode(StrEnum):
    """`strict` checks IMS tokens issued by this server; `permissive` accepts any bearer token."""

    strict = "strict"
    permissive = "permissive"


class Settings(BaseSettings):
    """Everything the platform needs to run; every field is also `OPENPROFILE_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="OPENPROFILE_", extra="ignore")

    data_dir: Path = Field(default=Path("./openprofile-data"), description="Lake, uploads and SQLite live here.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the metadata store; default SQLite under the data dir.",
    )
    host: str = "127.0.0.1"
    port: int = 8080
    auth: AuthMode = AuthMode.strict
    workers: int = Field(default=2, ge=0, description="In-process job workers (0: only `openprofile worker`).")
    token_ttl_seconds: int = 86399
    max_json_body_bytes: int = 16 * 1024 * 1024
    max_upload_bytes: int = 8 * 1024 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    lease_seconds: float = 30.0
    poll_seconds: float = 0.2
    rows_per_file: int = 1_000_000
    engine_threads: int | None = None
    max_merge_policies: int = Field(default=5, description="AEP's guardrail: merge policies per sandbox.")
    max_graph_identities: int = Field(default=50, description="Larger identity graphs are left out, as in AEP.")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'metadata.sqlite3').resolve()}"

    @property
    def lake_dir(self) -> Path:
        return self.data_dir / "lake"

    @property
    def staging_dir(self) -> Path:
        return self.data_dir / "staging"

    @property
    def profile_dir(self) -> Path:
        return self.data_dir / "profile"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"
