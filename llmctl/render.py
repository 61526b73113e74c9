"""Turning llmd's JSON into tables and lines for people."""

from __future__ import annotations

import time
from typing import Any, Sequence


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain left-aligned table."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def duration(seconds: float | None) -> str:
    """Seconds as a short human duration: 42s, 5m, 3h12m, 2d."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def ago(timestamp: float | None) -> str:
    """A wall-clock timestamp as 'N ago'."""
    if timestamp is None:
        return "never"
    return duration(max(0.0, time.time() - timestamp)) + " ago"


def state(model: dict[str, Any]) -> str:
    """The state column: llmd's own state, how far a load has come, a failure mark."""
    text = model.get("state") or model["status"]["value"]
    load = model.get("load")
    if load and load.get("progress") is not None:
        text += f" {int(100 * load['progress'])}%"
    if model["status"].get("failed"):
        text += f" (failed, exit {model['status'].get('exit_code')})"
    return text


def mib(n: float) -> str:
    """Bytes as MiB, or GiB from 10 GiB up."""
    return f"{n / 2**30:,.1f} GiB" if n >= 10 * 2**30 else f"{n / 2**20:,.0f} MiB"


def _waiting(queue: dict[str, Any]) -> str:
    why, on = queue.get("waiting_for"), queue.get("on")
    if on is None and why in ("turn", "drain", "min_residency"):
        return "next in line"
    return {"turn": f"behind the load of {on}",
            "drain": f"waiting for {on} to finish its requests",
            "min_residency": f"waiting for {on} to serve its min_residency",
            "models_max": "waiting for a model to stop (models_max)",
            "room": "waiting for memory to free"}.get(why or "", why or "")


def progress(load: dict[str, Any], width: int = 24) -> str:
    """One line for a load's progress: a bar, the whole in percent, what the step does."""
    frac = load.get("progress") or 0.0
    filled = int(frac * width)
    bar = f"[{'#' * filled}{'.' * (width - filled)}] {frac * 100:3.0f}% {load['state']}"
    d, q, m = load.get("download"), load.get("queue"), load.get("loading")
    if load["state"] == "downloading" and d and d.get("total"):
        bar += f" {mib(d['done'])}/{mib(d['total'])} {mib(d['rate'])}/s"
        if d.get("eta") is not None:
            bar += f" ETA {duration(d['eta'])}"
    elif load["state"] == "queued" and q:
        bar += f" #{q['position']}, {_waiting(q)}"
    elif load["state"] == "loading" and m:
        # Buffers beside the weights can take resident memory past the file's size.
        bar += f" {min(m['resident_mib'], m['expected_mib'])}/{m['expected_mib']} MiB read in"
    return bar + f" ({duration(load.get('elapsed'))})"


def memory(m: dict[str, Any]) -> str:
    """Estimate, booked prompt cache and measured use per device: `host 765+512/412M`."""
    mem = m.get("memory") or {}
    est, used = mem.get("estimate_mib") or {}, mem.get("measured_mib") or {}
    growth = mem.get("growth_mib") or {}
    parts = [f"{d} {est.get(d, '-')}{'+' + str(growth[d]) if growth.get(d) else ''}"
             f"/{used.get(d, '-')}M" for d in sorted({*est, *used, *growth})]
    return ", ".join(parts) or "-"


def ps(models: list[dict[str, Any]]) -> str:
    """The `llmctl ps` table."""
    rows = [(m["id"], state(m), m.get("port"), m.get("pid"), m.get("leases", 0), memory(m),
             duration(m.get("uptime")), ago(m.get("last_used")),
             duration(m.get("ttl_left")) if m.get("ttl_left") is not None else "-")
            for m in models]
    return table(("NAME", "STATE", "PORT", "PID", "IN-FLIGHT", "MEMORY EST+CACHE/USED", "UPTIME",
                  "LAST USED", "TTL LEFT"), rows)


def status(info: dict[str, Any]) -> str:
    """The daemon summary of `llmctl status`."""
    lines = [f"llmd running (pid {info['pid']}, up {duration(info['uptime'])})",
             f"  router:      {info['listen']}",
             f"  control:     {info['control_socket']}",
             f"  models dir:  {info['models_dir']}",
             f"  llama-server: {info['llama_server']}",
             f"  models:      {info['models']} known, {info['loaded']} loaded "
             f"(max {info['models_max'] or 'unlimited'}), {info['in_flight']} requests in flight"]
    kept = info.get("prompt_cache")
    if kept:
        lines.append(f"  prompt cache: {kept['mib']} MiB kept on disk of "
                     f"{kept['budget_mib']} MiB (keep_prompt_cache)")
    devices = info.get("devices") or []
    if devices:
        lines.append("")
        lines.append(table(
            ("DEVICE", "NAME", "TOTAL", "FREE", "OTHERS", "MODELS EST/USED", "CACHE", "BOOKED",
             "MARGIN", "ROOM"),
            [(d["id"], d["name"], f"{d['total_mib']}M", f"{d['free_mib']}M",
              f"{d.get('others_mib', '-')}M",
              f"{d.get('estimate_mib', '-')}/{d.get('measured_mib', '-')}M",
              f"{d.get('growth_mib', '-')}M", f"{d.get('booked_mib', d['committed_mib'])}M",
              f"{d['margin_mib']}M", f"{d.get('room_mib', '-')}M") for d in devices]))
    else:
        lines.append("  memory accounting off (memory_margin_mib = 0)")
    return "\n".join(lines)


def model(m: dict[str, Any]) -> str:
    """One model in detail."""
    lines = [f"{m['id']}: {state(m)}", f"  path:     {m.get('path')}",
             f"  aliases:  {', '.join(m.get('aliases') or []) or '-'}",
             f"  args:     {' '.join(m['status'].get('args') or [])}"]
    template = m.get("chat_template")
    if template:
        name, note = template.get("name"), template.get("note")
        lines.append(f"  template: {name} ({note})" if name else f"  template: {note}")
    if m.get("pid"):
        lines.append(f"  pid/port: {m['pid']}/{m['port']}, {m.get('leases', 0)} in flight")
    kept = m.get("prompt_cache")
    if kept:
        slots = "slot" if kept["slots"] == 1 else "slots"
        lines.append(f"  prompts:  {kept['tokens']:,} tokens in {kept['slots']} {slots} "
                     f"kept on disk ({kept['mib']} MiB), saved {ago(kept['saved_at'])}")
    if m["status"].get("failed"):
        lines.append(f"  reason:   {m['status'].get('reason')}")
        lines += ["  | " + line for line in m["status"].get("tail") or []]
    return "\n".join(lines)
