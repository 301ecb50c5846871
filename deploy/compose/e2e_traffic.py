#!/usr/bin/env python3
"""Traffic and referee for scripts/compose-e2e.sh (standard library only).

Sends chat requests through the load balancer at a rate above the simulator's quota for
--duration seconds, kills one gateway container at --kill-at, and checks from the
simulator's GET /stats that:
  * no request was refused upstream (every refusal reason is 0, every peak <= its limit);
  * the requests accepted during the run are >= --min-utilization of what the request
    limits allowed over the run's whole windows;
  * no request failed except some of those in flight on the killed gateway (<= 1%);
  * after the kill the surviving gateways kept serving (client 200s, and the simulator's
    acceptance after the kill >= --min-utilization-after-kill of the quota's rate);
  * every surviving gateway served part of the traffic (its own /metrics).
Prints one summary block; exits 1 when a check fails.
"""

import os
import argparse
import http.client
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter

BODY = json.dumps({
    "model": "qwen3-max",
    "messages": [{"role": "user", "content": "Hello, world!"}],
    "max_tokens": 5,
}).encode()


def get_json(url, method="GET"):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def requests_limits(stats):
    """(account, limit, window_ms, accepted) for every account x model's request limits."""
    out = []
    for acct, a in stats["accounts"].items():
        for _model, m in a["models"].items():
            for lim in m["limits"]:
                if lim["unit"] == "requests":
                    out.append((acct, lim["limit"], lim["window_ms"], m["accepted"]))
    return out


def refusals(stats):
    total = Counter()
    peaks = []
    for acct, a in stats["accounts"].items():
        for model, m in a["models"].items():
            for reason, n in m["refused"].items():
                total[reason] += n
            for lim in m["limits"]:
                peaks.append((acct, model, lim["unit"], lim["peak"], lim["limit"]))
    return total, peaks


