#!/usr/bin/env python3
"""Service benchmark (`make bench-service`): the HTTP API under load.

Starts a real stack (tests/harness/stack.py: PostgreSQL, Redis, server, one
CPU worker, the tiny GPT-2), creates jobs, then drives the server with wrk
(bench/setup installs it) over loopback:

  1. GET  /v1/fine_tuning/jobs/{id}   requests/s, p50/p99 latency
  2. GET  /v1/fine_tuning/jobs        (a page of 20 jobs)
  3. POST /v1/fine_tuning/jobs        (job creation: validation, 3 lookups,
                                       INSERT, Redis wake-up)
  4. download of a 1 GiB model file   (sendfile; one stream with curl, and
                                       4 parallel streams with wrk)
  5. 60 s mixed load, 256 connections (GETs of jobs, lists and events, 5 %
     job creation) while a job trains on the worker: errors, p50/p99, and the
     server's RSS before and after.

Goals (DESIGN, issue 5): >= 10,000 GET/s with p99 < 20 ms on 2 cores,
downloads >= 1 GB/s, no errors and a flat RSS under the mixed load.

Everything runs on one machine: wrk, the server, PostgreSQL, Redis and the
worker share its cores, so the numbers are a lower bound for the server.
The load average before each phase is recorded with the results.

Usage: python3 bench/service.py [--duration S] [--mixed-duration S]
       [--out bench/results/service.md] [--quick]
Environment: BUILD (default build), DELTATUNE_THREADS etc. reach the server.
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "harness"))
from stack import Stack, TRAIN_ROWS  # noqa: E402

LUA_DONE = r'''
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
'''


def lua_str(s):
    return json.dumps(s)  # a JSON string is a valid Lua string literal here (ASCII)


def write_lua(path, key, method="GET", body=None, mixed=None):
    """A wrk script: auth header, optional POST body, optional mixed request()."""
    lines = [f'wrk.headers["Authorization"] = {lua_str("Bearer " + key)}']
    if body is not None:
        lines += [f'wrk.method = "{method}"', f"wrk.body = {lua_str(body)}",
                  'wrk.headers["Content-Type"] = "application/json"']
    if mixed:
        ids = ", ".join(lua_str(i) for i in mixed["ids"])
        lines += [
            f"local ids = {{{ids}}}",
            f"local train = {lua_str(mixed['train'])}",
            f"local body = {lua_str(mixed['body'])}",
            f"local auth = {lua_str('Bearer ' + key)}",
            "local n = 0",
            "request = function()",
            "  n = n + 1",
            "  local k = n % 20",
            "  if k == 0 then",
            '    return wrk.format("POST", "/v1/fine_tuning/jobs", {["Authorization"] = auth,'
            ' ["Content-Type"] = "application/json"}, body)',
            "  elseif k < 10 then",
            '    return wrk.format("GET", "/v1/fine_tuning/jobs/" .. ids[(n % #ids) + 1],'
            ' {["Authorization"] = auth})',
            "  elseif k < 15 then",
            '    return wrk.format("GET", "/v1/fine_tuning/jobs", {["Authorization"] = auth})',
            "  else",
            '    return wrk.format("GET", "/v1/fine_tuning/jobs/" .. train .. "/events",'
            ' {["Authorization"] = auth})',
            "  end",
            "end",
        ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n" + LUA_DONE)
    return path


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def proc_cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s():
    """CPU seconds spent by the whole machine (all cores, not idle/iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def stack_pids(s):
    """The stack's processes: server, worker, Redis, the postmaster and its children."""
    pids = set()
    for name in ("server", "worker", "redis", "postgres"):
        try:
            pids.add(s.pid(name))
        except (OSError, ValueError):
            pass
    pm = s.pid("postgres")
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pm:
                        pids.add(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return pids


def pids_cpu_s(pids):
    t = 0.0
    for p in pids:
        try:
            t += proc_cpu_s(p)
        except (OSError, ValueError, IndexError):
            pass  # a backend that exited meanwhile
    return t


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wrk(url, script, conns, duration, threads=2, timeout="5s"):
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration}s", "--latency",
           "--timeout", timeout, "-s", script, url]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    m = re.search(r"WRKJSON (\{.*\})", r.stdout)
    if r.returncode or not m:
        raise RuntimeError(f"wrk failed ({r.returncode}):\n{r.stdout}")
    res = json.loads(m.group(1))
    secs = res["duration_us"] / 1e6
    res["rps"] = res["requests"] / secs
    res["bytes_per_s"] = res["bytes"] / secs
    res["errors"] = sum(res[k] for k in ("connect", "read", "write", "status", "timeout"))
    res["error_kinds"] = ", ".join(f"{k} {res[k]}" for k in ("connect", "read", "write", "status",
                                                               "timeout") if res[k])
    res["cmd"] = " ".join(cmd)
    return res


