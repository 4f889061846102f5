"""The New run page's cost estimate: "Estimate cost" starts one probe of the form's config (``haba_core.cost``) in a
child process, so the page stays responsive while it builds the run and times a few iterations (seconds on the
presets, longer for large settings); the panel polls it and then shows seconds per iteration, total time and peak
memory. Nothing is written but the probe's temporary folder, removed once it is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import streamlit as st

from workbench import ui

if TYPE_CHECKING:
    from haba_core.cost import Estimate, ProbeJob

KEY = "new.cost"  # the last estimate (a CostState); set only by start()
HELP = (
    "Builds the run in a separate process and times a few iterations (seconds on the presets; nothing is written): "
    "seconds per iteration, total time and peak memory on this machine."
)


@dataclass
class CostState:
    """One press of "Estimate cost": the config it measures, its probe while it runs, then the outcome."""

    config: dict
    job: ProbeJob | None  # until its result has been read
    estimate: Estimate | None = None
    error: str = ""

    def settle(self) -> None:
        """Once the probe has finished: read its figures (or why it could not run) and remove its folder."""
        from haba_core.config import RunConfig
        from haba_core.cost import judge
        from haba_core.errors import HabaError

        if self.job is None or not self.job.done():
            return
        try:
            self.estimate = judge(RunConfig.from_dict(self.config), self.job.result())
        except HabaError as e:
            self.error = str(e)
        self.job.close()
        self.job = None


def start(config: dict) -> None:
    """Stop the last probe if it still runs and start one for ``config`` (a resolved RunConfig dict)."""
    from haba_core.config import RunConfig
    from haba_core.cost import start_probe

    last = st.session_state.get(KEY)
    if last is not None and last.job is not None:
        last.job.close()
    st.session_state[KEY] = CostState(config, start_probe(RunConfig.from_dict(config)))


def panel(config: dict | None) -> None:
    """The last estimate, if it was of ``config``; polled while its probe runs."""
    state = st.session_state.get(KEY)
    running = state is not None and state.job is not None
    st.fragment(run_every=ui.POLL_S if running else None)(_panel)(config)


def _panel(config: dict | None) -> None:
    from haba_core.cost import format_seconds

    state: CostState | None = st.session_state.get(KEY)
    if state is None:
        return
    if state.config != config:
        st.caption("The settings changed since the last estimate; press **Estimate cost** again.")
        return
    state.settle()
    if state.job is not None:
        st.info("Measuring: building the run and timing a few iterations in another process.", icon=":material/timer:")
        return
    if state.error:
        st.error(state.error, icon=":material/block:")
        return
    e = state.estimate
    m1, m2, m3 = st.columns(3)
    m1.metric("Seconds / iteration", f"{e.sec_per_iter:.3g}", help="Median of the timed probe iterations.")
    m2.metric("Total time", format_seconds(e.total_s), help="Startup plus iterations x seconds per iteration.")
    m3.metric("Peak memory", f"{e.peak_mb:,.0f} MB", help="Peak resident memory of the probe's process.")
    st.caption(f"{e.measured_note}; other processes share this machine, so times vary.")
    for what in e.not_included:
        st.caption(f"Not included: {what}.")
    for problem in e.problems:
        st.warning(problem, icon=":material/memory:")
