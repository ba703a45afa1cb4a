#!/usr/bin/env python3
"""Markdown report for scripts/compare-peers.sh.

    report.py RESULTS.tsv NOTES.tsv      (metadata in CMP_* environment variables)

RESULTS.tsv: peer, round, metric, value (one line per value and round).
NOTES.tsv: peer, why it was not timed ("" when it was), thread affinity seen.
"""
import math
import os
import statistics
import sys
from collections import defaultdict

results_path, notes_path = sys.argv[1], sys.argv[2]
env = os.environ.get
peers = env("CMP_PEERS", "tlsplice nginx haproxy stunnel").split()

values = defaultdict(lambda: defaultdict(dict))  # metric -> peer -> round -> value
for line in open(results_path):
    parts = line.rstrip("\n").split("\t")
    if len(parts) != 4:
        continue
    peer, rnd, metric, value = parts
    values[metric][peer][rnd] = value

notes, affinity = {}, {}
for line in open(notes_path):
    parts = line.rstrip("\n").split("\t") + ["", ""]
    notes[parts[0]], affinity[parts[0]] = parts[1], parts[2]

timed = [p for p in peers if not notes.get(p)]


def nums(metric, peer):
    out = []
    for v in values[metric][peer].values():
        try:
            f = float(v)
        except ValueError:
            continue
        if not math.isnan(f):
            out.append(f)
    return out


def median(metric, peer):
    xs = nums(metric, peer)
    return statistics.median(xs) if xs else None


rounds = int(env("CMP_ROUNDS", "3"))
hs = env("CMP_HS_CONNECTIONS", "8")
rate = env("CMP_RR_RATE", "2000")
rrc = env("CMP_RR_CONNECTIONS", "16")
bulkc = env("CMP_BULK_CONNECTIONS", "1")
idle = env("CMP_IDLE_CONNS", "1000")

# (metric, label, better: "up" / "down" / None, format, scale)
ROWS = [
    ("hs_full.ops_per_s", f"Full mTLS handshakes/s ({hs} conns, 16 B echo)", "up", "{:,.0f}", 1),
    ("hs_full.cpu_s_per_1000", "Terminator CPU-s per 1000 full handshakes", "down", "{:.3f}", 1),
    ("hs_resume.ops_per_s", f"Resumed handshakes/s ({hs} conns, 16 B echo, `--resume`)", "up", "{:,.0f}", 1),
    ("hs_resume.resumed_share", "  share really resumed", "up", "{:.1f}%", 100),
    ("hs_resume.cpu_s_per_1000", "  terminator CPU-s per 1000 handshakes of that run", "down", "{:.3f}", 1),
    ("bulk.mb_up", f"Bulk MB/s client to backend ({bulkc} conn, both ways)", "up", "{:,.0f}", 1),
    ("bulk.mb_down", "Bulk MB/s backend to client (same run)", "up", "{:,.0f}", 1),
    ("bulk.cpu_s_per_gib", "Terminator CPU-s per GiB relayed (up + down)", "down", "{:.2f}", 1),
    ("rr.p50_ms", f"rr 64 B latency p50, ms (open loop {rate}/s, {rrc} conns)", "down", "{:.3f}", 1),
    ("rr.p99_ms", "rr 64 B latency p99, ms", "down", "{:.3f}", 1),
    ("rr.cpu_us_per_op", "  terminator CPU µs per request", "down", "{:.1f}", 1),
    ("rr.ops_per_s", "  requests/s achieved", None, "{:,.0f}", 1),
    ("idle.kib_per_conn", f"RSS KiB per idle mTLS connection ({idle} held)", "down", "{:.1f}", 1),
    ("idle.base_kib", "  idle baseline RSS, MiB (sum over its processes)", None, "{:.1f}", 1 / 1024),
    ("idle.threads", f"  threads with {idle} connections held", None, "{:.0f}", 1),
]

