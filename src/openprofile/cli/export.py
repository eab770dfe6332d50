"""`openprofile export ...`: profile export jobs over the HTTP API, from the command line.

A small client (`PlatformClient`) gets an IMS token from client credentials (or takes one), sends the
gateway headers on every call, and turns every failure — an AEP error envelope, an IMS error, a
server that cannot be reached — into one `ApiError` that the commands print as the server's
`title`/`detail`, never as a traceback. `follow_job`, `print_summary`, `jobs_table` and `download_job`
are shared with `openprofile demo`.

Exit codes: 0 done; 1 the job ended FAILED or CANCELLED (or is not ready to download); 2 bad usage;
3 the server refused the request or could not be reached; 130 interrupted.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

JOBS = "/data/core/ups/export/jobs"
DATA_ACCESS = "/data/foundation/export"
PROFILE_SCHEMA = "_xdm.context.profile"
FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED")
DEFAULT_URL = "http://127.0.0.1:8080"
CHUNK = 1024 * 1024

EXIT_JOB_NOT_SUCCEEDED = 1
EXIT_USAGE = 2
EXIT_API_ERROR = 3
EXIT_INTERRUPTED = 130

export_app = typer.Typer(
    help="Profile export jobs over the HTTP API: create and follow, list, get, cancel, download.",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)


# --------------------------------------------------------------------------------------------------
# The client


class ApiError(Exception):
    """A request that did not succeed: the server's `title` and `detail` (and bad fields), or why it failed."""

    def __init__(self, title: str, detail: str, *, status: int | None = None,
                 fields: list[dict[str, str]] | None = None, hint: str | None = None) -> None:
        super().__init__(f"{title}: {detail}")
        self.title = title
        self.detail = detail
        self.status = status
        self.fields = fields or []
        self.hint = hint

    @classmethod
    def from_response(cls, response: httpx.Response, hint: str | None = None) -> ApiError:
        """AEP's envelope `{title, detail, report}`, IMS's `{error, error_description}`, or the raw text."""
        try:
            body = response.json()
        except ValueError:
            body = None
        status = response.status_code
        if isinstance(body, dict):
            if "title" in body or "detail" in body:
                report = body.get("report") or {}
                fields = [e for e in report.get("errors", []) if isinstance(e, dict)] if isinstance(report, dict) \
                    else []
                return cls(str(body.get("title") or response.reason_phrase),
                           str(body.get("detail") or body.get("message") or ""), status=status, fields=fields,
                           hint=hint)
            if "error" in body:
                return cls(f"IMS {body['error']}", str(body.get("error_description") or ""), status=status,
                           hint=hint)
            if "error_code" in body or "message" in body:
                return cls(str(body.get("error_code") or response.reason_phrase), str(body.get("message") or ""),
                           status=status, hint=hint)
        text = response.text.strip()[:500] or response.reason_phrase
        return cls(response.reason_phrase or f"HTTP {status}", text, status=status, hint=hint)


@dataclass(frozen=True)
class Connection:
    """Where the platform is and who calls it: client credentials, or a token obtained elsewhere."""

    url: str = DEFAULT_URL
    org_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    sandbox: str = "prod"
    token: str | None = None

    def problems(self) -> list[str]:
        missing = []
        if not self.org_id:
            missing.append("--org-id (or OPENPROFILE_ORG_ID)")
        if not self.client_id:
            missing.append("--client-id (or OPENPROFILE_CLIENT_ID), sent as x-api-key")
        if not self.token and not self.client_secret:
            missing.append("--client-secret (or OPENPROFILE_CLIENT_SECRET), or --token (or OPENPROFILE_TOKEN)")
        return missing


