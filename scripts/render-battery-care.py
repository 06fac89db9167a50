"""Draws the Battery care dashboard's panels from a Prometheus: scripts/render-battery-care."""

import json
import sys
import time
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PROMETHEUS, OUT = sys.argv[1], sys.argv[2]
DASHBOARD = json.load(open("dashboards/nuki-battery-care.json"))
VARIABLES = {"$__range": "1h", "$job": "nuki-exporter", "$instance": ".+"}


def panel(title):
    return next(p for p in DASHBOARD["panels"] if p["title"] == title)


def expr(target):
    text = target["expr"]
    for name, value in VARIABLES.items():
        text = text.replace(name, value)
    return text


def query(text, start=None):
    if start is None:
        path, params = "query", {"query": text}
    else:
        now = time.time()
        path, params = "query_range", {"query": text, "start": start, "end": now, "step": 1}
    url = f"{PROMETHEUS}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url) as response:
        return json.load(response)["data"]["result"]


def results(title, ref="A"):
    target = next(t for t in panel(title)["targets"] if t["refId"] == ref)
    return query(expr(target))


def by_lock(samples):
    return {s["metric"].get("smartlock_id"): float(s["value"][1]) for s in samples}


def lock_label(metric):
    name = metric.get("name")
    return f"{name} ({metric['smartlock_id']})" if name else metric.get("smartlock_id", "")


BATTERIES = {
    m: o["text"] for m, o in panel("What to bring")["fieldConfig"]["overrides"][0]["properties"][0]["value"][0]["options"].items()
}

fig = plt.figure(figsize=(17, 12), dpi=90)
fig.suptitle(f"{DASHBOARD['title']}: demo fleet (one round a second: the demo's 'days' are seconds)", fontsize=14)
grid = fig.add_gridspec(4, 2, height_ratios=[0.35, 0.9, 1.1, 1.3], hspace=0.35, wspace=0.12)


def table(ax, title, header, rows, widths=None):
    ax.axis("off")
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    if not rows:
        ax.text(0.5, 0.5, "no data", ha="center")
        return
    t = ax.table(cellText=rows, colLabels=header, loc="upper center", cellLoc="left", colWidths=widths)
    t.auto_set_font_size(False)
    t.set_fontsize(9)
    t.scale(1, 1.3)


stats = grid[0, :].subgridspec(1, 3)
for i, title in enumerate(["Exporter replicas scraped", "Fleet median drain", "Locks due within 14 days"]):
    ax = fig.add_subplot(stats[0, i])
    ax.axis("off")
    value = results(title)
    shown = f"{float(value[0]['value'][1]):.4g}" if value else "no data"
    ax.text(0.5, 0.6, shown, ha="center", va="center", fontsize=22)
    ax.text(0.5, 0.1, title + (" (%/day)" if "drain" in title else ""), ha="center", fontsize=10)

queue = results("Replacement queue")
charge = by_lock(results("Replacement queue", "B"))
drain = by_lock(results("Replacement queue", "C"))
rows = [
    [s["metric"]["smartlock_id"], s["metric"].get("name", ""), s["metric"].get("device_type", ""),
     f"{float(s['value'][1]):.3g}", f"{charge.get(s['metric']['smartlock_id'], float('nan')):.0f} %",
     f"{drain.get(s['metric']['smartlock_id'], float('nan')):.3g}"]
    for s in queue
]
table(fig.add_subplot(grid[1, 0]), "Replacement queue (soonest empty first)",
      ["Lock", "Name", "Kind", "Days until 10 %", "Charge", "Drain (%/day)"], rows,
      [0.14, 0.16, 0.16, 0.2, 0.12, 0.18])

models = results("What to bring")
due = {s["metric"]["device_type"]: s["value"][1] for s in results("What to bring", "B")}
rows = [[s["metric"]["device_type"], BATTERIES.get(s["metric"]["device_type"], "?"), s["value"][1],
         due.get(s["metric"]["device_type"], "0")] for s in models]
table(fig.add_subplot(grid[1, 1]), "What to bring", ["Model", "Batteries", "Devices", "Due within 14 days"], rows,
      [0.16, 0.5, 0.12, 0.2])

ax = fig.add_subplot(grid[2, 0])
history = query(expr(panel("Charge history per lock")["targets"][0]), start=time.time() - float(sys.argv[3]))
for series in history:
    xs = [float(t) - time.time() for t, _ in series["values"]]
    ax.step(xs, [float(v) for _, v in series["values"]], where="post", label=lock_label(series["metric"]))
ax.axhline(20, color="orange", linestyle="--", linewidth=1)
ax.axhline(10, color="red", linestyle="--", linewidth=1)
ax.set_ylim(0, 105)
ax.set_xlabel("seconds ago")
ax.set_ylabel("charge %")
ax.set_title("Charge history per lock", loc="left", fontsize=11, fontweight="bold")
ax.legend(fontsize=7, loc="lower left", ncol=2)

ax = fig.add_subplot(grid[2, 1])
ratio = results("Drain per lock against the fleet median")
names = {s["metric"]["smartlock_id"]: lock_label(s["metric"]) for s in queue}
labels = [names.get(s["metric"]["smartlock_id"], s["metric"]["smartlock_id"]) for s in ratio]
values = [float(s["value"][1]) for s in ratio]
ax.barh(labels, values, color=["red" if v >= 3 else "orange" if v >= 2 else "green" for v in values])
ax.axvline(1, color="grey", linewidth=1)
ax.invert_yaxis()
ax.set_xlabel("times the fleet median drain")
ax.set_title("Drain per lock against the fleet median", loc="left", fontsize=11, fontweight="bold")
ax.tick_params(axis="y", labelsize=8)

since = results("Days since last battery change")
rows = [[s["metric"]["smartlock_id"], s["metric"].get("name", ""), f"{float(s['value'][1]):.0f} s"] for s in since]
table(fig.add_subplot(grid[3, 0]), "Since the last battery change", ["Lock", "Name", "Since the change"], rows)

critical = [s for s in results("Keypad and door-sensor batteries") if s["metric"]["battery"] == "keypad"]
rows = [[s["metric"]["smartlock_id"], s["metric"].get("name", ""), s["metric"]["battery"],
         "critical" if s["value"][1] == "1" else "no"] for s in critical]
table(fig.add_subplot(grid[3, 1]), "Keypad and door-sensor batteries (keypads shown)", ["Lock", "Name", "Battery", "Critical now"], rows)

fig.savefig(OUT, bbox_inches="tight")
print(f"wrote {OUT}")
