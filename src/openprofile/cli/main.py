"""The `openprofile` command: serve the API, run workers, manage credentials and sandboxes, generate data,
and drive export jobs over HTTP (`openprofile export ...`, in `cli/export.py`).

Every option can also be set with an `OPENPROFILE_*` environment variable (see `core/settings.py`).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from openprofile.cli.export import export_app
from openprofile.core.settings import AuthMode, Settings

app = typer.Typer(help="openprofile: an open AEP Real-Time Customer Profile service.", no_args_is_help=True)
credentials_app = typer.Typer(help="API clients (client id = API key, secret, org).", no_args_is_help=True)
sandbox_app = typer.Typer(help="Sandboxes of an org.", no_args_is_help=True)
app.add_typer(credentials_app, name="credentials")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(export_app, name="export")
console = Console()

DataDir = typer.Option(None, "--data-dir", help="Lake, uploads and SQLite live here [env OPENPROFILE_DATA_DIR].")
DatabaseUrl = typer.Option(None, "--database-url",
                           help="Metadata store URL, e.g. postgresql+psycopg://... [env OPENPROFILE_DATABASE_URL].")


def settings_from(**options: Any) -> Settings:
    """Environment first, then the options actually given on the command line."""
    return Settings(**{k: v for k, v in options.items() if v is not None})


@app.command()
def serve(
    host: str = typer.Option(None, help="Address to listen on [env OPENPROFILE_HOST]."),
    port: int = typer.Option(None, help="Port [env OPENPROFILE_PORT]."),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
    auth: AuthMode = typer.Option(None, help="strict (IMS tokens) or permissive (any token) [env OPENPROFILE_AUTH]."),
    workers: int = typer.Option(None, help="In-process job workers [env OPENPROFILE_WORKERS]."),
) -> None:
    """Serve the AEP-compatible API, with in-process workers."""
    import uvicorn

    from openprofile.app import create_app

    settings = settings_from(host=host, port=port, data_dir=data_dir, database_url=database_url, auth=auth,
                             workers=workers)
    application = create_app(settings)
    console.print(f"[bold green]openprofile[/] serving on http://{settings.host}:{settings.port} "
                  f"(auth {settings.auth.value}, data in {settings.data_dir.resolve()})")
    uvicorn.run(application, host=settings.host, port=settings.port, http="h11", log_level="warning",
                h11_max_incomplete_event_size=max(4 * settings.max_header_bytes, 64 * 1024))


@app.command()
def worker(
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
    concurrency: int = typer.Option(2, help="Jobs run at once by this process."),
) -> None:
    """Run job workers in this process against the same store as the server."""
    from openprofile.app import worker_pool
    from openprofile.core.platform import Platform

    platform = Platform.open(settings_from(data_dir=data_dir, database_url=database_url))
    pool = worker_pool(platform, concurrency)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    pool.start()
    console.print(f"[bold green]openprofile worker[/] running {concurrency} workers; Ctrl-C stops.")
    stop.wait()
    pool.stop()


@credentials_app.command("add")
def credentials_add(
    org_id: str = typer.Option(..., "--org-id", help="IMS org, e.g. 1BD6382559DF0C130A49422D@AdobeOrg."),
    client_id: str = typer.Option(..., "--client-id", help="The client id, sent as x-api-key."),
    client_secret: str = typer.Option(..., "--client-secret", help="The client secret."),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """Register an API client for an org (creating the org and its prod sandbox)."""
    from openprofile.core.platform import Platform
    from openprofile.core.tenancy import add_credentials

    platform = Platform.open(settings_from(data_dir=data_dir, database_url=database_url))
    with platform.engine.begin() as conn:
        add_credentials(conn, org_id, client_id, client_secret)
    console.print(f"client [bold]{client_id}[/] can now get tokens for org [bold]{org_id}[/]")


@credentials_app.command("list")
def credentials_list(data_dir: Path = DataDir, database_url: str = DatabaseUrl) -> None:
    """List API clients (secrets are never shown)."""
    from openprofile.core.platform import Platform
    from openprofile.core.tenancy import list_credentials

    platform = Platform.open(settings_from(data_dir=data_dir, database_url=database_url))
    with platform.engine.connect() as conn:
        rows = list_credentials(conn)
    table = Table("client id", "org", "created (ms)")
    for row in rows:
        table.add_row(row["client_id"], row["org_id"], str(row["created_ms"]))
    console.print(table)


@sandbox_app.command("create")
def sandbox_create(
    name: str = typer.Argument(..., help="Lowercase letters, digits and '-'."),
    org_id: str = typer.Option(..., "--org-id"),
    title: str = typer.Option(None, help="Display title."),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """Create a development sandbox in an org."""
    from openprofile.core.errors import PlatformError
    from openprofile.core.platform import Platform
    from openprofile.core.tenancy import create_sandbox

    platform = Platform.open(settings_from(data_dir=data_dir, database_url=database_url))
    try:
        with platform.engine.begin() as conn:
            sandbox = create_sandbox(conn, org_id, name, title=title)
    except PlatformError as exc:
        console.print(f"[red]{exc.detail}[/]")
        raise typer.Exit(2) from None
    console.print(f"sandbox [bold]{sandbox.name}[/] ({sandbox.id}) in org {org_id}")


@sandbox_app.command("list")
def sandbox_list(org_id: str = typer.Option(None, "--org-id"), data_dir: Path = DataDir,
                 database_url: str = DatabaseUrl) -> None:
    """List sandboxes, of one org or of all."""
    from openprofile.core.platform import Platform
    from openprofile.core.tenancy import list_sandboxes

    platform = Platform.open(settings_from(data_dir=data_dir, database_url=database_url))
    with platform.engine.connect() as conn:
        found = list_sandboxes(conn, org_id)
    table = Table("org", "name", "id", "type")
    for s in found:
        table.add_row(s.org_id, s.name, s.id, s.type)
    console.print(table)


@app.command()
def rebuild(
    org_id: str = typer.Option(..., "--org-id"),
    sandbox: str = typer.Option("prod", "--sandbox"),
    data_dir: Path = DataDir,
    database_url: str = DatabaseUrl,
) -> None:
    """Rebuild a sandbox's profile store from its lake batches (deleted profiles stay deleted)."""
    import time

    from openprofile.core.platform import Platform
    from openprofile.core.tenancy import Tenant, find_sandbox
    from openprofile.profile import store

    platform = Platform.open(settings_from(data_dir=data_dir, database_url=database_url))
    with platform.engine.connect() as conn:
        found = find_sandbox(conn, org_id, sandbox)
    if found is None:
        console.print(f"[red]no sandbox '{sandbox}' in org '{org_id}'[/]")
        raise typer.Exit(2)
    started = time.perf_counter()
    applied = store.rebuild(platform, Tenant(org_id, found.id, found.name))
    console.print(f"rebuilt the profile store of {org_id}/{sandbox} from {applied} batches "
                  f"in {time.perf_counter() - started:.2f} s")