class PlatformClient:
    """An httpx client for one (org, sandbox): every call carries the gateway headers; errors are `ApiError`."""

    def __init__(self, connection: Connection, *, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        missing = connection.problems()
        if missing:
            raise ApiError("Missing connection settings", "give " + "; ".join(missing))
        self.connection = connection
        self.base_url = connection.url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)
        token = connection.token or self._token()
        self.http.headers.update({
            "Authorization": f"Bearer {token}", "x-api-key": str(connection.client_id),
            "x-gw-ims-org-id": str(connection.org_id), "x-sandbox-name": connection.sandbox,
        })

    def __enter__(self) -> PlatformClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _send(self, method: str, path: str, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        try:
            request = self.http.build_request(method, path, **kwargs)
            return self.http.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            raise ApiError("Timed out", f"{method} {self.base_url}{path}: {exc or type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise ApiError("Cannot reach the server", f"{self.base_url}: {exc or type(exc).__name__}",
                           hint="is `openprofile serve` running there? (--url or OPENPROFILE_URL)") from None

    def _token(self) -> str:
        response = self._send("POST", "/ims/token/v3", data={
            "grant_type": "client_credentials", "client_id": self.connection.client_id,
            "client_secret": self.connection.client_secret, "scope": "openid,AdobeID"})
        if response.status_code != 200:
            error = ApiError.from_response(
                response, hint="check --client-id and --client-secret (OPENPROFILE_CLIENT_ID, "
                               "OPENPROFILE_CLIENT_SECRET); `openprofile credentials add` registers a client")
            error.title = f"Could not get a token ({error.title})"
            raise error
        try:
            return str(response.json()["access_token"])
        except (ValueError, KeyError, TypeError):
            raise ApiError("No token", f"{self.base_url}/ims/token/v3 answered without an access_token") from None

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request; its JSON body (None when empty), or `ApiError`."""
        response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError.from_response(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiError("Not JSON", f"{method} {path} answered {response.text[:200]!r}") from None

    # export jobs

    def create_job(self, body: dict[str, Any] | bytes) -> dict[str, Any]:
        if isinstance(body, bytes):  # sent exactly as given, so the server can point at a JSON mistake
            created = self.call("POST", JOBS, content=body, headers={"Content-Type": "application/json"})
        else:
            created = self.call("POST", JOBS, json=body)
        return dict(created)

    def get_job(self, job_id: str | int) -> dict[str, Any]:
        return dict(self.call("GET", f"{JOBS}/{quote(str(job_id), safe='')}"))

    def cancel_job(self, job_id: str | int) -> dict[str, Any]:
        return dict(self.call("DELETE", f"{JOBS}/{quote(str(job_id), safe='')}") or {})

    def job_pages(self, *, limit: int | None = None, status: str | None = None,
                  all_pages: bool = False) -> Iterator[dict[str, Any]]:
        """Pages of `GET /export/jobs`; with `all_pages`, following `link.next` to the end."""
        params: dict[str, Any] = {}
        if limit is not None:
            params["limit"] = limit
        if status:
            params["status"] = status
        page: dict[str, Any] = self.call("GET", JOBS, params=params)
        yield page
        while all_pages:
            link = str((page.get("link") or {}).get("next") or "")
            if not link:
                return
            page = self.call("GET", link if link.startswith("/data/") else f"/data/core/ups{link}")
            yield page

    # Data Access

    def batch_files(self, batch_id: str) -> list[dict[str, Any]]:
        """Every dataset file of a batch (`dataSetFileId`, `records`, `size`), page by page."""
        found: list[dict[str, Any]] = []
        start = 0
        while True:
            page = self.call("GET", f"{DATA_ACCESS}/batches/{quote(batch_id, safe='')}/files",
                             params={"start": start, "limit": 100})
            data = list(page.get("data") or [])
            found += data
            start += len(data)
            if not data or start >= int((page.get("_page") or {}).get("count") or 0):
                return found

    def count_files(self, batch_id: str) -> int:
        page = self.call("GET", f"{DATA_ACCESS}/batches/{quote(batch_id, safe='')}/files", params={"limit": 1})
        return int((page.get("_page") or {}).get("count") or 0)

    def file_entries(self, file_id: str) -> list[dict[str, Any]]:
        """The files (`name`, `length`) of one dataset file."""
        return list(self.call("GET", f"{DATA_ACCESS}/files/{quote(file_id, safe='')}").get("data") or [])

    def download(self, file_id: str, name: str, target: Path, progress: Progress | None = None) -> int:
        """Stream one file to `target` (through `target.part`, renamed when complete); the bytes written."""
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        response = self._send("GET", f"{DATA_ACCESS}/files/{quote(file_id, safe='')}", params={"path": name},
                              stream=True)
        try:
            if response.status_code >= 400:
                response.read()
                raise ApiError.from_response(response)
            expected = int(response.headers.get("Content-Length") or 0) or None
            task = progress.add_task(name, total=expected) if progress is not None else None
            written = 0
            try:
                with partial.open("wb") as handle:
                    for chunk in response.iter_bytes(CHUNK):
                        handle.write(chunk)
                        written += len(chunk)
                        if progress is not None and task is not None:
                            progress.update(task, completed=written)
            except httpx.TransportError as exc:
                partial.unlink(missing_ok=True)
                raise ApiError("Download interrupted", f"{name}: {exc}") from None
            if expected is not None and written != expected:
                partial.unlink(missing_ok=True)
                raise ApiError("Download incomplete", f"{name}: {written} of {expected} bytes")
            partial.replace(target)
            return written
        finally:
            response.close()


def batch_ids_of(job: dict[str, Any]) -> list[str]:
    """The batch the job writes, or one per segment with `segmentPerBatch`."""
    destination = job.get("destination") or {}
    if destination.get("batches"):
        return [str(b["batchId"]) for b in destination["batches"]]
    return [str(destination["batchId"])] if destination.get("batchId") else []


# --------------------------------------------------------------------------------------------------
# Following a job, and what it shows


def _ms(value: Any) -> str:
    if not isinstance(value, int | float) or value <= 0:
        return ""
    return datetime.fromtimestamp(value / 1000).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _seconds(metric: Any) -> str:
    if isinstance(metric, dict) and isinstance(metric.get("totalTimeInMs"), int | float):
        return f"{metric['totalTimeInMs'] / 1000:.2f} s"
    return ""


def _spaced(paths: str) -> str:
    """`a,b` as `a, b`, so that a narrow terminal wraps between field paths."""
    return ", ".join(p.strip() for p in paths.split(",") if p.strip())


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _status(status: str) -> str:
    colour = {"SUCCEEDED": "green", "FAILED": "red", "CANCELLED": "yellow", "CANCELLING": "yellow"}.get(status, "cyan")
    return f"[{colour}]{status}[/]"


def follow_job(client: PlatformClient, job: dict[str, Any], out: Console, *, poll: float = 0.5) -> dict[str, Any]:
    """Poll the job until it is SUCCEEDED, FAILED or CANCELLED, with a progress bar; the final job."""
    job_id = job["id"]
    progress = Progress(
        SpinnerColumn(finished_text="[green]✓[/]"),
        TextColumn("export job [bold]{task.fields[job]}[/] {task.fields[status]}"),
        BarColumn(),
        TextColumn("{task.fields[profiles]}"),
        TextColumn("{task.fields[files]}"),
        TimeElapsedColumn(),
        console=out,
    )
    with progress:
        task = progress.add_task("export", total=None, job=job_id, status=_status(str(job.get("status"))),
                                 profiles="", files="")
        files = 0
        while True:
            status = str(job.get("status"))
            metrics = job.get("metrics") or {}
            running = metrics.get("progress") or {}
            profiles = int(metrics.get("totalExportedProfileCounter", running.get("profilesWritten", 0)) or 0)
            if running:
                files = int(running.get("files", 0) or 0)
            if status == "SUCCEEDED":  # the finished job no longer carries its progress: count what it published
                files = sum(client.count_files(b) for b in batch_ids_of(job))
            progress.update(task, status=_status(status), profiles=_count(profiles, "profile") + " written",
                            files=_count(files, "file"))
            if status in FINISHED:
                progress.update(task, total=1, completed=1 if status == "SUCCEEDED" else 0)
                return job
            time.sleep(poll)
            job = client.get_job(job_id)


def print_summary(out: Console, job: dict[str, Any]) -> None:
    """What a finished (or running) job did: counts, metrics, batches, errors."""
    metrics = job.get("metrics") or {}
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("job", str(job.get("id")))
    table.add_row("status", _status(str(job.get("status"))))
    destination = job.get("destination") or {}
    table.add_row("destination dataset", str(destination.get("datasetId", "")))
    for batch in destination.get("batches") or []:
        table.add_row(f"batch (segment {batch.get('segmentId')})", str(batch.get("batchId")))
    if destination.get("batchId"):
        table.add_row("batch", str(destination["batchId"]))
    policy = job.get("mergePolicy") or {}
    table.add_row("merge policy", f"{policy.get('id', '')} v{policy.get('version', '')}")
    if job.get("fields"):
        table.add_row("fields", _spaced(str(job["fields"])))
    event_fields = ((job.get("additionalFields") or {}).get("eventList") or {}).get("fields")
    if event_fields:
        table.add_row("event fields", _spaced(str(event_fields)))
    segments = (job.get("filter") or {}).get("segments") or []
    if segments:
        table.add_row("segments", ", ".join(str(s.get("segmentId")) for s in segments))
    if "totalExportedProfileCounter" in metrics:
        table.add_row("profiles exported", f"{int(metrics['totalExportedProfileCounter']):,}")
    by_namespace = metrics.get("exportedProfileByNamespaceCounter") or {}
    if by_namespace:
        table.add_row("  by namespace", ", ".join(f"{k} {int(v):,}" for k, v in sorted(by_namespace.items())))
    running = metrics.get("progress") or {}
    if running and job.get("status") not in FINISHED:
        table.add_row("progress",
                      f"{int(running.get('profilesWritten', 0)):,} profiles, {running.get('files', 0)} files")
    for key, label in (("totalTime", "total time"), ("profileExportTime", "profile export time"),
                       ("aCPDatasetWriteTime", "dataset write time")):
        if _seconds(metrics.get(key)):
            table.add_row(label, _seconds(metrics[key]))
    table.add_row("created", _ms(job.get("creationTime")))
    table.add_row("updated", _ms(job.get("updateTime")))
    for error in job.get("errors") or []:
        table.add_row("[red]error[/]", f"{error.get('code', '')} {error.get('msg', '')}".strip())
    out.print(table)


def jobs_table(records: list[dict[str, Any]], title: str | None = None, *, compact: bool = False) -> Table:
    """Export jobs, one a row; `compact` leaves out the update time, the dataset and the merge policy."""
    table = Table(title=title)
    table.add_column("id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("created", no_wrap=compact)
    if not compact:
        table.add_column("updated")
        table.add_column("dataset", overflow="fold")
    table.add_column("batch", overflow="fold")
    if not compact:
        table.add_column("merge policy", overflow="fold")
    table.add_column("profiles", justify="right", no_wrap=True)
    for job in records:
        metrics = job.get("metrics") or {}
        if "totalExportedProfileCounter" in metrics:
            profiles = f"{int(metrics['totalExportedProfileCounter']):,}"
        elif metrics.get("progress"):
            profiles = f"{int(metrics['progress'].get('profilesWritten', 0)):,}…"
        else:
            profiles = ""
        policy = job.get("mergePolicy") or {}
        cells = [str(job.get("id")), _status(str(job.get("status"))), _ms(job.get("creationTime"))]
        if not compact:
            cells += [_ms(job.get("updateTime")), str((job.get("destination") or {}).get("datasetId", ""))]
        cells.append(", ".join(batch_ids_of(job)))
        if not compact:
            cells.append(f"{policy.get('id', '')} v{policy.get('version', '')}")
        table.add_row(*cells, profiles)
    return table


@dataclass
class Downloaded:
    batch_id: str
    file_id: str
    path: Path
    size: int
    records: int | None


@dataclass
class DownloadResult:
    files: list[Downloaded] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def download_job(client: PlatformClient, job: dict[str, Any], out_dir: Path, out: Console) -> DownloadResult:
    """Every file of the job's batch(es), through Data Access, into `out_dir/{batchId}/{name}`."""
    result = DownloadResult()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        console=out, transient=True)
    with progress:
        for batch_id in batch_ids_of(job):
            for entry in client.batch_files(batch_id):
                file_id = str(entry["dataSetFileId"])
                records = int(entry["records"]) if str(entry.get("records", "")).isdigit() else None
                for item in client.file_entries(file_id):
                    name = Path(str(item["name"])).name  # never a path outside out_dir
                    target = out_dir / batch_id / name
                    size = client.download(file_id, str(item["name"]), target, progress)
                    result.files.append(Downloaded(batch_id, file_id, target, size, records))
    return result


