#!/usr/bin/env python3
"""Helpers for bench/run and bench/soak (standard library only).

  gen      write a data file of signed API-failure webhooks for bench/webhooks.lua
  scrape   GET /metrics a few times: wall time, bytes, series, status (JSON on stdout)
  scrape-loop  GET /metrics once a second for a while (JSON on stdout)
  metric   print the value of one sample of a /metrics page
  wrk      read wrk's output, check it, print its WRK_RESULT JSON
  report   turn bench/run's JSON-lines records into the markdown results table
  soak-report  the same for bench/soak
"""

import argparse
import hashlib
import hmac
import http.client
import json
import statistics
import sys
import time
import urllib.parse

# Nuki smartlockIds are 11-digit decimals; the benchmark's ids start here.
ID_BASE = 17_000_000_000
# A few catalogue codes, one per lock (so each lock has exactly one error series).
ERROR_CODES = ["ff", "fe", "40", "41", "fd", "c2", "43", "a0"]


def webhook_body(index, ids, first_id, entries):
    detail = []
    for k in range(entries):
        lock = first_id + (index + k) % ids
        detail.append(
            '{"smartlockId":%d,"success":false,"errorCode":"%s","id":"%024x"}'
            % (ID_BASE + lock, ERROR_CODES[lock % len(ERROR_CODES)], 0x68B142 << 72 | index * entries + k)
        )
    return (
        '{"detail":[%s],"type":"AuthCreation","requestId":"%024x","success":false}'
        % (",".join(detail), 0x68B143 << 72 | index)
    )


def cmd_gen(args):
    """One line per webhook: hex signature, a space, the body. Webhook i names lock ids
    first_id + (i + k) mod ids for k < entries, so `count` = `ids` webhooks rotate over
    exactly `ids` distinct locks."""
    key = args.secret.encode()
    count = args.count or args.ids
    with open(args.out, "w") as out:
        for i in range(count):
            body = webhook_body(i, args.ids, args.first_id, args.entries).encode()
            signature = hmac.new(key, body, hashlib.sha256).hexdigest()
            out.write("%s %s\n" % (signature, body.decode()))


def get(url, timeout=60.0, gzip=False):
    """(status, body bytes as sent, seconds to the last byte) of one GET on a fresh connection;
    with gzip, it asks for a gzip body, as Prometheus does."""
    parts = urllib.parse.urlsplit(url)
    start = time.perf_counter()
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        headers = {"Accept-Encoding": "gzip"} if gzip else {}
        connection.request("GET", parts.path or "/", headers=headers)
        response = connection.getresponse()
        body = response.read()
        return response.status, body, time.perf_counter() - start
    finally:
        connection.close()


def count_series(body):
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


def cmd_scrape(args):
    results = []
    for _ in range(args.repeat):
        status, body, seconds = get(args.url)
        results.append(
            {"status": status, "seconds": seconds, "bytes": len(body), "series": count_series(body)}
        )
    print(json.dumps(results))
    return 0 if all(r["status"] == 200 for r in results) else 1


def cmd_scrape_loop(args):
    """Scrapes due at t = 0, 1, 2, ... < duration s; one that is late (the previous scrape took
    longer than the interval) starts at once. Stops at the duration, so slow scrapes mean fewer."""
    results = []
    start = time.monotonic()
    next_at = start
    while next_at - start < args.duration and time.monotonic() - start < args.duration:
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            status, body, seconds = get(args.url, gzip=args.gzip)
            results.append({"status": status, "seconds": seconds, "bytes": len(body)})
        except OSError as error:
            results.append({"status": 0, "seconds": None, "error": str(error)})
        next_at += args.interval
    print(json.dumps(results))
    return 0 if results and all(r["status"] == 200 for r in results) else 1


def cmd_metric(args):
    status, body, _ = get(args.url)
    if status != 200:
        print("scrape answered %d" % status, file=sys.stderr)
        return 1
    total = None
    for line in body.decode().splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name = series.split("{", 1)[0]
        if name == args.name and all(("%s" % label) in series for label in args.label):
            total = (total or 0.0) + float(value)
    if total is None:
        print("no sample of %s" % args.name, file=sys.stderr)
        return 1
    print("%.0f" % total if total == int(total) else total)
    return 0


