"""Render a latency benchmark report as Markdown tables and a PNG plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MIB = 2**20
ENDPOINT_LABELS = {
    "healthz": "GET /healthz",
    "recommendations": "POST /v1/recommendations",
    "similar": "GET /v1/items/{item_id}/similar",
    "events": "POST /v1/events (1 event)",
    "events_batch": "POST /v1/events (batch)",
}


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = [_row(header), _row(["---"] * len(header))]
    lines += [_row(row) for row in rows]
    return lines


def latency_table(scenarios: list[dict[str, Any]]) -> list[str]:
    rows = []
    for scenario in scenarios:
        for name, figures in scenario["endpoints"].items():
            sequential = figures["sequential"]["latency_ms"]
            loop = figures["closed_loop"]
            rows.append(
                [
                    f"{scenario['catalog']} ({scenario['n_items']:,})",
                    scenario["workers"],
                    ENDPOINT_LABELS.get(name, name),
                    f"{sequential['p50']:.2f}",
                    f"{sequential['p95']:.2f}",
                    f"{sequential['p99']:.2f}",
                    f"{loop['throughput_per_second']:,.0f}",
                    f"{loop['latency_ms']['p99']:.1f}",
                    f"{loop['server_cpu_ms_per_request']:.2f}",
                ]
            )
    header = [
        "catalog (items)",
        "workers",
        "endpoint",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "req/s",
        "p99 ms under load",
        "server CPU ms/req",
    ]
    return _table(header, rows)


def stage_table(scenarios: list[dict[str, Any]]) -> list[str]:
    rows = []
    for scenario in scenarios:
        figures = scenario["endpoints"].get("recommendations")
        if figures is None or scenario["workers"] != min(
            s["workers"] for s in scenarios if s["catalog"] == scenario["catalog"]
        ):
            continue
        for stage, values in figures["sequential"]["stages_ms"].items():
            rows.append(
                [
                    f"{scenario['catalog']} ({scenario['n_items']:,})",
                    stage,
                    f"{values['p50']:.3f}",
                    f"{values['p95']:.3f}",
                    f"{values['p99']:.3f}",
                ]
            )
    return _table(["catalog (items)", "stage", "p50 ms", "p95 ms", "p99 ms"], rows)


def ratio_table(scenarios: list[dict[str, Any]]) -> list[str]:
    rows = [
        [f"{s['catalog']} ({s['n_items']:,})", s["workers"], name, value]
        for s in scenarios
        for name, value in s["ratios"].items()
    ]
    return _table(["catalog (items)", "workers", "ratio", "value"], rows)


def memory_table(scenarios: list[dict[str, Any]]) -> list[str]:
    rows = []
    for scenario in scenarios:
        for pid, memory in scenario["memory_loaded"].items():
            rows.append(
                [
                    f"{scenario['catalog']} ({scenario['n_items']:,})",
                    scenario["workers"],
                    pid,
                    f"{memory.get('Rss', 0) / MIB:.0f}",
                    f"{memory.get('Pss', 0) / MIB:.0f}",
                    f"{memory.get('Pss_Anon', 0) / MIB:.0f}",
                    f"{memory.get('Pss_File', 0) / MIB:.0f}",
                    f"{scenario['pipeline_bytes'] / MIB:.0f}",
                    f"{scenario['index_bytes'] / MIB:.0f}",
                ]
            )
    header = [
        "catalog (items)",
        "workers",
        "pid",
        "RSS MiB",
        "PSS MiB",
        "PSS anon MiB",
        "PSS file MiB",
        "pipeline files MiB",
        "index + vectors MiB",
    ]
    return _table(header, rows)


def _total_pss(scenario: dict[str, Any]) -> int:
    total = sum(memory.get("Pss", 0) for memory in scenario["memory_loaded"].values())
    master = scenario.get("master_memory") or {}
    return total + master.get("Pss", 0)


def sharing_table(scenarios: list[dict[str, Any]]) -> list[str]:
    """Tabulate the PSS each worker beyond the first adds, against the files."""
    rows = []
    by_catalog: dict[str, dict[int, dict[str, Any]]] = {}
    for scenario in scenarios:
        by_catalog.setdefault(scenario["catalog"], {})[scenario["workers"]] = scenario
    for catalog, runs in by_catalog.items():
        if 1 not in runs or len(runs) < 2:
            continue
        base = _total_pss(runs[1])
        for workers, scenario in sorted(runs.items()):
            if workers == 1:
                continue
            added = (_total_pss(scenario) - base) / (workers - 1)
            served = scenario["pipeline_bytes"]
            rows.append(
                [
                    f"{catalog} ({scenario['n_items']:,})",
                    f"{base / MIB:.0f}",
                    workers,
                    f"{_total_pss(scenario) / MIB:.0f}",
                    f"{added / MIB:.0f}",
                    f"{scenario['pipeline_bytes'] / MIB:.0f}",
                    f"{added / served:.2f}" if served else "n/a",
                ]
            )
    header = [
        "catalog (items)",
        "PSS, 1 worker, MiB",
        "workers",
        "PSS, all processes, MiB",
        "added per extra worker, MiB",
        "pipeline files MiB",
        "added / pipeline files",
    ]
    return _table(header, rows)


def render_markdown(report: dict[str, Any]) -> str:
    """Return the report's tables as Markdown."""
    machine = report["machine"]
    scenarios = report["scenarios"]
    lines = [
        f"Run started {report['started_at']} on {machine['cpu_model']}, "
        f"{machine['cpus']} CPUs, {machine['memory_gib']} GiB, "
        f"Python {machine['python']}.",
        "",
        "Latency (sequential) and throughput (closed loop, "
        f"{report['config']['concurrency']} connections):",
        "",
        *latency_table(scenarios),
        "",
        "Stages of POST /v1/recommendations (Server-Timing, sequential):",
        "",
        *stage_table(scenarios),
        "",
        "Ratios against GET /healthz:",
        "",
        *ratio_table(scenarios),
        "",
        "Worker memory after the load:",
        "",
        *memory_table(scenarios),
        "",
        "Memory an extra worker adds (PSS summed over the master and workers):",
        "",
        *sharing_table(scenarios),
        "",
    ]
    return "\n".join(lines)


