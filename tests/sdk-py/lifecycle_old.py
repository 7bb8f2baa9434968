"""Run by an older `daytona` SDK (its own venv; see tests/test_controlplane_sdk_old.py):
unchanged user code through the front door, one JSON line of what it observed."""

import json
import os

from daytona import (
    CreateSandboxFromSnapshotParams,
    Daytona,
    DaytonaConfig,
    DaytonaNotFoundError,
    ListSandboxesQuery,
)

out: dict[str, object] = {}
daytona = Daytona(DaytonaConfig(api_url=os.environ["DAYTONA_API_URL"], api_key=os.environ["DAYTONA_API_KEY"]))
sandbox = daytona.create(CreateSandboxFromSnapshotParams(language="python", labels={"suite": "old-sdk"}))
try:
    out["id"] = sandbox.id
    out["created_state"] = str(getattr(sandbox.state, "value", sandbox.state))
    out["code_run"] = sandbox.process.code_run("print(6 * 7)").result
    out["found"] = daytona.get(sandbox.id).id
    out["listed"] = [s.id for s in daytona.list(ListSandboxesQuery(labels={"suite": "old-sdk"}))]
    sandbox.stop()
    out["stopped_state"] = str(getattr(sandbox.state, "value", sandbox.state))
    sandbox.start()
    out["started_state"] = str(getattr(sandbox.state, "value", sandbox.state))
    out["after_restart"] = sandbox.process.exec("echo again").result
finally:
    daytona.delete(sandbox)
try:
    daytona.get(str(out["id"]))
    out["after_delete"] = "still found"
except DaytonaNotFoundError:
    out["after_delete"] = "DaytonaNotFoundError"
print(json.dumps(out))
