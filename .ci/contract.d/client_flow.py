"""A short flow with the Python client generated from edrgate's OpenAPI document
(openapi-python-client), against `edrgate demo`: submit a process list and a file fetch to
WIN-0001, follow the submission's `Location` (the asynchronous 202 pattern) to the finished
action, read the typed results, download the fetched file and check its digest.

Usage: python client_flow.py BASE_URL TOKEN (with the generated package on sys.path).
"""

import hashlib
import sys
import time

from edrgate_client import AuthenticatedClient
from edrgate_client.api.actions import get_action_status, submit_action
from edrgate_client.api.files import download_file
from edrgate_client.models import Action, ActionProgress, ActionRequest, Status


def main(base_url: str, token: str) -> None:
    client = AuthenticatedClient(base_url=base_url, token=token, raise_on_unexpected_status=True)
    request = ActionRequest.from_dict(
        {
            "targets": [{"hostname": "WIN-0001"}],
            "commands": [
                {"type": "process_list"},
                {"type": "get_file", "path": "C:\\evidence\\note.txt"},
            ],
            "comment": "contract check",
        }
    )
    submitted = submit_action.sync_detailed(client=client, body=request)
    assert submitted.status_code == 202, submitted
    assert isinstance(submitted.parsed, Action), submitted.parsed
    action_id = submitted.parsed.id
    location = submitted.headers["location"]
    assert location == f"{base_url}/v1/actions/{action_id}/status", location
    assert int(submitted.headers["retry-after"]) > 0

    deadline = time.monotonic() + 90
    while True:
        polled = get_action_status.sync_detailed(action_id, client=client)
        if polled.status_code == 200:
            break
        assert polled.status_code == 202, polled
        assert isinstance(polled.parsed, ActionProgress), polled.parsed
        assert polled.headers["location"] == location
        assert int(polled.headers["retry-after"]) == polled.parsed.retry_after_seconds
        assert time.monotonic() < deadline, "the action did not finish in 90 s"
        # Retry-After says 5 s; the demo's simulators are quicker than that.
        time.sleep(0.5)
    action = polled.parsed
    assert isinstance(action, Action), action
    assert action.status == Status.SUCCEEDED, action.to_dict()

    (run,) = action.runs
    listing, fetched = run.commands
    processes = listing.result.processes
    assert processes and all(p.pid >= 0 and p.name for p in processes), listing.to_dict()
    ref = fetched.result.file
    content = download_file.sync_detailed(ref.file_id, client=client)
    assert content.status_code == 200, content
    body = content.content
    assert len(body) == ref.size and hashlib.sha256(body).hexdigest() == ref.sha256
    print(f"client flow: action {action_id} succeeded; {len(processes)} processes, {ref.name} ({ref.size} bytes) verified")


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"), sys.argv[2])
