#!/usr/bin/env python3
"""Fan-out with CrowdStrike's own SDK (FalconPy), the alternative to edrgate a SOC would pick.

The batch flow of CrowdStrike's RTR samples, with FalconPy's `RealTimeResponse` service class
unchanged but for `base_url`: `batch_init_sessions` over all the hosts, `batch_command` `ps`,
`batch_get_command` of the file, then `batch_get_command_status` polled until every host's
upload is there, and per host `get_extracted_file_contents` (a 7z), opened with py7zr and the
password `infected`, its one entry checked against the expected SHA-256. A 429 is waited out
(`X-Ratelimit-Retryafter`, an epoch second) and the call repeated, as a careful script does.
Prints one JSON object on stdout:

    {"makespan_s": ..., "ok": N, "failures": N, "failure_samples": [...], "calls": N,
     "retried_429": N, "phases_s": {...}, "peak_rss_kib": ..., "cpu_s": ...}

`makespan_s` runs from `batch_init_sessions` to the last file checked (the OAuth2 token and the
host ids are taken before it: the edrgate run gets its ids the same way, outside the timing).
Normally started by `cargo bench --bench fanout_crowdstrike` (benches/fanout_crowdstrike.rs)
against a fresh simulator; standalone:

    python deploy/bench/falconpy_fanout.py --url https://127.0.0.1:PORT --ca sim.pem \\
        --client-id edrgate-sim-admin --client-secret edrgate-sim-secret \\
        --aids-file aids.txt --path 'C:\\evidence\\note.txt' --sha256 HEX

FalconPy is not a dependency of the project: `.ci/sdk-venv` makes a venv with
crowdstrike-falconpy 1.6.6 and py7zr.
"""

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import time


