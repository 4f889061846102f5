"""Live run: every named loss as it trains, and the synthetic images at any snapshot."""

import streamlit as st

from workbench import figures as F
from workbench import grids as G
from workbench import runs as R
from workbench import ui

st.title("Live run")
runs = R.list_runs()
if not runs:
    ui.no_runs()
    st.stop()

run = ui.run_picker(runs, "live")
c1, c2, c3 = st.columns([2, 1, 1], vertical_alignment="bottom")
smoothing = c1.slider(
    "Smoothing",
    0.0,
    0.99,
    0.0,
    0.01,
    key="live.smoothing",
    help="Exponential moving average of each curve (the raw curve stays faint behind it).",
)
log_y = c2.toggle("Log scale", key="live.log_y")
follow = c3.toggle("Follow latest snapshot", value=True, key="live.follow")
poll = ui.POLL_S if run.is_active else None


@st.fragment(run_every=poll)
def curves() -> None:
    current = R.get_run(run.name)
    if current is None:
        st.warning(f"Run {run.name!r} no longer exists.")
        return
    ui.status_line(current)
    ui.show_error(current)
    records = R.read_metrics(current)
    if not records:
        st.info(
            "No losses logged yet: the run is starting (loading data, building networks).", icon=":material/hourglass:"
        )
        return
    names = R.loss_names(records)
    st.plotly_chart(F.loss_figure(records, names, smoothing, log_y), key="live.losses", config={"displaylogo": False})
    last = records[-1]
    st.caption("Latest: " + ", ".join(f"{k} {last[k]:.4g}" for k in names if isinstance(last.get(k), (int, float))))
    system = R.system_names(records)
    if system:
        with st.expander("Speed and memory"):
            st.plotly_chart(
                F.loss_figure(records, system, smoothing, False, height_per_row=200),
                key="live.system",
                config={"displaylogo": False},
            )


@st.fragment(run_every=poll)
def images() -> None:
    current = R.get_run(run.name)
    if current is None:
        return
    choices = ui.snapshot_choices(current)
    every = (current.config or {}).get("snapshot_every")
    if not choices:
        st.info(
            f"No snapshot yet; the run saves one every {every} steps." if every else "No snapshot yet.",
            icon=":material/photo_library:",
        )
        return
    labels = list(choices)
    if follow or st.session_state.get("live.step") not in labels:
        st.session_state["live.step"] = labels[-1]
    if len(labels) > 1:
        label = st.select_slider(
            "Snapshot",
            labels,
            key="live.step",
            disabled=follow,
            help="Turn off 'Follow latest snapshot' to step through older ones.",
        )
    else:
        label = labels[0]
    try:
        synset = ui.load_synset(choices[label])
    except Exception as e:  # noqa: BLE001 - a missing or corrupted snapshot is shown, not raised
        st.error(f"Cannot show snapshot {label}: {e}")
        return
    s = synset.storage()
    st.caption(
        f"{label}: {s['n_bases']} bases per class x {max(1, s['n_hallucinators'])} "
        f"{'hallucinators' if synset.kind == 'haba' else 'image(s)'}; first images of each class. "
        f"{G.display_note(synset.info)}"
    )
    warning = G.health_note(synset)
    if warning:
        st.warning(warning, icon=":material/warning:")
    st.image(G.png_bytes(G.overview_image(synset, max_per_class=15, scale=2)), output_format="PNG")


st.subheader("Losses")
curves()
st.subheader("Synthetic images")
images()