def downloads_table(result: DownloadResult) -> Table:
    table = Table("batch", "dataSetFileId", "file", title="downloaded")
    for column in table.columns:
        column.overflow = "fold"
    table.add_column("records", justify="right", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    for f in result.files:
        table.add_row(f.batch_id, f.file_id, str(f.path), f"{f.records:,}" if f.records is not None else "",
                      f"{f.size:,}")
    return table


# --------------------------------------------------------------------------------------------------
# Commands

_CONN = "Connection"
Url = Annotated[str, typer.Option("--url", envvar="OPENPROFILE_URL", help="The openprofile server.",
                                  rich_help_panel=_CONN)]
OrgId = Annotated[str | None, typer.Option("--org-id", envvar="OPENPROFILE_ORG_ID", help="IMS org, x-gw-ims-org-id.",
                                           rich_help_panel=_CONN)]
ClientId = Annotated[str | None, typer.Option("--client-id", envvar="OPENPROFILE_CLIENT_ID",
                                              help="Client id, sent as x-api-key.", rich_help_panel=_CONN)]
ClientSecret = Annotated[str | None, typer.Option("--client-secret", envvar="OPENPROFILE_CLIENT_SECRET",
                                                  help="Client secret, to get a token from /ims/token/v3.",
                                                  rich_help_panel=_CONN)]
Sandbox = Annotated[str, typer.Option("--sandbox", envvar="OPENPROFILE_SANDBOX", help="Sandbox, x-sandbox-name.",
                                      rich_help_panel=_CONN)]
Token = Annotated[str | None, typer.Option("--token", envvar="OPENPROFILE_TOKEN",
                                           help="A bearer token to use instead of the client secret.",
                                           rich_help_panel=_CONN)]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _fail(error: ApiError) -> typer.Exit:
    status = f" ({error.status})" if error.status else ""
    err_console.print(f"[bold red]Error{status}:[/] [bold]{error.title}[/]" + (f": {error.detail}" if error.detail
                                                                               else ""), highlight=False)
    for bad in error.fields:
        err_console.print(f"  {bad.get('path', '')}: {bad.get('message', '')}", highlight=False)
    if error.hint:
        err_console.print(f"  [dim]{error.hint}[/]", highlight=False)
    return typer.Exit(EXIT_API_ERROR)


def _client(url: str, org_id: str | None, client_id: str | None, client_secret: str | None, sandbox: str,
            token: str | None) -> PlatformClient:
    try:
        return PlatformClient(Connection(url=url, org_id=org_id, client_id=client_id, client_secret=client_secret,
                                         sandbox=sandbox, token=token))
    except ApiError as exc:
        raise _fail(exc) from None


def _joined(values: list[str] | None) -> str | None:
    parts = [p.strip() for v in values or [] for p in v.split(",") if p.strip()]
    return ",".join(parts) if parts else None


def build_body(dataset_id: str, *, fields: str | None = None, merge_policy: str | None = None,
               merge_policy_version: int | None = None, event_fields: str | None = None,
               segments: list[str] | None = None, segment_per_batch: bool = False) -> dict[str, Any]:
    """The `POST /export/jobs` body the options describe."""
    body: dict[str, Any] = {"destination": {"datasetId": dataset_id}, "schema": {"name": PROFILE_SCHEMA}}
    if segment_per_batch:
        body["destination"]["segmentPerBatch"] = True
    if fields:
        body["fields"] = fields
    if merge_policy or merge_policy_version is not None:
        policy: dict[str, Any] = {}
        if merge_policy:
            policy["id"] = merge_policy
        if merge_policy_version is not None:
            policy["version"] = merge_policy_version
        body["mergePolicy"] = policy
    if event_fields is not None:
        body["additionalFields"] = {"eventList": {"fields": event_fields}}
    if segments:
        body["filter"] = {"segments": [{"segmentId": s, "segmentNs": "ups", "status": ["realized", "existing"]}
                                       for s in segments]}
    return body


@export_app.command("create")
def create(
    dataset_id: Annotated[str | None, typer.Option("--dataset-id", help="Destination dataset (on the profile union "
                                                   "schema).")] = None,
    fields: Annotated[list[str] | None, typer.Option("--fields", help="Profile fields to export, comma-separated "
                                                     "(repeatable); all when absent.")] = None,
    merge_policy: Annotated[str | None, typer.Option("--merge-policy", help="Merge policy id; the sandbox default "
                                                     "when absent.")] = None,
    merge_policy_version: Annotated[int | None, typer.Option("--merge-policy-version", min=1)] = None,
    event_fields: Annotated[list[str] | None, typer.Option("--event-fields", help="Export each profile's events "
                                                           "with these fields (timeSeriesEvents).")] = None,
    segment: Annotated[list[str] | None, typer.Option("--segment", help="Only profiles in this segment "
                                                      "(repeatable).")] = None,
    segment_per_batch: Annotated[bool, typer.Option("--segment-per-batch", help="One batch per segment.")] = False,
    body: Annotated[Path | None, typer.Option("--body", help="A JSON request body, sent as-is ('-': stdin).")] = None,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Follow the job until it finishes.")] = True,
    poll: Annotated[float, typer.Option("--poll", min=0.05, help="Seconds between status checks.")] = 0.5,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL, org_id: OrgId = None, client_id: ClientId = None, client_secret: ClientSecret = None,
    sandbox: Sandbox = "prod", token: Token = None,
) -> None:
    """Create an export job and (by default) follow it to SUCCEEDED, FAILED or CANCELLED."""
    payload: dict[str, Any] | bytes
    if body is not None:
        given = [name for name, value in (("--dataset-id", dataset_id), ("--fields", fields),
                                          ("--merge-policy", merge_policy),
                                          ("--merge-policy-version", merge_policy_version),
                                          ("--event-fields", event_fields), ("--segment", segment),
                                          ("--segment-per-batch", segment_per_batch or None)) if value is not None]
        if given:
            err_console.print(f"[red]--body is sent as-is; put {', '.join(given)} in the file instead.[/]")
            raise typer.Exit(EXIT_USAGE)
        try:
            payload = sys.stdin.buffer.read() if str(body) == "-" else body.read_bytes()
        except OSError as exc:
            err_console.print(f"[red]Cannot read {body}: {exc.strerror}[/]")
            raise typer.Exit(EXIT_USAGE) from None
    elif dataset_id is None:
        err_console.print("[red]Give --dataset-id (a dataset on the profile union schema) or --body FILE.json.[/]")
        raise typer.Exit(EXIT_USAGE)
    else:
        payload = build_body(dataset_id, fields=_joined(fields), merge_policy=merge_policy,
                             merge_policy_version=merge_policy_version,
                             event_fields=_joined(event_fields) if event_fields is not None else None,
                             segments=segment, segment_per_batch=segment_per_batch)
    out = err_console if as_json else console
    with _client(url, org_id, client_id, client_secret, sandbox, token) as client:
        try:
            job = client.create_job(payload)
            out.print(f"created export job [bold]{job['id']}[/] ({job.get('status')}), writing batch "
                      f"{', '.join(batch_ids_of(job))} of dataset {(job.get('destination') or {}).get('datasetId')}",
                      highlight=False)
            if not follow:
                if as_json:
                    typer.echo(json.dumps(job, indent=2))
                else:
                    out.print(f"follow it with `openprofile export get {job['id']}`")
                return
            try:
                job = follow_job(client, job, out, poll=poll)
            except KeyboardInterrupt:
                err_console.print(f"\n[yellow]Stopped following; export job {job['id']} goes on. "
                                  f"`openprofile export cancel {job['id']}` cancels it.[/]")
                raise typer.Exit(EXIT_INTERRUPTED) from None
        except ApiError as exc:
            raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(job, indent=2))
    else:
        print_summary(out, job)
    if job.get("status") != "SUCCEEDED":
        raise typer.Exit(EXIT_JOB_NOT_SUCCEEDED)