def plot_latency(report: dict[str, Any], path: Path, workers: int = 1) -> None:
    """Plot recommendation latency percentiles against catalog size to PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted(
        (s for s in report["scenarios"] if s["workers"] == workers),
        key=lambda s: s["n_items"],
    )
    runs = [s for s in runs if "recommendations" in s["endpoints"]]
    sizes = [s["n_items"] for s in runs]
    figures = [s["endpoints"]["recommendations"]["sequential"] for s in runs]

    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    # Markers only: the catalogs come from different builds, not one series.
    for key, marker in (("p50", "o"), ("p95", "s"), ("p99", "^")):
        values = [f["latency_ms"][key] for f in figures]
        axes.plot(sizes, values, marker, label=f"recommendations {key}")
    server = [f["stages_ms"].get("total", {}).get("p50") for f in figures]
    if all(value is not None for value in server):
        axes.plot(sizes, server, "x", label="server time p50 (Server-Timing)")
    floor = [s["endpoints"]["healthz"]["sequential"]["latency_ms"]["p99"] for s in runs]
    axes.plot(sizes, floor, "k_", markersize=14, label="/healthz p99 (floor)")
    for run, size in zip(runs, sizes, strict=True):
        axes.annotate(
            run["catalog"],
            (size, 0),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            fontsize=7,
        )
    axes.axhline(10, color="grey", linewidth=0.8)
    axes.annotate("10 ms target", (sizes[0] if sizes else 1, 10.2), fontsize=8)
    axes.set_xscale("log")
    axes.set_ylim(bottom=0)
    axes.set_xlabel("catalog size (items)")
    axes.set_ylabel("latency (ms), sequential requests")
    noun = "worker" if workers == 1 else "workers"
    axes.set_title(f"POST /v1/recommendations, {workers} uvicorn {noun}")
    axes.grid(True, which="both", linewidth=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