TESTS = (("hs_full", "full handshakes"), ("hs_resume", "resumed handshakes"),
         ("bulk", "bulk"), ("rr", "rr at a fixed rate"))


def fmt(fmt_s, scale, v):
    return "—" if v is None else fmt_s.format(v * scale)


out = []
w = out.append
w("# tlsplice compared with nginx, HAProxy and stunnel (mutual TLS, TCP mode)")
w("")
w(f"Produced by `bash scripts/compare-peers.sh` on {env('CMP_DATE', '?')}: "
  f"{env('CMP_NPROC', '?')} cores ({env('CMP_CPU', '?')}), kernel {env('CMP_KERNEL', '?')}, "
  f"no kTLS (tlsplice on its userspace path), load average at the end {env('CMP_LOADAVG', '?')}; "
  f"run took {env('CMP_ELAPSED', '?')} s, of which {env('CMP_QUIET_WAITED', '?')} s waiting "
  f"for the machine to be quiet before tests.")
w("")
w(f"Versions: {env('CMP_VERSIONS', '?')}.")
w("")
w(f"Setup: every terminator with one worker/thread confined to cpu {env('CMP_SERVER_CPU', '0')} "
  f"(`taskset`), in front of the same single-threaded epoll echo backend "
  f"(`scripts/compare/echo-backend.c`) on cpu {env('CMP_CLIENT_CPU', '1')}, where `tlsplice-load` "
  f"also runs; loopback; one ECDSA P-256 PKI from `tlsplice quickstart`; client certificate "
  f"required; the client offers only TLS 1.3, TLS_AES_128_GCM_SHA256 and X25519. Each peer was "
  f"probed with `openssl s_client` first (echo with the client certificate, none without). "
  f"Medians of {rounds} rounds of {env('CMP_DURATION', '?')} per test; rounds interleave the "
  f"peers. Terminator CPU is utime+stime of all its processes from /proc over the test; RSS is "
  f"the sum of VmRSS of its processes, with {idle} idle connections (each did one 1-byte echo) "
  f"minus the freshly started baseline.")
w("")

# Main table.
hdr = ["metric", "better"] + peers + [f"tlsplice ÷ {p}" for p in peers if p != "tlsplice"]
w("| " + " | ".join(hdr) + " |")
w("|" + "|".join(["---", ":-:"] + ["--:"] * (len(hdr) - 2)) + "|")
for metric, label, better, f, scale in ROWS:
    arrow = {"up": "higher", "down": "lower", None: ""}[better]
    cells = [label, arrow]
    for p in peers:
        if notes.get(p):
            cells.append("n/a")
            continue
        v = median(metric, p)
        n = len(nums(metric, p))
        cell = fmt(f, scale, v)
        if v is not None and n < rounds:
            cell += f" (n={n})"
        cells.append(cell)
    base = median(metric, "tlsplice") if "tlsplice" in timed else None
    for p in peers:
        if p == "tlsplice":
            continue
        v = median(metric, p) if p in timed else None
        if better is None or base is None or v is None or v == 0:
            cells.append("")
        else:
            r = base / v
            good = (r > 1) if better == "up" else (r < 1)
            cells.append(f"{r:.2f}" + (" ✓" if good and abs(r - 1) >= 0.05 else ""))
    w("| " + " | ".join(cells) + " |")
w("")
w("Ratios are tlsplice's median divided by the peer's: for rows marked *higher* a ratio "
  "above 1 favours tlsplice, for rows marked *lower* a ratio below 1 does (✓ marks a "
  "difference of at least 5% in tlsplice's favour). Indented rows are context for the row "
  "above them.")
w("")

# Core load.
w("Core load during each test (medians): **term** = the terminator's processes (share of one "
  f"core), **cpu{env('CMP_SERVER_CPU', '0')}** = the server cpu as a whole, "
  f"**cpu{env('CMP_CLIENT_CPU', '1')}** = the client cpu as a whole (load generator, echo "
  "backend, loopback softirq), **gen** = the load generator process alone, **echo** = the "
  "echo backend process alone. Busy cpu beyond these is kernel softirq or other processes "
  "on this shared machine.")