@export_app.command("list")
def list_jobs(
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Jobs per page.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="NEW, PROCESSING, SUCCEEDED, FAILED, CANCELLING or "
                                               "CANCELLED.")] = None,
    all_pages: Annotated[bool, typer.Option("--all", help="Every page (follows link.next).")] = False,
    as_json: AsJson = False,
    url: Url = DEFAULT_URL, org_id: OrgId = None, client_id: ClientId = None, client_secret: ClientSecret = None,
    sandbox: Sandbox = "prod", token: Token = None,
) -> None:
    """List export jobs, newest first."""
    records: list[dict[str, Any]] = []
    more = False
    with _client(url, org_id, client_id, client_secret, sandbox, token) as client:
        try:
            for page in client.job_pages(limit=limit, status=status, all_pages=all_pages):
                records += list(page.get("records") or [])
                more = bool((page.get("link") or {}).get("next"))
        except ApiError as exc:
            raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    console.print(jobs_table(records))
    console.print(f"{len(records)} export job{'s' if len(records) != 1 else ''}"
                  + ("; more with --all" if more and not all_pages else ""))


@export_app.command("get")
def get(
    job_id: Annotated[str, typer.Argument(help="The export job id.")],
    as_json: AsJson = False,
    url: Url = DEFAULT_URL, org_id: OrgId = None, client_id: ClientId = None, client_secret: ClientSecret = None,
    sandbox: Sandbox = "prod", token: Token = None,
) -> None:
    """Show one export job: status, metrics, batches, errors."""
    with _client(url, org_id, client_id, client_secret, sandbox, token) as client:
        try:
            job = client.get_job(job_id)
        except ApiError as exc:
            raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(job, indent=2))
    else:
        print_summary(console, job)


