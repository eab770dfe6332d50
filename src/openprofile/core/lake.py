"""The lake: Parquet under `{root}/{org}/{sandbox}/{datasetId}/{batchId}/`, published by rename.

Writers fill a private staging directory and `publish` moves it into place in one rename, so a
reader (or a crash) never sees half a batch. Uploads for ingestion wait in their own area.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from openprofile.core.tenancy import Tenant


class Lake:
    def __init__(self, root: Path, staging: Path, uploads: Path) -> None:
        self.root = root
        self.staging = staging
        self.uploads = uploads

    def batch_dir(self, tenant: Tenant, dataset_id: str, batch_id: str) -> Path:
        return self.root / tenant.org_id / tenant.sandbox_name / dataset_id / batch_id

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def resolve(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"path escapes the lake: {relative}")
        return path

    def staging_dir(self, batch_id: str) -> Path:
        """A fresh, empty staging directory for a batch (what an earlier attempt left is removed)."""
        path = self.staging / batch_id
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def discard_staging(self, batch_id: str) -> None:
        shutil.rmtree(self.staging / batch_id, ignore_errors=True)

    def publish(self, staged: Path, tenant: Tenant, dataset_id: str, batch_id: str) -> Path:
        """Move a complete staged batch into the lake in one rename; re-publishing replaces it."""
        target = self.batch_dir(tenant, dataset_id, batch_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
        return target

    def remove_batch(self, tenant: Tenant, dataset_id: str, batch_id: str) -> None:
        shutil.rmtree(self.batch_dir(tenant, dataset_id, batch_id), ignore_errors=True)

    def remove_dataset(self, tenant: Tenant, dataset_id: str) -> None:
        shutil.rmtree(self.root / tenant.org_id / tenant.sandbox_name / dataset_id, ignore_errors=True)

    def upload_dir(self, batch_id: str) -> Path:
        return self.uploads / batch_id

    def discard_uploads(self, batch_id: str) -> None:
        shutil.rmtree(self.uploads / batch_id, ignore_errors=True)
