#!/usr/bin/env python3
"""Fan-out with Carbon Black's own SDK (cbapi), the alternative to edrgate a user would pick.

Runs one job per sensor through cbapi's job scheduler (`cb.live_response.submit_job`, which
uses at most 10 worker threads, each holding one live-response session), the job being the
same work as the edrgate benchmark: `process list`, then `get file C:\\evidence\\big.bin`.
Prints one JSON object on stdout:

    {"makespan_s": ..., "ok": N, "errors": N, "error_samples": [...], "bytes": N,
     "first_done_s": ..., "peak_rss_kib": ..., "cpu_s": ...}

`makespan_s` is measured from the first `submit_job` to the last future resolved.
Normally started by `cargo bench --bench fanout` (benches/fanout.rs) against its simulator;
standalone:

    python3 deploy/bench/cbapi_fanout.py --url https://127.0.0.1:PORT --token TOKEN --sensors 200

cbapi is not a dependency of the project: `pip install cbapi==2.0.0` first.
"""

import argparse
import concurrent.futures
import json
import logging
import resource
import sys
import time
import warnings


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="https://host:port of the CB server (cbapi refuses http)")
    p.add_argument("--token", required=True)
    p.add_argument("--sensors", type=int, default=200, help="sensor ids 1..N get one job each")
    p.add_argument("--path", default="C:\\evidence\\big.bin")
    p.add_argument("--timeout", type=float, default=3600, help="give up waiting after this many seconds")
    args = p.parse_args()

    warnings.filterwarnings("ignore")  # urllib3 InsecureRequestWarning on every request
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    try:
        from cbapi.response import CbResponseAPI
    except ImportError as e:
        print(json.dumps({"error": f"cbapi is not installed: {e}"}))
        return 2

    cb = CbResponseAPI(url=args.url, token=args.token, ssl_verify=False)
    path = args.path

    def job(session):
        processes = session.list_processes()
        data = session.get_file(path)
        return len(processes), len(data)

    lr = cb.live_response  # GET /api/info (cblrEnabled), outside the timed part
    cpu0 = time.process_time()
    t0 = time.monotonic()
    futures = {lr.submit_job(job, sensor_id): sensor_id for sensor_id in range(1, args.sensors + 1)}
    ok = errors = total_bytes = 0
    samples = []
    first_done = None
    done_at = []
    try:
        for f in concurrent.futures.as_completed(futures, timeout=args.timeout):
            now = time.monotonic() - t0
            first_done = now if first_done is None else first_done
            done_at.append(round(now, 3))
            try:
                nproc, nbytes = f.result()
                if nproc > 0 and nbytes > 0:
                    ok += 1
                    total_bytes += nbytes
                else:
                    errors += 1
            except Exception as e:  # noqa: BLE001 -- reported, not raised
                errors += 1
                if len(samples) < 5:
                    samples.append(f"sensor {futures[f]}: {type(e).__name__}: {e}")
    except concurrent.futures.TimeoutError:
        samples.append(f"gave up after {args.timeout} s")
    makespan = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    out = {
        "makespan_s": round(makespan, 3),
        "first_done_s": first_done,
        "ok": ok,
        "errors": errors,
        "unfinished": args.sensors - ok - errors,
        "error_samples": samples,
        "bytes": total_bytes,
        "done_at_s": done_at,
        # Linux: ru_maxrss is in KiB.
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "cpu_s": round(cpu, 3),
    }
    print(json.dumps(out))
    sys.stdout.flush()
    return 0 if errors == 0 and ok == args.sensors else 1


if __name__ == "__main__":
    # The scheduler and worker threads are daemons: exit without waiting for idle workers.
    code = main()
    sys.exit(code)