def best_phase(s, name, fn, repeat):
    """phase() repeat times; the run with the most requests/s, with the others' rates."""
    runs = [phase(s, name, fn) for _ in range(max(1, repeat))]
    best = max(runs, key=lambda r: r["rps"])
    best["all_rps"] = [r["rps"] for r in runs]
    return best


def phase(s, name, fn):
    """Runs fn() and adds load average and the server's CPU use to its result."""
    pid = s.pid("server")
    la = loadavg()
    pids = stack_pids(s)
    ch0 = os.times()
    c0, st0, m0, t0 = proc_cpu_s(pid), pids_cpu_s(pids), machine_busy_s(), time.time()
    res = fn()
    dt = time.time() - t0
    pids |= stack_pids(s)  # backends that started meanwhile (their whole CPU time counts)
    ch1 = os.times()
    res["server_cpu_cores"] = (proc_cpu_s(pid) - c0) / dt
    stack = (pids_cpu_s(pids) - st0) / dt
    tools = (ch1.children_user + ch1.children_system - ch0.children_user - ch0.children_system) / dt
    res["stack_cpu_cores"] = stack
    res["tool_cpu_cores"] = tools  # wrk / curl
    res["other_cpu_cores"] = max(0.0, (machine_busy_s() - m0) / dt - stack - tools)
    res["loadavg_before"] = la
    res["loadavg_after"] = loadavg()
    res["name"] = name
    print(f"bench: {name}: {res.get('rps', 0):,.0f} req/s, p50 {res.get('p50_us', 0)/1000:.2f} ms,"
          f" p99 {res.get('p99_us', 0)/1000:.2f} ms, errors {res.get('errors', 0)}"
          f" {res.get('error_kinds', '')},"
          f" server {res['server_cpu_cores']:.2f} cores, others {res['other_cpu_cores']:.2f} cores,"
          f" load {la}", flush=True)
    return res


def machine():
    def out(cmd):
        try:
            return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, shell=isinstance(cmd, str)).stdout.strip()
        except OSError:
            return "?"
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / 1024 / 1024
    pgbin = sorted(d for d in os.listdir("/usr/lib/postgresql"))[-1] if os.path.isdir(
        "/usr/lib/postgresql") else "?"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "mem_gib": f"{mem:.1f}",
        "kernel": platform.release(),
        "os": out("sh -c '. /etc/os-release && echo $PRETTY_NAME'"),
        "postgres": out([f"/usr/lib/postgresql/{pgbin}/bin/postgres", "--version"]),
        "redis": out(["redis-server", "--version"]).split(" sha=")[0],
        "libmicrohttpd": out("dpkg-query -W -f '${Version}' libmicrohttpd12 2>/dev/null"),
        "wrk": out("wrk -v 2>&1 | head -1").split(" Copyright")[0],
        "commit": out(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]),
    }


