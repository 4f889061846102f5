"""Evaluation reports: the cross-architecture matrix of an ``evaluation.json`` as rows, CSV and markdown."""

from __future__ import annotations

import csv
import io as _io

from haba_core.protocol import distinct_protocols


def matrix_rows(evaluation: dict) -> tuple[list[str], list[dict]]:
    """The accuracy matrix of an evaluation dict: (net names, one row per source with 'mean +- std' in %)."""
    nets: list[str] = list(evaluation.get("architectures") or [])
    rows = []
    for name in ("synset", "random_real"):
        res = evaluation.get(name)
        if not isinstance(res, dict):
            continue
        for n in res.get("nets", {}):
            if n not in nets:
                nets.append(n)
        st = res.get("storage") or {}
        row = {
            "row": name,
            "kind": st.get("kind"),
            "floats_total": st.get("floats_total"),
            "ipc_equivalent": round(float(st.get("ipc_equivalent") or 0.0), 4),
        }
        for n in nets:
            r = res.get("nets", {}).get(n)
            row[n] = f"{100 * r['mean']:.2f} +- {100 * r['std']:.2f}" if r else ""
        rows.append(row)
    return nets, rows


def matrix_csv(evaluation: dict) -> str:
    """``matrix_rows`` as CSV: row, kind, floats_total, ipc_equivalent, then one column per net."""
    nets, rows = matrix_rows(evaluation)
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["row", "kind", "floats_total", "ipc_equivalent", *nets], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def matrix_markdown(evaluation: dict) -> str:
    """``matrix_rows`` as a markdown table (accuracies in %, mean +- std over seeds)."""
    nets, rows = matrix_rows(evaluation)
    head = ["row", "storage (IPC-eq.)", *nets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["row"], f"{r['ipc_equivalent']:.3f} ({r['floats_total']:,} floats)", *(r[n] for n in nets)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    protocols = distinct_protocols(
        (evaluation.get(n) or {}).get("protocol")
        for n in ("synset", "random_real")
        if isinstance(evaluation.get(n), dict)
    )
    if len(protocols) == 1:
        lines.append(f"\nEvery row: evaluation protocol {protocols[0]}.")
    elif protocols:
        lines.append(f"\n**Rows evaluated under different protocols, not comparable: {'; '.join(protocols)}.**")
    return "\n".join(lines)