def peak_rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="https://host:port of the Falcon API")
    p.add_argument("--ca", required=True, help="PEM of the server's CA (REQUESTS_CA_BUNDLE)")
    p.add_argument("--client-id", required=True)
    p.add_argument("--client-secret", required=True)
    p.add_argument("--aids-file", required=True, help="one device id (aid) per line")
    p.add_argument("--path", required=True, help="the file to get from every host")
    p.add_argument("--sha256", required=True, help="the expected SHA-256 of that file")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between batch_get_command_status polls")
    p.add_argument("--timeout", type=int, default=30, help="RTR timeout of the batch calls, s")
    p.add_argument("--deadline", type=float, default=600, help="give up after this many seconds")
    args = p.parse_args()

    # FalconPy's `ssl_verify` is a bool (a CA path is ignored); requests trusts a private CA
    # through REQUESTS_CA_BUNDLE, as a deployment behind a TLS-inspecting proxy would set it.
    os.environ["REQUESTS_CA_BUNDLE"] = args.ca
    try:
        import py7zr
        from falconpy import OAuth2, RealTimeResponse
    except ImportError as e:
        print(json.dumps({"error": f"falconpy or py7zr is not installed: {e}"}))
        return 2

    with open(args.aids_file) as f:
        aids = [line.strip() for line in f if line.strip()]
    auth = OAuth2(client_id=args.client_id, client_secret=args.client_secret, base_url=args.url)
    rtr = RealTimeResponse(auth_object=auth)
    if not auth.token()["status_code"] == 201:
        print(json.dumps({"error": "no token"}))
        return 2

    calls = retried = 0

    def call(fn, **kw):
        """One SDK call, repeated after a 429 once the vendor's retry time has passed."""
        nonlocal calls, retried
        while True:
            calls += 1
            r = fn(**kw)
            if isinstance(r, dict) and r.get("status_code") == 429:
                retried += 1
                headers = r.get("headers") or {}
                at = float(headers.get("X-Ratelimit-Retryafter", time.time() + 1))
                time.sleep(max(0.05, at - time.time()))
                continue
            return r

    def body(r, status=(200, 201)):
        if not isinstance(r, dict) or r.get("status_code") not in status:
            raise RuntimeError(f"unexpected answer: {str(r)[:300]}")
        return r["body"]

    failures = {}
    phases = {}
    cpu0 = time.process_time()
    t0 = time.monotonic()

    init = body(call(rtr.batch_init_sessions, host_ids=aids, queue_offline=False, timeout=args.timeout))
    batch_id = init["batch_id"]
    sessions = {}
    for aid in aids:
        res = init["resources"].get(aid) or {}
        if res.get("session_id") and not res.get("errors"):
            sessions[aid] = res["session_id"]
        else:
            failures[aid] = f"init: {res.get('errors')}"
    phases["init_s"] = round(time.monotonic() - t0, 3)

    ps = body(call(rtr.batch_command, batch_id=batch_id, base_command="ps", command_string="ps",
                   timeout=args.timeout))["combined"]["resources"]
    for aid in sessions:
        res = ps.get(aid) or {}
        if not (res.get("complete") and res.get("stdout") and not res.get("stderr")):
            failures.setdefault(aid, f"ps: {str(res)[:200]}")
    phases["ps_s"] = round(time.monotonic() - t0, 3)

    get = body(call(rtr.batch_get_command, batch_id=batch_id, file_path=args.path, timeout=args.timeout))
    req_id = get["batch_get_cmd_req_id"]
    for aid in sessions:
        res = get["combined"]["resources"].get(aid) or {}
        if res.get("errors") or res.get("stderr"):
            failures.setdefault(aid, f"get: {str(res)[:200]}")
    phases["get_s"] = round(time.monotonic() - t0, 3)

    wanted = {aid for aid in sessions if aid not in failures}
    uploaded = {}
    polls = 0
    while True:
        polls += 1
        status = body(call(rtr.batch_get_command_status, batch_get_cmd_req_id=req_id, timeout=args.timeout))
        for aid, res in (status.get("resources") or {}).items():
            if aid in wanted and res.get("sha256"):
                uploaded[aid] = res
        if wanted <= uploaded.keys() or time.monotonic() - t0 > args.deadline:
            break
        time.sleep(args.poll)
    phases["uploaded_s"] = round(time.monotonic() - t0, 3)
    for aid in wanted - uploaded.keys():
        failures.setdefault(aid, "the upload never completed")

    ok = 0
    for aid, res in uploaded.items():
        try:
            name = res["name"].replace("\\", "/").rsplit("/", 1)[-1] or res["sha256"]
            archive = call(rtr.get_extracted_file_contents, session_id=res["session_id"],
                           sha256=res["sha256"], filename=name)
            if not isinstance(archive, bytes):
                raise RuntimeError(f"no archive: {str(archive)[:200]}")
            with tempfile.TemporaryDirectory() as out:
                with py7zr.SevenZipFile(io.BytesIO(archive), password="infected") as z:
                    names = z.getnames()
                    z.extractall(path=out)
                if len(names) != 1:
                    raise RuntimeError(f"archive entries: {names}")
                with open(os.path.join(out, names[0]), "rb") as f:
                    content = f.read()
            if hashlib.sha256(content).hexdigest() != args.sha256:
                raise RuntimeError("sha256 mismatch")
            ok += 1
        except Exception as e:  # noqa: BLE001 -- reported, not raised
            failures.setdefault(aid, f"download: {type(e).__name__}: {e}")
    makespan = time.monotonic() - t0
    phases["downloaded_s"] = round(makespan, 3)
    out = {
        "makespan_s": round(makespan, 3),
        "hosts": len(aids),
        "ok": ok,
        "failures": len(failures),
        "failure_samples": [f"{a}: {m}" for a, m in list(failures.items())[:5]],
        "calls": calls,
        "status_polls": polls,
        "retried_429": retried,
        "phases_s": phases,
        # VmHWM, not ru_maxrss: after fork + exec Linux keeps the parent's peak in ru_maxrss.
        "peak_rss_kib": peak_rss_kib(),
        "cpu_s": round(time.process_time() - cpu0, 3),
    }
    print(json.dumps(out))
    sys.stdout.flush()
    return 0 if not failures and ok == len(aids) else 1


if __name__ == "__main__":
    sys.exit(main())
