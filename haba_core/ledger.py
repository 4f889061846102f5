"""The test ledger: one JSON line for every evaluation on the test split, so that every look at the test set can
be audited (when, at which commit, what was tested, under which protocol, and why).

Where a line goes: ``$HABA_TEST_LEDGER`` when it is set (the test suite points it at a temporary file), else the
caller's ledger: ``bench/results/test_ledger.jsonl`` for the bench and the studies (committed with their results),
the run folder's own ``test_ledger.jsonl`` (:func:`haba_core.runfolder.ledger_entry`) for runs of the app, the CLI
and the notebooks. A line is appended under an exclusive lock, flushed and fsynced, so parallel evaluations (bench
cells in several processes) never interleave or lose one.

The evaluation entry points (``haba_core.evaluate``: ``evaluate_synset``, ``random_real_baseline``,
``evaluate_run``; the engine's in-run evaluation) take a :class:`LedgerEntry` (where, which run or cell, why) and
refuse to test without one (:func:`admit`); on the validation split they record nothing. A search
(``bench/val_search.py``, ``bench/plateau.py``) names itself in its entry: once the ledger holds a line of that
search from an earlier invocation, a new test is refused (:class:`RetestError`) unless the entry carries a
``retest_reason``, which its lines then record.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from haba_core import io
from haba_core.errors import ConfigError, HabaError
from haba_core.protocol import protocol_id

LEDGER_ENV = "HABA_TEST_LEDGER"
REPO = Path(__file__).resolve().parent.parent


def git_state() -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the checkout haba_core runs from; dirty: tracked files other than the
    results under ``bench/results/`` differ from the commit (a bench run rewrites those as it goes, which says
    nothing about the code that ran). ``{"commit": "unknown", "dirty": None}`` outside a git checkout."""
    try:
        run = lambda *args: subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
        sha = run("rev-parse", "HEAD").stdout.strip()
        dirty = bool(run("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results").stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": sha, "dirty": dirty}


def git_commit() -> str:
    """The commit as one string, ``<sha>+dirty`` when tracked files differ (what result files record)."""
    state = git_state()
    return state["commit"] + ("+dirty" if state["dirty"] else "")


def config_hash(config: Mapping[str, Any]) -> str:
    """12 hex digits of SHA-256 over ``config`` as sorted JSON: equal resolved configs, equal hashes."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def ledger_path(default: str | Path) -> Path:
    """``$HABA_TEST_LEDGER`` when it is set, else ``default``."""
    return Path(os.environ.get(LEDGER_ENV) or default)


def read_ledger(default: str | Path) -> list[dict]:
    """Every line of the ledger :func:`ledger_path` resolves ``default`` to ([] when there is none)."""
    return io.read_jsonl_strict(ledger_path(default))


def record_test_evaluation(
    path: str | Path,
    *,
    run: str,
    config: Mapping[str, Any],
    protocol: Mapping[str, Any],
    purpose: str,
    networks: int,
    **extra: Any,
) -> dict:
    """Append one line for an evaluation on the test split to the ledger at ``path`` (``$HABA_TEST_LEDGER``
    overrides it) and return it: ``time`` (UTC, ISO 8601), ``commit`` and ``dirty``, ``run`` (run folder, bench
    cell or search run), ``config_hash`` of the resolved ``config``, ``protocol_id`` and ``protocol`` (its name)
    of the ``protocol`` record, ``purpose``, the number of ``networks`` tested, then ``extra`` (nets, seeds, ...)."""
    line = {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        **git_state(),
        "run": str(run),
        "config_hash": config_hash(config),
        "protocol_id": protocol_id(protocol),
        "protocol": protocol.get("name"),
        "purpose": purpose,
        "networks": int(networks),
        **extra,
    }
    target = ledger_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.write(json.dumps(line, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    return line


class RetestError(HabaError):
    """A search asked to test again after an earlier invocation of it had tested (and no reason was given)."""


@dataclass(frozen=True)
class LedgerEntry:
    """Who evaluates on the test split and why: what a ledger line records besides the protocol and networks.

    ``path``: the default ledger (``$HABA_TEST_LEDGER`` overrides it); ``run``: the run folder, bench cell or search
    run; ``config``: the resolved config tested (hashed; entry points fill it in when empty); ``search``: the
    search this test concludes (its second test is refused); ``since``: when this invocation began (a search's
    lines from before it are an earlier invocation's)."""

    path: Path
    run: str
    purpose: str
    config: Mapping[str, Any] = field(default_factory=dict)
    search: str | None = None
    retest_reason: str | None = None
    since: float = field(default_factory=time.time)

    def check(self) -> None:
        """Before a test: raise :class:`RetestError` when this entry's search was tested by an earlier invocation
        (a line older than ``since``; times are kept to the millisecond) and no ``retest_reason`` is given."""
        if not self.search or self.retest_reason:
            return
        earlier = [
            line
            for line in read_ledger(self.path)
            if line.get("search") == self.search
            and datetime.fromisoformat(line["time"]).timestamp() < self.since - 1e-3
        ]
        if earlier:
            first = earlier[0]
            raise RetestError(
                f"Search {self.search!r} was already tested on the test split ({len(earlier)} line(s) in "
                f"{ledger_path(self.path)}, the first at {first['time']}, commit {str(first.get('commit'))[:12]}). "
                "Testing it again after seeing a test result lets the test set choose; decide on the validation "
                'split, or give the reason for a new test (--retest-reason "...") and it is recorded with it.'
            )

    def record(self, protocol: Mapping[str, Any], networks: int, **extra: Any) -> dict | None:
        """One ledger line for an evaluation under ``protocol`` of ``networks`` networks; nothing (None) when the
        protocol's split is not the test split."""
        if protocol.get("split", "test") != "test":
            return None
        if self.search:
            reason = {"retest_reason": self.retest_reason} if self.retest_reason else {}
            extra = {"search": self.search, **reason, **extra}
        return record_test_evaluation(
            self.path,
            run=self.run,
            config=self.config,
            protocol=protocol,
            purpose=self.purpose,
            networks=networks,
            **extra,
        )


def admit(entry: LedgerEntry | None, split: str, config: Mapping[str, Any], check: bool = True) -> LedgerEntry | None:
    """The entry an evaluation on ``split`` records through, its ``config`` filled in when it has none, checked
    (:meth:`LedgerEntry.check`) unless ``check`` is off; None on the validation split. An evaluation on the test
    split without an entry raises :class:`ConfigError`."""
    if split != "test":
        return None
    if entry is None:
        raise ConfigError(
            "An evaluation on the test split is recorded in a test ledger: pass ledger=LedgerEntry(...) "
            "(haba_core.ledger; a run folder's own: haba_core.runfolder.ledger_entry(run_dir, config)), or "
            "evaluate on the validation split (eval.split=val, with data.val_per_class)."
        )
    entry = entry if entry.config else dataclasses.replace(entry, config=dict(config))
    if check:
        entry.check()
    return entry
