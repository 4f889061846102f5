"""Runs: every run with its state, progress and time left; cancel, resume or delete one; a failed run's error.
Runs the bench, its demo and the studies made are listed too, read-only: they are theirs to rerun or remove."""

import time

import pandas as pd
import streamlit as st

from workbench import catalog as C
from workbench import jobs as J
from workbench import runs as R
from workbench import ui
from workbench.pages import AppPage

PAGE = AppPage(title="Runs", icon=":material/list:", order=20)

st.title("Runs")
st.caption(
    f"Run folders in `{R.runs_dir()}`, and, read-only, those that `make demo`, the bench and the studies made "
    f"(`{C.bench_dir()}`); this page refreshes every {ui.POLL_S:g} s."
)


def table(runs: list[R.Run]) -> None:
    rows = []
    for r in runs:
        started = r.status.get("started_at") or r.status.get("queued_at")
        rows.append(
            {
                "run": r.title,
                "from": r.origin.label or "app",
                "state": r.state,
                "progress": r.progress,
                "step": f"{r.step} / {r.iterations}",
                "time left": R.format_duration(r.eta_s),
                "s/iter": r.status.get("sec_per_iter"),
                "dataset": r.dataset,
                "backend": r.method,
                "synset": r.synset_kind,
                "storage (IPC-eq.)": r.storage.get("ipc_equivalent"),
                "started": time.strftime("%m-%d %H:%M", time.localtime(started)) if started else "",
            }
        )
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        key="runs.table",
        column_config={
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
            "s/iter": st.column_config.NumberColumn(format="%.2f"),
            "storage (IPC-eq.)": st.column_config.NumberColumn(format="%.3f"),
        },
    )


def actions(run: R.Run) -> None:
    ui.status_line(run)
    ui.show_error(run)
    for p in run.problems:
        st.warning(p)
    ui.read_only_note(run)
    c1, c2, c3 = st.columns(3)
    if c1.button(
        "Cancel",
        key="runs.cancel",
        disabled=run.read_only or not run.is_active,
        icon=":material/stop_circle:",
        help=run.origin.reason or "Stop after the current iteration; the run checkpoints and can be resumed.",
    ):
        try:
            st.toast(J.cancel_run(run.name))
        except (J.JobError, OSError) as e:
            st.error(str(e))
        st.rerun(scope="fragment")
    if c2.button(
        "Resume",
        key="runs.resume",
        disabled=not run.can_resume,
        icon=":material/play_circle:",
        help=run.origin.reason or "Continue from the last checkpoint.",
    ):
        try:
            J.resume_run(run.name)
            st.toast(f"Resumed {run.name}.")
        except (J.JobError, OSError) as e:
            st.error(str(e))
        st.rerun(scope="fragment")
    if c3.button("Open live view", key="runs.open", icon=":material/monitoring:"):
        ui.remember_run(run.name)
        st.switch_page(ui.page_path("live.py"))
    if not run.read_only:  # a run the bench made is the bench's to remove
        delete(run)
    with st.expander("Log", icon=":material/description:"):
        st.code(R.tail(run.path / J.LOG) or "(empty)", language="text")
    with st.expander("Config", icon=":material/settings:"):
        st.json(run.config or {}, expanded=False)


def delete(run: R.Run) -> None:
    with st.expander("Delete this run", icon=":material/delete:"):
        if run.is_active:
            st.caption("Cancel the run before deleting it.")
        confirm = st.text_input(f"Type **{run.name}** to confirm", key="runs.confirm")
        if st.button(
            "Delete permanently", key="runs.delete", type="primary", disabled=run.is_active or confirm != run.name
        ):
            try:
                J.delete_run(run.name, confirm)
                st.session_state.pop("runs.confirm", None)
                ui.remember_run(None)
                st.toast(f"Deleted {run.name}.")
            except (J.JobError, R.RunNameError, OSError) as e:
                st.error(str(e))
            st.rerun()


@st.fragment(run_every=ui.POLL_S)
def page() -> None:
    runs = ui.all_runs()
    if not runs:
        ui.no_runs()
        return
    counts = {s: sum(r.state == s for r in runs) for s in (*R.STATES, R.DIED)}
    st.markdown("  ".join(f"{ui.badge(s)} {n}" for s, n in counts.items() if n))
    table(runs)
    st.subheader("Run")
    run = ui.run_picker(runs, "runs", show_state=True)
    if run is not None:
        actions(run)


page()