class Driver:
    def __init__(self, host, port, timeout):
        self.host, self.port, self.timeout = host, port, timeout
        self.lock = threading.Lock()
        self.results = []  # (sent, done, status or error text)

    def one(self, sem):
        sent = time.monotonic()
        c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            c.request("POST", "/v1/chat/completions", BODY, {
                "Content-Type": "application/json",
                "Authorization": "Bearer e2e",
            })
            r = c.getresponse()
            r.read()
            outcome = r.status
        except Exception as e:  # noqa: BLE001 - every failure is an outcome to count
            outcome = type(e).__name__
        finally:
            c.close()
        done = time.monotonic()
        with self.lock:
            self.results.append((sent, done, outcome))
        sem.release()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--lb-port", type=int, required=True)
    p.add_argument("--sim-port", type=int, required=True)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--rate", type=float, default=0, help="requests/s; 0 = 3x the quota")
    p.add_argument("--max-in-flight", type=int, default=200)
    p.add_argument("--kill-at", type=float, default=24)
    p.add_argument("--kill-container", default="")
    p.add_argument("--admin-key", default=os.environ.get("SLUICE_ADMIN_KEY", "sluice-demo-admin-key"),
                   help="the admin key /metrics answers off loopback")
    p.add_argument("--gateway-metrics", nargs="*", default=[],
                   help="containers whose /metrics must show served requests")
    p.add_argument("--min-utilization", type=float, default=0.95)
    p.add_argument("--min-utilization-after-kill", type=float, default=0.85)
    a = p.parse_args()
    sim = f"http://127.0.0.1:{a.sim_port}"

    get_json(f"{sim}/admin/reset", "POST")  # every quota full, every counter zero
    limits = requests_limits(get_json(f"{sim}/stats"))
    if not limits:
        # Accounts appear in /stats on first use; the demo accounts are configured, so
        # they are there from the start.
        print("FAIL: the simulator reports no account", file=sys.stderr)
        return 1
    quota_rps = sum(limit / (window / 1000) for _, limit, window, _ in limits)
    rate = a.rate or 3 * quota_rps

    d = Driver("127.0.0.1", a.lb_port, timeout=120)
    sem = threading.Semaphore(a.max_in_flight)
    t0 = time.monotonic()
    killed_at = None
    kill_snapshot = None
    blocked = 0
    n = 0
    while True:
        now = time.monotonic() - t0
        if now >= a.duration:
            break
        if a.kill_container and killed_at is None and now >= a.kill_at:
            kill_snapshot = get_json(f"{sim}/stats")
            # The container dies before `docker kill` returns: the kill starts here.
            killed_at = time.monotonic() - t0
            subprocess.run(["docker", "kill", a.kill_container], check=True,
                           stdout=subprocess.DEVNULL)
            print(f"killed {a.kill_container[:12]} at t={killed_at:.1f}s", flush=True)
        target = t0 + n / rate
        if target > time.monotonic():
            time.sleep(min(target - time.monotonic(), 0.05))
            continue
        if not sem.acquire(blocking=False):
            blocked += 1
            sem.acquire()
        threading.Thread(target=d.one, args=(sem,), daemon=True).start()
        n += 1
    run_end = time.monotonic() - t0
    snapshot = get_json(f"{sim}/stats")  # what the run's whole windows admitted
    # Let the queued requests finish (each waits at most max_wait in a gateway).
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with d.lock:
            if len(d.results) >= n:
                break
        time.sleep(0.2)
    final = get_json(f"{sim}/stats")

    failures = []
    outcomes = Counter(r[2] for r in d.results)
    # 1. Nothing refused upstream.
    refused, peaks = refusals(final)
    if sum(refused.values()):
        failures.append(f"upstream refusals: {dict(refused)}")
    over = [pk for pk in peaks if pk[3] > pk[4]]
    if over:
        failures.append(f"peaks above limits: {over}")
    # 2. Utilization over the run's whole windows.
    allowed = accepted = 0
    for acct, limit, window, acc in requests_limits(snapshot):
        allowed += limit * int(run_end * 1000 // window)
        accepted += acc
    util = accepted / allowed if allowed else 0.0
    if util < a.min_utilization:
        failures.append(f"utilization {util:.3f} < {a.min_utilization}")
    # 3. Serving went on after the kill.
    after = {}
    if killed_at is not None:
        ok_after = sum(1 for s, _, o in d.results if o == 200 and s >= killed_at + t0 + 2)
        acc_kill = sum(x[3] for x in requests_limits(kill_snapshot))
        span = run_end - killed_at
        # A span that is not a whole number of windows: compare with the quota's rate.
        util_after = (accepted - acc_kill) / (quota_rps * span) if span > 0 else 0.0
        after = {"ok_sent_after_kill_plus_2s": ok_after, "utilization_after_kill": round(util_after, 3),
                 "span_after_kill_s": round(span, 1)}
        if ok_after == 0:
            failures.append("no request succeeded after the kill")
        # Only requests in flight on the killed gateway may fail (HAProxy sends requests
        # that got no byte of answer to another gateway; one the kernel reset cannot be).
        kill_t = t0 + killed_at
        stray = [(round(s - t0, 1), o) for s, e, o in d.results
                 if o not in (200, 429) and not (s <= kill_t + 2 and e >= kill_t)]
        failed_at_kill = sum(1 for s, e, o in d.results
                             if o not in (200, 429) and s <= kill_t + 2 and e >= kill_t)
        after["failed_in_flight_at_kill"] = failed_at_kill
        if stray:
            failures.append(f"requests failed away from the kill: {stray[:10]}")
        if failed_at_kill > max(5, 0.01 * n):
            failures.append(f"{failed_at_kill} requests failed at the kill (> 1% of {n})")
        if util_after < a.min_utilization_after_kill:
            failures.append(f"utilization after the kill {util_after:.3f} < {a.min_utilization_after_kill}")
    else:
        failed = [(round(s - t0, 1), o) for s, _, o in d.results if o not in (200, 429)]
        if failed:
            failures.append(f"requests failed: {failed[:10]}")
    # 4. Every surviving gateway served.
    served = {}
    for c in a.gateway_metrics:
        out = subprocess.run(["docker", "exec", c, "curl", "-fsS", "-H", f"Authorization: Bearer {a.admin_key}",
                              "http://127.0.0.1:8080/metrics"],
                             capture_output=True, text=True)
        total = 0
        for line in out.stdout.splitlines():
            if line.startswith("sluice_requests_total{") and 'outcome="ok"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
        served[c[:12]] = total
        if total == 0:
            failures.append(f"gateway {c[:12]} served nothing (exit {out.returncode})")

    waits = sorted(done - sent for sent, done, o in d.results if o == 200)
    p50 = waits[len(waits) // 2] if waits else 0
    p99 = waits[int(len(waits) * 0.99)] if waits else 0
    summary = {
        "duration_s": round(run_end, 1),
        "offered_rps": round(rate, 1),
        "quota_rps": round(quota_rps, 1),
        "sent": n,
        "client_blocked_at_max_in_flight": blocked,
        "outcomes": {str(k): v for k, v in sorted(outcomes.items(), key=lambda kv: str(kv[0]))},
        "upstream_accepted_in_run": accepted,
        "allowed_in_whole_windows": allowed,
        "utilization": round(util, 3),
        "upstream_refused": dict(refused),
        "upstream_accepted_total": sum(x[3] for x in requests_limits(final)),
        "latency_ok_p50_s": round(p50, 2),
        "latency_ok_p99_s": round(p99, 2),
        **after,
        "ok_per_surviving_gateway": served,
    }
    print(json.dumps(summary, indent=2))
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