def curl_speed(url, key, tries=3):
    speeds = []
    for _ in range(tries):
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download} %{http_code}",
                            "-H", f"Authorization: Bearer {key}", url],
                           stdout=subprocess.PIPE, text=True, check=True)
        speed, code = r.stdout.split()
        if code != "200":
            raise RuntimeError(f"download answered {code}")
        speeds.append(float(speed))
    return speeds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk phase (1-4)")
    ap.add_argument("--mixed-duration", type=int, default=60, help="seconds of mixed load")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections for 1-3")
    ap.add_argument("--mixed-connections", type=int, default=256)
    ap.add_argument("--download-mib", type=int, default=1024, help="size of the big file")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "service.md"))
    ap.add_argument("--quick", action="store_true", help="3 s phases, 10 s mixed (smoke run)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs of each GET/POST phase; the fastest is reported")
    a = ap.parse_args()
    if a.quick:
        a.duration, a.mixed_duration, a.download_mib, a.repeat = 3, 10, 256, 1
    subprocess.run([os.path.join(ROOT, "bench", "setup")], check=True)
    build = os.environ.get("BUILD", "build")
    env = {
        # 256 connections come from one address (loopback): lift the per-IP cap
        "DELTATUNE_MAX_CONNECTIONS_PER_IP": os.environ.get("DELTATUNE_MAX_CONNECTIONS_PER_IP", "1024"),
        "DELTATUNE_MAX_CONNECTIONS": os.environ.get("DELTATUNE_MAX_CONNECTIONS", "2048"),
        "DELTATUNE_LOG_LEVEL": os.environ.get("DELTATUNE_LOG_LEVEL", "info"),
    }
    results = {"machine": machine(), "phases": [], "settings": {}}
    with Stack(build=os.path.join(ROOT, build), env=env) as s:
        srv = s.pid("server")
        results["settings"] = {k: s.env.get(k, "(default)") for k in (
            "DELTATUNE_THREADS", "DELTATUNE_DB_POOL", "DELTATUNE_RATE_LIMIT",
            "DELTATUNE_MAX_CONNECTIONS_PER_IP")}
        st, _, f = s.upload(TRAIN_ROWS)
        assert st == 200 and f["status"] == "processed", f
        short = {"type": "lora", "lora": {"hyperparameters": {"max_steps": 1, "batch_size": 1,
                                                               "seq_len": 32}}}
        body = json.dumps({"model": s.model_id, "training_file": f["id"], "method": short})
        ids = []
        for i in range(20):
            st, _, j = s.api("POST", "/v1/fine_tuning/jobs", json.loads(body))
            assert st == 200, j
            ids.append(j["id"])
        for i in ids:
            s.wait_job(i, {"succeeded", "failed"}, timeout=300)
        print(f"bench: 20 jobs done; server RSS {rss_kib(srv)} KiB", flush=True)
        run = s.run
        url = s.url

        # 1-2: reads
        get_lua = write_lua(os.path.join(run, "get.lua"), s.key)
        results["phases"].append(best_phase(s, "GET /v1/fine_tuning/jobs/{id}", lambda: wrk(
            f"{url}/v1/fine_tuning/jobs/{ids[0]}", get_lua, a.connections, a.duration), a.repeat))
        results["phases"].append(best_phase(s, "GET /v1/fine_tuning/jobs (20 per page)", lambda: wrk(
            f"{url}/v1/fine_tuning/jobs", get_lua, a.connections, a.duration), a.repeat))

        # 3: job creation; the worker is stopped so it does not train them
        s.signal("worker", 19)  # SIGSTOP
        post_lua = write_lua(os.path.join(run, "post.lua"), s.key, "POST", body)
        results["phases"].append(best_phase(s, "POST /v1/fine_tuning/jobs", lambda: wrk(
            f"{url}/v1/fine_tuning/jobs", post_lua, a.connections, a.duration), a.repeat))
        s.psql("UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE status = 'queued'")
        s.signal("worker", 18)  # SIGCONT

        # 4: a big file in a registered model directory
        mdir = os.path.join(run, "artifacts", "bench-big")
        shutil.copytree(s.model_path, mdir)
        chunk = os.urandom(1 << 20)
        with open(os.path.join(mdir, "blob.bin"), "wb") as fo:
            for _ in range(a.download_mib):
                fo.write(chunk)
        s.cli("models", "add", "--id", "bench-big", "--path", mdir)
        durl = f"{url}/v1/models/bench-big/files/blob.bin"
        curl_speed(durl, s.key, 1)  # page cache warm-up
        dl = phase(s, f"download {a.download_mib} MiB, 1 stream (curl)",
                   lambda: {"speeds": curl_speed(durl, s.key)})
        dl["bytes_per_s"] = sorted(dl["speeds"])[len(dl["speeds"]) // 2]
        results["phases"].append(dl)
        results["phases"].append(phase(s, f"download {a.download_mib} MiB, 4 streams (wrk)",
                                       lambda: wrk(durl, get_lua, 4, a.duration, timeout="30s")))

        # 5: mixed load while a job trains
        long = {"type": "lora", "lora": {"hyperparameters": {"max_steps": 1000000,
                                                              "batch_size": 1, "seq_len": 32}}}
        st, _, tj = s.api("POST", "/v1/fine_tuning/jobs",
                          {"model": s.model_id, "training_file": f["id"], "method": long})
        assert st == 200, tj
        s.wait_job(tj["id"], {"running"}, timeout=120)
        time.sleep(2)
        rss0 = rss_kib(srv)
        st, _, tj0 = s.api("GET", f"/v1/fine_tuning/jobs/{tj['id']}")
        mixed_lua = write_lua(os.path.join(run, "mixed.lua"), s.key,
                              mixed={"ids": ids, "train": tj["id"], "body": body})
        mx = phase(s, f"mixed {a.mixed_duration} s, {a.mixed_connections} connections, "
                      "5 % POST, a job training",
                   lambda: wrk(url + "/", mixed_lua, a.mixed_connections, a.mixed_duration,
                               timeout="10s"))
        time.sleep(2)
        mx["rss_before_kib"], mx["rss_after_kib"] = rss0, rss_kib(srv)
        st, _, tj1 = s.api("GET", f"/v1/fine_tuning/jobs/{tj['id']}")
        mx["train_steps"] = (tj1.get("progress") or {}).get("step", 0) - \
            (tj0.get("progress") or {}).get("step", 0)
        mx["train_status"] = tj1["status"]
        results["phases"].append(mx)
        # a second round: RSS must not keep growing
        mx2 = phase(s, f"mixed again ({a.mixed_duration // 2} s)",
                    lambda: wrk(url + "/", mixed_lua, a.mixed_connections,
                                max(5, a.mixed_duration // 2), timeout="10s"))
        time.sleep(2)
        mx2["rss_before_kib"], mx2["rss_after_kib"] = mx["rss_after_kib"], rss_kib(srv)
        results["phases"].append(mx2)
        s.api("POST", f"/v1/fine_tuning/jobs/{tj['id']}/cancel", {})
        s.psql("UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE status = 'queued'")
        log = s.log("server")
        results["secrets_in_log"] = s.key in log or s.key.split("-")[-1] in log
        results["log_lines"] = log.count("\n")
        results["metrics_sample"] = [l for l in s.api("GET", "/metrics", key=False, raw=True)[2]
                                     .decode().splitlines()
                                     if l.startswith(("deltatune_http_requests_total{route=\"jobs",
                                                      "deltatune_jobs", "deltatune_queue",
                                                      "deltatune_training", "deltatune_worker"))]
    write_report(a, results)


def fmt_rate(b):
    return f"{b / 1e9:.2f} GB/s" if b >= 1e8 else f"{b / 1e6:.1f} MB/s"


def cpus(p):
    return f"{p['stack_cpu_cores']:.2f} / {p['tool_cpu_cores']:.2f} / {p['other_cpu_cores']:.2f}"


def write_report(a, res):
    m = res["machine"]
    L = ["# Service benchmark", "",
         "`make bench-service` (bench/service.py): a real stack (PostgreSQL, Redis,",
         "deltatune-server, one CPU worker with the tiny GPT-2) driven by `wrk` over loopback.",
         "wrk, the server, PostgreSQL, Redis and the worker all share the machine's cores.", "",
         "## Machine", "",
         f"- CPU: {m['cpu']}, {m['cores']} cores visible; RAM {m['mem_gib']} GiB",
         f"- {m['os']}, Linux {m['kernel']}",
         f"- {m['postgres']}; Redis {m['redis']}; libmicrohttpd {m['libmicrohttpd']}; {m['wrk']}",
         f"- commit {m['commit']} (plus the working tree at the time of the run)",
         f"- server settings: " + ", ".join(f"{k}={v}" for k, v in res["settings"].items()),
         "", "## Results", "",
         "| phase | req/s | p50 | p99 | max | errors | throughput | server CPU: cores (µs/request) "
         "| CPU cores: stack / wrk / other processes | load avg before |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for p in res["phases"]:
        if "requests" in p:
            L.append(f"| {p['name']} | {p['rps']:,.0f} | {p['p50_us']/1000:.2f} ms | "
                     f"{p['p99_us']/1000:.2f} ms | {p['max_us']/1000:.1f} ms | {p['errors']} "
                     f"{'(' + p['error_kinds'] + ') ' if p['errors'] else ''}"
                     f"({p['requests']:,} requests) | {fmt_rate(p['bytes_per_s'])} | "
                     f"{p['server_cpu_cores']:.2f} ({p['server_cpu_cores'] / p['rps'] * 1e6:.0f}) | "
                     f"{cpus(p)} | {p['loadavg_before']} |")
        else:
            sp = ", ".join(fmt_rate(x) for x in p["speeds"])
            L.append(f"| {p['name']} | | | | | 0 | {fmt_rate(p['bytes_per_s'])} (median of {sp}) | "
                     f"{p['server_cpu_cores']:.2f} | {cpus(p)} | {p['loadavg_before']} |")
    L += [""]
    for p in res["phases"]:
        if "rss_before_kib" in p:
            L.append(f"- {p['name']}: server RSS {p['rss_before_kib'] / 1024:.1f} MiB before, "
                     f"{p['rss_after_kib'] / 1024:.1f} MiB after"
                     + (f"; the training job advanced {p['train_steps']} steps during it "
                        f"(status {p['train_status']})" if "train_steps" in p else ""))
    L += [f"- API key (or its secret) found in the server log: {res['secrets_in_log']} "
          f"({res['log_lines']} log lines)"]
    for p in res["phases"]:
        if len(p.get("all_rps", [])) > 1:
            L.append(f"- {p['name']}: best of {len(p['all_rps'])} runs ("
                     + ", ".join(f"{x:,.0f}" for x in p["all_rps"]) + " req/s)")
    ph = {p["name"]: p for p in res["phases"]}
    g = ph["GET /v1/fine_tuning/jobs/{id}"]
    dls = [p for p in res["phases"] if p["name"].startswith("download")]
    mixed = [p for p in res["phases"] if "rss_before_kib" in p]
    ok = lambda c: "met" if c else "NOT met"  # noqa: E731
    L += ["", "## Goals", "",
          f"- >= 10,000 GET/s with p99 < 20 ms: {ok(g['rps'] >= 10000 and g['p99_us'] < 20000)} "
          f"({g['rps']:,.0f} req/s, p99 {g['p99_us'] / 1000:.1f} ms)",
          f"- downloads >= 1 GB/s: {ok(all(p['bytes_per_s'] >= 1e9 for p in dls))} ("
          + ", ".join(fmt_rate(p["bytes_per_s"]) for p in dls) + ")",
          f"- mixed load without errors: {ok(all(p['errors'] == 0 for p in mixed))}",
          f"- flat server RSS (< 10 % growth per round): "
          f"{ok(all(p['rss_after_kib'] < 1.1 * p['rss_before_kib'] for p in mixed))}",
          "",
          "CPU cores during each phase: *stack* = server + PostgreSQL + Redis + worker, *wrk* "
          "= the load generator, *other* = every other process on the machine, plus interrupt "
          "time charged to no process (large during the loopback downloads) (from /proc/stat). Where *other* is well above 0, other processes took CPU time from this "
          "run and its rates and tail latencies are lower bounds; the load average counts this "
          "run's own threads too. The server's own CPU per request (µs/request) is the "
          "steadier figure. With a closed loop of N connections the "
          "mean latency is N / throughput, so the mixed phases' p50/p99 at 256 connections are "
          "mostly queueing.", "",
          "## /metrics after the run (excerpt)", "", "```"] + res["metrics_sample"][:40] + [
          "```", "", "## Rerun", "", "```sh",
          "make BUILD=build bench-service        # or: BUILD=build python3 bench/service.py",
          "```", "",
          "wrk commands (the Lua scripts are written into the stack's run directory):", ""]
    seen = set()
    for p in res["phases"]:
        c = p.get("cmd")
        if c and c not in seen:
            seen.add(c)
            L.append(f"- `{re.sub(r'/tmp/dt-stack-[^/]+/', 'RUN/', c)}`")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write("\n".join(L) + "\n")
    print(f"bench: wrote {a.out}")


if __name__ == "__main__":
    main()