w("")
w("| test | " + " | ".join(timed) + " |")
w("|---|" + "---|" * len(timed))
for test, what in TESTS:
    cells = [what]
    for p in timed:
        parts = []
        for key, lab in (("server_util", "term"), ("server_cpu_busy", f"cpu{env('CMP_SERVER_CPU', '0')}"),
                         ("client_cpu_busy", f"cpu{env('CMP_CLIENT_CPU', '1')}"), ("client_util", "gen"),
                         ("backend_util", "echo")):
            v = median(f"{test}.{key}", p)
            parts.append(f"{lab} {v * 100:.0f}%" if v is not None else f"{lab} —")
        cells.append(" · ".join(parts))
    w("| " + " | ".join(cells) + " |")
w("")

# Peers not timed.
for p in peers:
    if notes.get(p):
        w(f"- **{p}: not timed, {notes[p]}.**")

# Automatic observations.
obs = []
for test, what in TESTS:
    if test == "rr":
        continue  # open loop well below capacity: nobody should be saturated
    bound_client = [p for p in timed if (median(f"{test}.client_cpu_busy", p) or 0) >= 0.9]
    if bound_client:
        obs.append(f"{what}: the client cpu (load generator + backend) was at least 90% busy "
                   f"against {', '.join(bound_client)}: those rates are bounded by the client "
                   f"side, not by the terminator; compare the terminator CPU per operation.")
    idle_server = [p for p in timed
                   if median(f"{test}.server_util", p) is not None
                   and median(f"{test}.server_util", p) < 0.8]
    if idle_server:
        obs.append(f"{what}: the terminator used less than 80% of its core for "
                   f"{', '.join(idle_server)}: not limited by its own CPU.")
    crowded = [p for p in timed
               if (median(f"{test}.server_cpu_busy", p) or 0) - (median(f"{test}.server_util", p) or 0) > 0.1]
    if crowded:
        obs.append(f"{what}: more than 10% of the server cpu went to other processes during the "
                   f"runs of {', '.join(crowded)} (shared machine).")
    steal = [p for p in timed
             if max(median(f"{test}.server_cpu_steal", p) or 0, median(f"{test}.client_cpu_steal", p) or 0) > 0.05]
    if steal:
        obs.append(f"{what}: the hypervisor took more than 5% of a cpu (steal) during the runs of "
                   f"{', '.join(steal)}.")
for p in timed:
    for metric in sorted(values):
        if metric.endswith(".errors"):
            for rnd, v in sorted(values[metric][p].items()):
                obs.append(f"{p}, {metric.split('.')[0]} round {rnd}: failed operations: {v}")
        if metric.endswith(".failed"):
            for rnd, v in sorted(values[metric][p].items()):
                obs.append(f"{p}, {metric.split('.')[0]} round {rnd}: no result ({v})")
        if metric.endswith(".exit"):
            for rnd, v in sorted(values[metric][p].items()):
                obs.append(f"{p} ({metric.split('.')[0]} instance, round {rnd}) {v}.")
        if metric.endswith(".unsent"):
            for rnd, v in sorted(values[metric][p].items()):
                if v not in ("0", "0.0"):
                    obs.append(f"{p}, {metric.split('.')[0]} round {rnd}: {v} operations due but never sent")
    neg = {v for m in values if m.endswith(".negotiated") for v in values[m][p].values()}
    if len(neg) > 1 or (neg and neg != {"TLSv1_3/TLS13_AES_128_GCM_SHA256/X25519"}):
        obs.append(f"{p} negotiated {', '.join(sorted(neg))}")