def cmd_summary_line(args):
    """One human line about a wrk output file, for progress logs."""
    with open(args.file) as f:
        for line in f:
            if line.startswith("WRK_RESULT "):
                w = json.loads(line[len("WRK_RESULT "):])
                print("%s req/s, p50 %s ms, p99 %s ms" % ("{:,.0f}".format(w["requests"] / (w["duration_us"] / 1e6)),
                      ms(w["latency_us"]["p50"]), ms(w["latency_us"]["p99"])))
                return 0
    print("no result")
    return 1


def cmd_wrk(args):
    """Prints the WRK_RESULT JSON of a wrk output file; fails when wrk saw errors or did nothing."""
    result = None
    with open(args.file) as f:
        for line in f:
            if line.startswith("WRK_RESULT "):
                result = json.loads(line[len("WRK_RESULT "):])
    if result is None:
        print("no WRK_RESULT line in %s" % args.file, file=sys.stderr)
        return 1
    print(json.dumps(result))
    errors = sum(result["errors"].values())
    if result["requests"] == 0 or errors:
        print("wrk: %d requests, errors %s (%s)" % (result["requests"], result["errors"], args.file),
              file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# Reports


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def ms(us):
    return "%.2f" % (us / 1000.0)


def kib(kb):
    return "{:,}".format(kb)


def derive(r):
    """Adds the numbers the tables show to a raw record of bench/run."""
    w = r.get("wrk")
    if w:
        seconds = w["duration_us"] / 1e6
        r["rps"] = w["requests"] / seconds
        r["latency_us"] = w["latency_us"]
        if "cpu_ticks" in r:
            cpu_s = r["cpu_ticks"] / r["clk_tck"]
            r["cpu_util"] = cpu_s / seconds
            r["cpu_us_per_req"] = cpu_s * 1e6 / max(w["requests"], 1)
        if "user_ticks" in r:
            r["user_us_per_req"] = r["user_ticks"] / r["clk_tck"] * 1e6 / max(w["requests"], 1)
        if r.get("client_cpu_s") is not None:
            r["client_cpu_util"] = r["client_cpu_s"] / seconds
        if "server_core_busy_ticks" in r:
            r["server_core_other"] = (r["server_core_busy_ticks"] - r["cpu_ticks"]) / r["clk_tck"] / seconds
            r["server_core_steal"] = r["server_core_steal_ticks"] / r["clk_tck"] / seconds
        if "client_core_busy_ticks" in r and r.get("client_cpu_s") is not None:
            r["client_core_other"] = (r["client_core_busy_ticks"] / r["clk_tck"] - r["client_cpu_s"]) / seconds
    if r["stage"] == "scrape":
        r["series"] = r["scrapes"][0]["series"]
        r["cpu_ms_per_scrape"] = r["cpu_ticks"] / r["clk_tck"] * 1000 / len(r["scrapes"])
        r["bytes_per_series_filled"] = (r["rss_filled_kb"] - r["rss_empty_kb"]) * 1024 / r["series"]
        r["bytes_per_series_after"] = (r["rss_after_kb"] - r["rss_empty_kb"]) * 1024 / r["series"]
    return r


def pct(x):
    return "n/a" if x is None else "%.0f%%" % (x * 100)


def throughput_section(records, out):
    runs = [r for r in records if r["stage"] == "throughput"]
    variants = sorted({r["entries"] for r in runs})
    out.append("### Webhook throughput: nuki-exporter (A) against the bare hyper baseline (B)\n")
    out.append("Server on core 0, `wrk -t1 -c64` on core 1, 10,000 lock ids rotating, "
               "%d-second runs, A B pairs interleaved.\n" % runs[0]["seconds"] if runs else "")
    out.append("| entries | pair | server | req/s | server CPU | CPU µs/req | of it user | wrk CPU | other on core 0 / 1 | p50 ms | p99 ms | ratio A/B |")
    out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    summary = []
    user_notes = []
    for entries in variants:
        rows = [r for r in runs if r["entries"] == entries]
        pairs = sorted({r["pair"] for r in rows})
        ratios = []
        for pair in pairs:
            a = next(r for r in rows if r["pair"] == pair and r["server"] == "exporter")
            b = next(r for r in rows if r["pair"] == pair and r["server"] == "baseline")
            ratio = a["rps"] / b["rps"]
            ratios.append(ratio)
            for r, shown in ((a, ""), (b, "%.3f" % ratio)):
                user = r.get("user_us_per_req")
                out.append("| %d | %d | %s | %s | %.0f%% | %.2f | %s | %s | %s / %s | %s | %s | %s |" % (
                    entries, pair, r["server"], "{:,.0f}".format(r["rps"]), r["cpu_util"] * 100,
                    r["cpu_us_per_req"], "–" if user is None else "%.2f" % user,
                    pct(r.get("client_cpu_util")),
                    pct(r.get("server_core_other")), pct(r.get("client_core_other")),
                    ms(r["latency_us"]["p50"]), ms(r["latency_us"]["p99"]), shown))
        med = lambda server, f: statistics.median(f(r) for r in rows if r["server"] == server)
        summary.append({
            "entries": entries,
            "ratio": statistics.median(ratios),
            "ratios": ratios,
            "a_rps": med("exporter", lambda r: r["rps"]),
            "b_rps": med("baseline", lambda r: r["rps"]),
            "a_cpu": med("exporter", lambda r: r["cpu_us_per_req"]),
            "b_cpu": med("baseline", lambda r: r["cpu_us_per_req"]),
            "a_p50": med("exporter", lambda r: r["latency_us"]["p50"]),
            "a_p99": med("exporter", lambda r: r["latency_us"]["p99"]),
            "b_p50": med("baseline", lambda r: r["latency_us"]["p50"]),
            "b_p99": med("baseline", lambda r: r["latency_us"]["p99"]),
        })
        if all("user_us_per_req" in r for r in rows):
            a_user = med("exporter", lambda r: r["user_us_per_req"])
            b_user = med("baseline", lambda r: r["user_us_per_req"])
            user_notes.append(
                "%d %s: the exporter spent %.2f µs of user CPU per webhook, the bare server %.2f µs: "
                "+%.2f µs of its own work (medians of the pairs)." % (
                    entries, "entry" if entries == 1 else "entries", a_user, b_user, a_user - b_user))
    out.append("")
    if user_notes:
        # User time is the servers' own code, without the kernel's network path, which both share
        # and which moves with the machine's load far more than the code does.
        out.append("User CPU alone (the process's own code, not the kernel's network path): "
                   + " ".join(user_notes) + "\n")
    return summary


def reference_ms(records, target_series, key):
    """Median ms of the in-process encodes (`seconds`: the prometheus crate's gather + encode;
    `exporter_seconds`: the exporter's Metrics::encode) of the same series, or None."""
    for r in records:
        if r["stage"] == "reference_encoder" and r["target_series"] == target_series and key in r["reference"]:
            return statistics.median(r["reference"][key]) * 1000
    return None


def scrape_section(records, out):
    rows = [r for r in records if r["stage"] == "scrape"]
    for r in rows:
        r["reference_ms"] = reference_ms(records, r["target_series"], "seconds")
        r["in_process_ms"] = reference_ms(records, r["target_series"], "exporter_seconds")
    out.append("### /metrics: encode time and memory\n")
    out.append("Exporter on core 0, filled with unique lock ids by webhooks (3 series per lock: "
               "operations, operation errors, last seen). Scrapes on a fresh connection from core 1; "
               "time = first byte sent to last byte read.\n")
    out.append("**prometheus crate ms** is the crate's own `Registry::gather` + `TextEncoder` of the same "
               "per-lock series in-process on the same core (`bench/prometheus_encoder.rs`), median of as many runs; "
               "**in-process ms** the exporter's `Metrics::encode` of them in the same program.\n")
    out.append("| series | locks | body MB | first scrape ms | median scrape ms | max ms | server CPU ms/scrape "
               "| prometheus crate ms | in-process ms | RSS empty MiB | RSS filled MiB | RSS after scrapes MiB | B/series (filled) | B/series (after scrapes) |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        times = [s["seconds"] * 1000 for s in r["scrapes"]]
        out.append("| {:,} | {:,} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {} | {} | {:.1f} | {:.1f} | {:.1f} | {:.0f} | {:.0f} |".format(
            r["series"], r["locks"], r["scrapes"][0]["bytes"] / 1e6, times[0],
            statistics.median(times[1:] or times), max(times), r["cpu_ms_per_scrape"],
            "–" if r["reference_ms"] is None else "%.1f" % r["reference_ms"],
            "–" if r["in_process_ms"] is None else "%.1f" % r["in_process_ms"],
            r["rss_empty_kb"] / 1024, r["rss_filled_kb"] / 1024, r["rss_after_kb"] / 1024,
            r["bytes_per_series_filled"], r["bytes_per_series_after"]))
    out.append("")
    return rows


def scraped(record):
    """Whether /metrics was scraped during a scrape-under-load run (its encoding is not "none")."""
    return record["encoding"] != "none"


def scraped_by_encoding(loaded):
    """Scraped runs by encoding, each with the same round's run without a scrape (or None)."""
    without = {r["round"]: r for r in loaded if not scraped(r)}
    runs = {}
    for r in loaded:
        if scraped(r):
            runs.setdefault(r["encoding"], []).append((r, without.get(r["round"])))
    return runs


def load_section(records, out):
    rows = [r for r in records if r["stage"] == "scrape_under_load"]
    out.append("### Webhook latency while /metrics is scraped once a second\n")
    out.append("Same exporter (filled), same wrk load as the throughput runs (1 entry per webhook); "
               "in each round first without, then with a scraper on core 1 fetching /metrics every "
               "second, once as plain text and once asking for gzip, as Prometheus does.\n")
    out.append("| round | series | scraping | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | scrapes done / due | scrape ms (median / max) |")
    out.append("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        lat = r["latency_us"]
        scrapes = [s["seconds"] * 1000 for s in (r.get("scrapes") or []) if s.get("seconds") is not None]
        out.append("| {} | {:,} | {} | {:,.0f} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["round"], r["series"], "every 1 s, %s" % r["encoding"] if scraped(r) else "no", r["rps"], ms(lat["p50"]), ms(lat["p90"]),
            ms(lat["p99"]), ms(lat["p999"]), ms(lat["max"]),
            "%d / %d" % (len(scrapes), r["seconds"] - 1) if scraped(r) else "–",
            "%.0f / %.0f" % (statistics.median(scrapes), max(scrapes)) if scrapes else "–"))
    out.append("")
    return rows


def relay_section(records, out):
    """Relay mode: the application directly, the exporter alone, the exporter relaying to it."""
    runs = [r for r in records if r["stage"] == "relay"]
    if not runs:
        return None
    out.append("### Relay mode: the application directly, and behind the exporter\n")
    out.append("The application is the bare hyper baseline (reads the body, answers 204). `direct`: wrk to "
               "the application; `exporter`: wrk to an exporter answering by itself; `relay`: wrk to an "
               "exporter with forward.url pointing at the application. Exporter and application share "
               "core 0; CPU µs/req adds up both. `wrk -t1 -c64`, 1 entry per webhook, modes interleaved.\n")
    out.append("| pair | mode | req/s | CPU µs/req | p50 ms | p99 ms |")
    out.append("|---:|---|---:|---:|---:|---:|")
    for r in runs:
        out.append("| %d | %s | %s | %.1f | %s | %s |" % (
            r["pair"], r["mode"], "{:,.0f}".format(r["rps"]), r["cpu_us_per_req"],
            ms(r["latency_us"]["p50"]), ms(r["latency_us"]["p99"])))
    med = {}
    for mode in ("direct", "exporter", "relay"):
        rows = [r for r in runs if r["mode"] == mode]
        med[mode] = {
            "rps": statistics.median(r["rps"] for r in rows),
            "cpu": statistics.median(r["cpu_us_per_req"] for r in rows),
            "p50": statistics.median(r["latency_us"]["p50"] for r in rows),
            "p99": statistics.median(r["latency_us"]["p99"] for r in rows),
        }
    out.append("")
    out.append("| median | req/s | CPU µs/req | p50 ms | p99 ms |")
    out.append("|---|---:|---:|---:|---:|")
    for mode, m in med.items():
        out.append("| %s | %s | %.1f | %s | %s |" % (mode, "{:,.0f}".format(m["rps"]), m["cpu"], ms(m["p50"]), ms(m["p99"])))
    d, e, r = med["direct"], med["exporter"], med["relay"]
    single = [x for x in records if x["stage"] == "relay_latency"]
    if single:
        out.append("")
        out.append("One connection, one webhook at a time (no queueing): the hop's own latency.\n")
        out.append("| mode | req/s | p50 ms | p90 ms | p99 ms |")
        out.append("|---|---:|---:|---:|---:|")
        for mode in ("direct", "relay"):
            rows = [x["wrk"] for x in single if x["mode"] == mode]
            rate = statistics.median(w["requests"] / (w["duration_us"] / 1e6) for w in rows)
            lat = {q: statistics.median(w["latency_us"][q] for w in rows) for q in ("p50", "p90", "p99")}
            med[mode + "_single"] = lat
            out.append("| %s | %s | %s | %s | %s |" % (mode, "{:,.0f}".format(rate), ms(lat["p50"]),
                                                      ms(lat["p90"]), ms(lat["p99"])))
    out.append("")
    out.append("Relaying costs %.1f µs of CPU per webhook over the exporter answering by itself (the "
               "hop: one more HTTP exchange on loopback plus the application's own %.1f µs), %.1f µs "
               "over the application alone; p50 latency %s ms behind the exporter against %s ms "
               "direct (+%s ms), p99 %s against %s ms.\n" % (
                   r["cpu"] - e["cpu"], d["cpu"], r["cpu"] - d["cpu"], ms(r["p50"]), ms(d["p50"]),
                   ms(r["p50"] - d["p50"]), ms(r["p99"]), ms(d["p99"])))
    if "relay_single" in med:
        out.append("Unloaded, the relay adds %s ms to the median webhook (%s ms against %s ms direct).\n" % (
            ms(med["relay_single"]["p50"] - med["direct_single"]["p50"]), ms(med["relay_single"]["p50"]),
            ms(med["direct_single"]["p50"])))
    return med


def verdict(ok):
    return "met" if ok else "**missed**"


def poll_section(records, out):
    rows = [r for r in records if r["stage"] == "poll"]
    out.append("### A Web API poll of a large account\n")
    out.append("The exporter polls a static stand-in of `GET /smartlock` (Nuki's documented shape, config "
               "objects included) every second. RSS before: after its first request failed, before the "
               "stand-in started; peak: the process's high-water mark after three polls.\n")
    out.append("| locks | answer MB | RSS before MiB | RSS after MiB | peak MiB | peak above before MiB | peak above before, B/lock |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        r["peak_above_kb"] = r["hwm_kb"] - r["rss_before_kb"]
        out.append("| {:,} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {:,.0f} |".format(
            r["locks"], r["answer_bytes"] / 1e6, r["rss_before_kb"] / 1024, r["rss_after_kb"] / 1024,
            r["hwm_kb"] / 1024, r["peak_above_kb"] / 1024, r["peak_above_kb"] * 1024 / r["locks"]))
    out.append("")
    return rows


def targets_section(summary, scrapes, loaded, polls, out):
    """The targets of issues 9 and 19 against the measured numbers."""
    out.append("### Targets (issues 9 and 19)\n")
    out.append("| target | measured | |")
    out.append("|---|---|---|")
    for s in summary:
        target = 0.90 if s["entries"] == 1 else 0.80
        out.append("| signed webhooks, %d %s each: throughput ≥ %.2f of bare hyper (median of the pairs) | %.3f (pairs %s; exporter %s req/s, baseline %s req/s) | %s |" % (
            s["entries"], "entry" if s["entries"] == 1 else "entries", target, s["ratio"],
            ", ".join("%.3f" % x for x in s["ratios"]), "{:,.0f}".format(s["a_rps"]),
            "{:,.0f}".format(s["b_rps"]), verdict(s["ratio"] >= target)))
        if s["entries"] == 1:
            cpu_ratio = s["b_cpu"] / s["a_cpu"]
            out.append("| signed webhooks, 1 entry each: CPU per request ≥ 0.87 of bare hyper's (baseline µs / exporter µs) | %.3f (%.2f vs %.2f µs/req, medians) | %s |" % (
                cpu_ratio, s["b_cpu"], s["a_cpu"], verdict(cpu_ratio >= 0.87)))
    for encoding, runs in scraped_by_encoding(loaded).items():
        p99s = [r["latency_us"]["p99"] / 1000 for r, _ in runs]
        done = [x["seconds"] * 1000 for r, _ in runs for x in (r.get("scrapes") or []) if x.get("seconds") is not None]
        due = sum(r["seconds"] - 1 for r, _ in runs)
        p99 = statistics.median(p99s)
        out.append("| webhook p99 while /metrics (%s series) is scraped every second (%s) ≤ 3 ms, median of the rounds | %.2f ms (rounds %s; %d of %d scrapes done, median %.0f ms each) | %s |" % (
            "{:,}".format(runs[0][0]["series"]), encoding, p99, ", ".join("%.2f" % x for x in p99s),
            len(done), due, statistics.median(done) if done else float("nan"), verdict(p99 <= 3)))
        shares = [r["rps"] / without["rps"] for r, without in runs if without]
        if shares:
            share = statistics.median(shares)
            out.append("| webhook throughput while scraped (%s) ≥ 0.95 of without in the same round, median of the rounds | %.3f (rounds %s) | %s |" % (
                encoding, share, ", ".join("%.3f" % x for x in shares), verdict(share >= 0.95)))
    if scrapes:
        r = scrapes[-1]
        times = [s["seconds"] * 1000 for s in r["scrapes"]]
        median = statistics.median(times[1:] or times)
        out.append("| /metrics of %s series ≤ 50 ms median | %.1f ms median of the repeated scrapes, %.1f ms the first, %.1f ms worst | %s |" % (
            "{:,}".format(r["series"]), median, times[0], max(times), verdict(median <= 50)))
        if r["reference_ms"] is not None:
            share = median / r["reference_ms"]
            out.append("| /metrics of %s series ≤ ¼ of the prometheus crate's gather + encode of the same series | %.1f ms against %.1f ms: %.2f | %s |" % (
                "{:,}".format(r["series"]), median, r["reference_ms"], share, verdict(share <= 0.25)))
        for r in scrapes:
            per = max(r["bytes_per_series_filled"], r["bytes_per_series_after"])
            out.append("| RSS ≤ 256 B per series (%s series) | %.0f B/series filled, %.0f B/series after scrapes | %s |" % (
                "{:,}".format(r["series"]), r["bytes_per_series_filled"], r["bytes_per_series_after"],
                verdict(per <= 256)))
    for r in polls:
        above = r["peak_above_kb"] / 1024
        out.append("| a %s-lock Web API poll peaks ≤ 40 MiB above the RSS before it | %.1f MiB (%.0f B per lock) | %s |" % (
            "{:,}".format(r["locks"]), above, r["peak_above_kb"] * 1024 / r["locks"], verdict(above <= 40)))
    out.append("")


def cmd_report(args):
    records = [derive(r) for r in load(args.records)]
    meta = next((r for r in records if r["stage"] == "meta"), {})
    out = ["## nuki-exporter benchmark results (%s)\n" % meta.get("mode", "full")]
    out.append("- date: %s; commit %s%s; host: %s, %s CPUs" % (
        meta.get("date", "?"), meta.get("commit", "?"), " (working tree modified)" if meta.get("dirty") else "",
        meta.get("cpu", "?"), meta.get("cpus", "?")))
    out.append("- load average before measuring: %s; after: %s" % (
        meta.get("load_before", "?"), next((r["load"] for r in records if r["stage"] == "end"), "?")))
    out.append("- wrk %s, rustc %s; server on CPU %s, wrk and scraper on CPU %s; baseline builder %s; session autogroup nice %s" % (
        meta.get("wrk_version", "?"), meta.get("rustc", "?"), meta.get("server_cpu", "?"), meta.get("client_cpu", "?"),
        meta.get("baseline_builder", "?"), meta.get("nice", 0)))
    busy = [r["busy_before_pct"] for r in records if r.get("busy_before_pct") is not None]
    others = [max(r.get("server_core_other") or 0, r.get("client_core_other") or 0)
              for r in records if r["stage"] == "throughput"]
    if busy:
        out.append("- machine busy in the second before each measured step: at most %d%% (median %d%%)%s" % (
            max(busy), statistics.median(busy),
            "; other processes during the throughput runs: at most %.0f%% of a core" % (max(others) * 100) if others else ""))
    out.append("")
    staged = {r["stage"] for r in records}
    summary = throughput_section(records, out) if "throughput" in staged else []
    scrapes = scrape_section(records, out) if "scrape" in staged else []
    loaded = load_section(records, out) if "scrape_under_load" in staged else []
    polls = poll_section(records, out) if "poll" in staged else []
    relay_section(records, out)

    if summary:
        targets_section(summary, scrapes, loaded, polls, out)
    text = "\n".join(out)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


def cmd_soak_report(args):
    records = load(args.records)
    meta = next((r for r in records if r["stage"] == "meta"), {})
    out = ["## nuki-exporter soak results (%s)\n" % meta.get("mode", "full")]
    out.append("- date: %s; commit %s%s" % (meta.get("date", "?"), meta.get("commit", "?"),
                                           " (working tree modified)" if meta.get("dirty") else ""))
    out.append("- load average before: %s; after: %s; server on CPU %s, wrk on CPU %s; session autogroup nice %s\n" % (
        meta.get("load_before", "?"), next((r["load"] for r in records if r["stage"] == "end"), "?"),
        meta.get("server_cpu", "?"), meta.get("client_cpu", "?"), meta.get("nice", 0)))
    out.append("| run | limits.max_smartlocks | after | webhooks answered (total) | distinct lock ids sent (total) | req/s | p99 ms | wrk errors | locks tracked | entries counted as `other` | series | RSS after a scrape MiB | peak RSS MiB |")
    out.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in (r for r in records if r["stage"] == "soak"):
        w = r.get("wrk")
        out.append("| {} | {:,} | {} | {:,} | {:,} | {} | {} | {} | {:,} | {:,} | {:,} | {:.1f} | {:.1f} |".format(
            r["run"], r["max_smartlocks"], r["phase"], r["sent_total"], r["distinct_total"],
            "{:,.0f}".format(w["requests"] / (w["duration_us"] / 1e6)) if w else "–",
            ms(w["latency_us"]["p99"]) if w else "–",
            sum(w["errors"].values()) if w else "–", r["tracked"], r["overflow"], r["series"],
            r["rss_kb"] / 1024, r["hwm_kb"] / 1024))
    out.append("")
    text = "\n".join(out)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("gen")
    p.add_argument("--out", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--ids", type=int, required=True, help="distinct lock ids")
    p.add_argument("--first-id", type=int, default=0)
    p.add_argument("--entries", type=int, default=1, help="detail[] entries per webhook")
    p.add_argument("--count", type=int, default=0, help="webhooks (default: --ids)")
    p.set_defaults(func=cmd_gen)
    p = sub.add_parser("scrape")
    p.add_argument("url")
    p.add_argument("--repeat", type=int, default=1)
    p.set_defaults(func=cmd_scrape)
    p = sub.add_parser("scrape-loop")
    p.add_argument("url")
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--gzip", action="store_true", help="ask for gzip, as Prometheus does")
    p.set_defaults(func=cmd_scrape_loop)
    p = sub.add_parser("metric")
    p.add_argument("url")
    p.add_argument("name")
    p.add_argument("--label", action="append", default=[], help='e.g. reason="signature"')
    p.set_defaults(func=cmd_metric)
    p = sub.add_parser("wrk")
    p.add_argument("file")
    p.set_defaults(func=cmd_wrk)
    p = sub.add_parser("summary-line")
    p.add_argument("file")
    p.set_defaults(func=cmd_summary_line)
    p = sub.add_parser("report")
    p.add_argument("records")
    p.add_argument("--out")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("soak-report")
    p.add_argument("records")
    p.add_argument("--out")
    p.set_defaults(func=cmd_soak_report)
    args = parser.parse_args()
    sys.exit(args.func(args) or 0)


if __name__ == "__main__":
    main()
