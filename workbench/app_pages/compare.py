"""Compare: overlay the curves of several runs, and accuracy against storage."""

import pandas as pd
import streamlit as st

from haba_core import runfolder as RF
from workbench import figures as F
from workbench import runs as R
from workbench import ui
from workbench.pages import AppPage

PAGE = AppPage(title="Compare", icon=":material/compare_arrows:", order=60)

st.title("Compare runs")
runs = ui.all_runs()
if not runs:
    ui.no_runs()
    st.stop()

by_name = {r.name: r for r in runs}
with_metrics = [r.name for r in runs if (r.path / RF.METRICS).exists()]
chosen = st.multiselect("Runs", list(by_name), default=with_metrics[:3], key="compare.runs")
if not chosen:
    st.info("Choose runs to compare.")
    st.stop()

records = {n: R.read_metrics(by_name[n]) for n in chosen}
names = []
for recs in records.values():
    names += [k for k in R.loss_names(recs) if k not in names]

st.subheader("Curves")
if not names:
    st.info("None of these runs has logged a loss yet.")
else:
    c1, c2, c3, c4 = st.columns([2, 2, 1, 1], vertical_alignment="bottom")
    loss = c1.selectbox("Loss", names, index=names.index("loss") if "loss" in names else 0, key="compare.loss")
    smoothing = c2.slider("Smoothing", 0.0, 0.99, 0.6, 0.01, key="compare.smoothing")
    x = c3.radio("x axis", ["step", "time"], key="compare.x", horizontal=True)
    log_y = c4.toggle("Log scale", key="compare.log_y")
    st.plotly_chart(
        F.overlay_figure(records, loss, smoothing, log_y, x), key="compare.curves", config={"displaylogo": False}
    )

rows = []
for n in chosen:
    r = by_name[n]
    last = records[n][-1] if records[n] else {}
    rows.append(
        {
            "run": n,
            "state": r.state,
            "dataset": r.dataset,
            "backend": r.method,
            "synset": r.synset_kind,
            "budget (IPC)": r.storage.get("budget_ipc"),
            "storage (IPC-eq.)": r.storage.get("ipc_equivalent"),
            "images/class": r.storage.get("images_per_class"),
            "steps": r.step,
            "s/iter": r.status.get("sec_per_iter"),
            "last loss": last.get("loss"),
        }
    )
st.dataframe(pd.DataFrame(rows), hide_index=True, key="compare.table")

st.subheader("Accuracy against storage")
evaluations = {n: R.read_evaluation(by_name[n]) for n in chosen}
df = F.accuracy_records({n: e for n, e in evaluations.items() if e})
if df.empty:
    st.info("None of these runs has been evaluated yet; use the **Evaluate** page.", icon=":material/fact_check:")
    st.page_link(ui.page_path("evaluate.py"), label="Evaluate", icon=":material/fact_check:")
else:
    mixed = F.protocol_warning(df)
    if mixed:
        st.warning(mixed, icon=":material/rule:")
    nets = sorted(df["net"].unique())
    net = st.selectbox("Architecture", nets, key="compare.net")
    st.plotly_chart(F.accuracy_vs_storage(df, net), key="compare.acc", config={"displaylogo": False})