@export_app.command("cancel")
def cancel(
    job_id: Annotated[str, typer.Argument(help="The export job id.")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the job is CANCELLED (or finished).")] = False,
    url: Url = DEFAULT_URL, org_id: OrgId = None, client_id: ClientId = None, client_secret: ClientSecret = None,
    sandbox: Sandbox = "prod", token: Token = None,
) -> None:
    """Cancel an unfinished export job; on a finished one, delete the job record (its batch stays)."""
    with _client(url, org_id, client_id, client_secret, sandbox, token) as client:
        try:
            answer = client.cancel_job(job_id)
            console.print(f"export job [bold]{job_id}[/]: {answer.get('message', 'cancelled')}", highlight=False)
            try:
                job = client.get_job(job_id)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                console.print("it had finished: its record is deleted (its exported batch stays in the dataset)")
                return
            if wait and job.get("status") not in FINISHED:
                job = follow_job(client, job, console)
            console.print(f"status: {_status(str(job.get('status')))}")
        except ApiError as exc:
            raise _fail(exc) from None


@export_app.command("download")
def download(
    job_id: Annotated[str, typer.Argument(help="The export job id.")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write into (as {batchId}/{file name}).")],
    url: Url = DEFAULT_URL, org_id: OrgId = None, client_id: ClientId = None, client_secret: ClientSecret = None,
    sandbox: Sandbox = "prod", token: Token = None,
) -> None:
    """Download every file of a finished job's batch(es) through Data Access."""
    with _client(url, org_id, client_id, client_secret, sandbox, token) as client:
        try:
            job = client.get_job(job_id)
            if job.get("status") != "SUCCEEDED":
                err_console.print(f"[red]Export job {job_id} is {job.get('status')}: only a SUCCEEDED job has files "
                                  "to download.[/]")
                raise typer.Exit(EXIT_JOB_NOT_SUCCEEDED)
            started = time.perf_counter()
            result = download_job(client, job, out, console)
        except ApiError as exc:
            raise _fail(exc) from None
    console.print(downloads_table(result))
    seconds = time.perf_counter() - started
    console.print(f"{len(result.files)} file{'s' if len(result.files) != 1 else ''}, {result.total_bytes:,} bytes "
                  f"in {seconds:.2f} s under {out}", highlight=False)
