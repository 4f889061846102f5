"""Evaluate: train fresh networks of several architectures on runs' synthetic sets, in the background."""

import time

import streamlit as st

from workbench import figures as F
from workbench import jobs as J
from workbench import newrun as NR
from workbench import runs as R
from workbench import ui
from workbench.pages import AppPage

PAGE = AppPage(title="Evaluate", icon=":material/fact_check:", order=50)

st.title("Evaluate")
st.caption(
    "Cross-architecture evaluation: `python -m haba_core evaluate` trains fresh networks on each run's final set "
    "(else its latest snapshot) and tests them on real data; mean ± std over seeds, with a random-real baseline."
)
all_runs = ui.all_runs()
if not all_runs:
    ui.no_runs()
    st.stop()
with_sets = [r for r in all_runs if ui.snapshot_choices(r)]
# an evaluation writes into the run folder (its job, log, results and test ledger): never into one the bench made
runs = [r for r in with_sets if not r.read_only]
held = len(with_sets) - len(runs)
nets = NR.available_nets()
address = ui.cluster_address()

with st.container(border=True):
    st.markdown("**New evaluation**")
    if not runs:
        st.info(
            "None of this app's runs has a synthetic set yet."
            if held
            else "No run has a synthetic set yet (none has reached its first snapshot).",
            icon=":material/info:",
        )
    else:
        names = [r.name for r in runs]
        shared = st.session_state.get(ui.SELECTED_RUN)
        chosen = st.multiselect("Runs", names, default=[shared] if shared in names else names[:1], key="eval.runs")
        c1, c2, c3, c4 = st.columns([3, 1, 1, 1.2], vertical_alignment="bottom")
        picked_nets = c1.multiselect(
            "Architectures",
            nets,
            default=["convnet"] if "convnet" in nets else nets[:1],
            key="eval.nets",
            format_func=lambda n: NR.label("net", n),
        )
        seeds = c2.number_input("Seeds", 1, 20, 3, key="eval.seeds", help="Networks trained per architecture.")
        default_epochs = int(((runs[0].config or {}).get("eval") or {}).get("epochs") or 300)
        epochs = c3.number_input("Epochs", 1, 5000, default_epochs, key="eval.epochs")
        baseline = c4.checkbox(
            "Baseline",
            value=True,
            key="eval.baseline",
            help="Also train on random real images at the same storage (IPC-equivalent).",
        )
        if address:
            st.caption(f"Tasks run on the Ray cluster at `{address}` (sidebar); clear the address to run here.")
        extra = st.text_input(
            "Extra eval settings (`key=value`, comma-separated)",
            key="eval.extra",
            placeholder="eval.pairing=all, eval.batch=128",
        )
        if st.button(
            "Launch evaluation",
            type="primary",
            key="eval.launch",
            disabled=not (chosen and picked_nets),
            icon=":material/rocket_launch:",
        ):
            sets = [s.strip() for s in extra.split(",") if s.strip()]
            for name in chosen:
                try:
                    J.launch_evaluation(name, picked_nets, int(seeds), int(epochs), baseline, sets, address=address)
                    st.toast(f"Evaluating {name}...")
                except (J.JobError, OSError) as e:
                    st.error(f"{name}: {e}")
    if held:
        st.caption(
            f"{held} run(s) made by `make demo`, the bench or the studies are not offered: an evaluation writes its "
            "results into the run folder, and theirs stay as the bench left them (the bench evaluates its own cells; "
            "see its tables). Their results, if any, are shown below."
        )


@st.fragment(run_every=ui.POLL_S)
def jobs_and_results() -> None:
    current = ui.all_runs()
    read_only = {r.name for r in current if r.read_only}
    jobs = {r.name: J.eval_job(r.path) for r in current}
    jobs = {n: j for n, j in jobs.items() if j is not None}
    evaluations = {r.name: R.read_evaluation(r) for r in current}
    evaluations = {n: e for n, e in evaluations.items() if e}
    if jobs:
        st.subheader("Evaluation jobs")
        for name, job in sorted(jobs.items(), key=lambda kv: -kv[1].started_at):
            started = time.strftime("%m-%d %H:%M", time.localtime(job.started_at))
            nets_s = ", ".join(job.info.get("nets", []))
            color = {"running": "blue", "finished": "green", "failed": "red"}.get(job.state, "gray")
            c1, c2 = st.columns([5, 1], vertical_alignment="center")
            c1.markdown(
                f"**{name}**: :{color}[{job.state}] · {nets_s} · {job.info.get('seeds')} seeds · "
                f"{job.info.get('epochs')} epochs · started {started}"
                + (f" · on Ray at `{job.info['address']}`" if job.info.get("executor") == "ray" else "")
            )
            if job.state == "running" and name not in read_only and c2.button("Cancel", key=f"eval.cancel.{name}"):
                st.toast(J.cancel_evaluation(name))
            if job.state == "failed":  # as the evaluate process recorded it (exit code and reason)
                why, code = job.info.get("error"), job.info.get("exit_code")
                exit_code = f" (exit code {code})" if code else ""
                st.error(f"The evaluation of {name} failed{exit_code}" + (f": {why}" if why else "") + "; its log:")
                st.code(job.log or "(empty log)", language="text")
                earlier = float((evaluations.get(name) or {}).get("started_at") or 0)
                if 0 < earlier < job.started_at - 1:
                    when = time.strftime("%m-%d %H:%M", time.localtime(earlier))
                    st.caption(f"The accuracy matrix below shows {name}'s earlier evaluation, started {when}.")
            elif job.state == "running":
                with st.expander(f"Log of {name}"):
                    st.code(job.log or "(no output yet)", language="text")

    st.subheader("Accuracy matrix")
    if not evaluations:
        st.info("No evaluation results yet.", icon=":material/table:")
        return
    shown = st.multiselect("Show runs", list(evaluations), default=list(evaluations), key="eval.show")
    df = F.accuracy_records({n: evaluations[n] for n in shown})
    if df.empty:
        st.info("Choose runs with results.")
        return
    mixed = F.protocol_warning(df)
    if mixed:
        st.warning(mixed, icon=":material/rule:")
    st.plotly_chart(F.accuracy_heatmap(df), key="eval.heatmap", config={"displaylogo": False})
    st.markdown("Test accuracy (%), mean ± std over seeds; the accuracy of the final network, never the best.")
    st.dataframe(F.accuracy_table(df), key="eval.table")
    st.download_button(
        "Download CSV",
        df.to_csv(index=False).encode(),
        file_name="haba_accuracy.csv",
        mime="text/csv",
        key="eval.csv",
        icon=":material/download:",
    )
    with st.expander("Protocols"):
        for n in shown:
            proto = (evaluations[n].get("synset") or {}).get("protocol")
            if proto:
                st.markdown(f"**{n}**: " + ", ".join(f"{k} `{v}`" for k, v in proto.items()))


jobs_and_results()