server_cpu = env("CMP_SERVER_CPU", "0")
for p in peers:
    stray = set()
    for part in affinity.get(p, "").replace("| under load:", ",").split(","):
        part = part.strip()
        if ":" in part:
            comm, rest = part.rsplit(":", 1)
            cpus = rest.split(" x")[0]
            if cpus != server_cpu:
                stray.add(f"{comm} on cpus {cpus}")
    if stray:
        obs.append(f"{p}: threads outside the server cpu {server_cpu}: {', '.join(sorted(stray))} "
                   f"(not confined as intended).")
if obs:
    w("")
    w("Observations from this run:")
    w("")
    for o in obs:
        w(f"- {o}")

# The load generator against a client nobody here wrote.
s_time = median("s_time.ops_per_s", "nginx")
own = median("check_load.ops_per_s", "nginx")
if s_time and own:
    w("")
    w("## Load generator check")
    w("")
    w(f"Full TLS 1.3 mTLS handshakes/s against nginx, one connection at a time, on the client "
      f"cpu (medians of {len(nums('s_time.ops_per_s', 'nginx'))} rounds): `openssl s_time -new` "
      f"{s_time:,.0f}, `tlsplice-load handshake --connections 1` {own:,.0f} "
      f"(ratio {own / s_time:.2f}).")

# Per-round values.
w("")
w("## Every round")
w("")
w("| metric | " + " | ".join(timed) + " |")
w("|---|" + "---|" * len(timed))
for metric, label, better, f, scale in ROWS:
    cells = [label.strip()]
    for p in timed:
        vs = [values[metric][p].get(str(r)) for r in range(1, rounds + 1)]
        shown = []
        for v in vs:
            try:
                shown.append(f.format(float(v) * scale))
            except (TypeError, ValueError):
                shown.append("—")
        cells.append(" / ".join(shown))
    w("| " + " | ".join(cells) + " |")
w("")
w("Threads and the CPUs they may run on (`comm:Cpus_allowed_list x count`, at the probe | "
  "under load):")
w("")
for p in peers:
    if affinity.get(p):
        w(f"- {p}: {affinity[p]}")
w("")
w("Configurations (generated by the script):")
w("")
w("- tlsplice: `serve --workers 1 --listen 127.0.0.1:P --cert server.crt --key server.key "
  "--client-ca ca.crt --backend 127.0.0.1:B` (defaults otherwise: client certificate "
  "required, kTLS auto, here unavailable).")
w("- nginx: `worker_processes 1; worker_cpu_affinity 1;` stream server "
  "`listen 127.0.0.1:P ssl; ssl_verify_client on; ssl_client_certificate ca.crt; "
  "ssl_protocols TLSv1.3; ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256; "
  "proxy_pass backend;` (session tickets: nginx default).")
w("- HAProxy: `nbthread 1; cpu-map 1/1 0; mode tcp; bind 127.0.0.1:P ssl crt server.pem "
  "ca-file ca.crt verify required ssl-min-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256`.")
w("- stunnel4: `foreground = yes; socket = l:TCP_NODELAY=1; socket = r:TCP_NODELAY=1; "
  "verifyChain = yes; requireCert = yes; CAfile = ca.crt; sslVersionMin = TLSv1.3; "
  "ciphersuites = TLS_AES_128_GCM_SHA256` (stunnel has no worker count: one thread per "
  "connection, all confined to the server cpu by `taskset`).")
w("")
w("Load (`tlsplice-load`, all on the client cpu, `--tls13-only --cipher aes128 --kx x25519`, "
  f"`--duration {env('CMP_DURATION', '?')}`): `handshake --echo 16 --connections {hs}`, the same with "
  f"`--resume`, `bulk --direction both --connections {bulkc}` (64 KiB writes), "
  f"`rr --rate {rate} --connections {rrc}` (64 B). Idle connections: "
  "`scripts/compare/hold-idle.py` (Python ssl, sequential).")
print("\n".join(out))