@app.command()
def generate(
    profiles: int = typer.Option(100_000, help="People to generate."),
    seed: int = typer.Option(42, help="Same seed, same data."),
    out: Path = typer.Option(Path("generated"), help="Output directory."),
    events_per_profile: int = typer.Option(10, help="Experience events per person."),
    fragments_per_profile: int = typer.Option(2, help="2: CRM + loyalty; 3: also a legacy CRM record keyed by email."),
) -> None:
    """Generate synthetic XDM profiles and events as Parquet (see openprofile.generate)."""
    import time

    from openprofile.generate import generate_dataset

    started = time.perf_counter()
    data = generate_dataset(out, profiles, seed=seed, events_per_profile=events_per_profile,
                            fragments_per_profile=fragments_per_profile)
    elapsed = time.perf_counter() - started
    table = Table("dataset", "files", "records")
    total = 0
    for name in ("crm", "loyalty", "events"):
        table.add_row(name, str(len(data.files_for(name))), f"{data.records(name):,}")
        total += data.records(name)
    console.print(table)
    console.print(f"{total:,} records in {elapsed:.2f} s ({total / elapsed:,.0f} records/s) under {out}")


@app.command()
def demo(
    data_dir: Path = typer.Option(Path("demo-data"), help="A fresh data directory for the demo."),
    profiles: int = typer.Option(100_000, help="People to generate and ingest."),
    port: int = typer.Option(8765, help="Port for the demo server."),
) -> None:
    """Start a server, ingest generated profiles through the API, and show what happened."""
    from openprofile.demo import run_demo

    run_demo(data_dir=data_dir, profiles=profiles, port=port, console=console)


if __name__ == "__main__":
    app()
