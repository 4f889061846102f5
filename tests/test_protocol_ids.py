"""The ids of the evaluation protocols behind committed results are pinned. Rows may sit in one table only under
one protocol id, so a change to how evaluation settings are encoded (``EvalConfig``, ``EvalProtocol``,
``Recipe``) that moved an id would split every committed table: the settings that made the committed results
must hash to the same ids, and every protocol record committed under ``bench/results`` must hash back to its own."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from haba_core.config import EvalConfig
from haba_core.protocol import EvalProtocol

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
STRATEGY = "color_crop_cutout_flip_scale_rotate"  # the runs' dsa_strategy (RunConfig's default)

# id -> (the eval settings that differ from EvalConfig's defaults, test images), and where the id is committed
PINNED = {
    "f598ca27fd": ({"precision": "fp32"}, 10000),  # plain-300ep-dsa: precision.json
    "fdbd42a2dc": ({"precision": "bf16"}, 10000),  # plain-300ep-dsa-bf16: cpu_bf16, findings, precision
    "4b7d27c8db": ({"precision": "fp32", "epochs": 1000}, 10000),  # plain-1000ep-dsa: repro.json
    "9e6c3461d3": ({"precision": "bf16", "split": "val"}, 5000),  # plain-300ep-dsa-val-bf16: val_search/
    "032027c53d": ({"precision": "fp32", "split": "val"}, 5000),  # plain-300ep-dsa-val: val_search/
}


def committed_protocol_records() -> list[tuple[str, dict]]:
    """Every protocol record (a dict with ``id`` and ``order``) in the committed JSON results, with its file."""
    found = []

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            if "id" in node and "order" in node and "epochs" in node:
                found.append((where, node))
            for value in node.values():
                walk(value, where)
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    for path in sorted(RESULTS.rglob("*.json")):
        walk(json.loads(path.read_text()), str(path.relative_to(RESULTS)))
    return found


@pytest.mark.parametrize("pid", sorted(PINNED))
def test_the_settings_of_committed_results_keep_their_protocol_id(pid):
    settings, test_images = PINNED[pid]
    assert EvalProtocol.from_config(EvalConfig(**settings), STRATEGY, test_images).id == pid


def test_every_committed_protocol_record_hashes_to_its_id():
    records = committed_protocol_records()
    assert {r["id"] for _, r in records} == set(PINNED), "a new protocol in bench/results: pin its settings here"
    names = {f.name for f in dataclasses.fields(EvalProtocol)}
    for where, rec in records:
        lr = None if str(rec["lr_rule"]).startswith("learned") else rec["lr"]  # the id hashes the rule, not the lr
        protocol = EvalProtocol(**{**{k: v for k, v in rec.items() if k in names}, "lr": lr})
        assert protocol.id == rec["id"], where
        again = protocol.record(rec["lr"])
        assert {k: again.get(k) for k in rec} == rec, where  # the record itself, field for field (None: left out)
