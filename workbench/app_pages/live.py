"""Live run: every named loss as it trains, and the synthetic images at any snapshot.

Watching must not slow the run: each poll reads only the metrics lines appended since the last one, redraws a
figure only when its data or settings changed (long curves thinned for display), renders the snapshot image
once per snapshot file, and stops polling when the run stops. The progress line and the newest loss values follow
the run (about once per logged step, at least every 3 s); the loss figure and the snapshot are redrawn less often
(every 10 and 15 s at most): redrawing a figure is what costs a run on the same machine, because every burst of the
browser's or the server's CPU stalls all the run's threads at once (bench/watch_overhead.py measures it)."""

import streamlit as st

from haba_core import runfolder as RF
from workbench import catalog as C
from workbench import figures as F
from workbench import grids as G
from workbench import runs as R
from workbench import ui
from workbench.pages import AppPage

PAGE = AppPage(title="Live run", icon=":material/monitoring:", order=30)

CURVE_EVERY_S = 10.0  # the loss figure at most this often (the progress line follows the run)
IMAGE_EVERY_S = 15.0  # the snapshot image, offset from the figure so that the two redraws rarely coincide

st.title("Live run")
runs = ui.all_runs()
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
show_system = st.toggle("Speed and memory", key="live.system_on", help="Plot step time and memory too.")
# Poll about once per logged step of the run (3-30 s), never for a run that is not running; figures less often.
poll = R.poll_interval(run)
curve_poll = None if poll is None else max(poll, CURVE_EVERY_S)
image_poll = None if poll is None else max(poll, IMAGE_EVERY_S)  # snapshots come every snapshot_every steps


def cached(slot: str, key: tuple, build):
    """``build()`` once per ``key`` (data version and settings): an unchanged figure or image is not rebuilt."""
    cache = st.session_state.setdefault("live.cache", {})
    hit = cache.get(slot)
    if hit is None or hit[0] != key:
        hit = cache[slot] = (key, build())
    return hit[1]


def metrics_tail(current: R.Run) -> R.MetricsTail:
    """This session's incremental reader of the run's metrics: each poll reads only the appended lines."""
    tails = st.session_state.setdefault("live.tails", {})
    tail = tails.get(str(current.path))
    if tail is None:
        tail = tails[str(current.path)] = R.MetricsTail(current.path / RF.METRICS)
    tail.poll()
    return tail


def stop_polling_if_done(current: R.Run) -> None:
    if poll is not None and not current.is_active:
        st.rerun(scope="app")  # the page is drawn once more, without polling


@st.fragment(run_every=poll)
def progress() -> None:
    current = C.refresh(run)
    if current is None:
        st.warning(f"Run {run.name!r} no longer exists.")
        return
    ui.status_line(current)
    ui.show_error(current)
    for note in current.status.get("notes") or []:  # what the run adjusted to its data or machine at start
        st.caption(f"Note: {note}")
    tail = metrics_tail(current)
    if tail.records:  # the newest values at the run's pace; the figure catches up at its own
        last = tail.records[-1]
        names = cached("names", (str(current.path), tail.version), lambda: R.loss_names(tail.records))
        numbers = [f"{k} {last[k]:.4g}" for k in names if isinstance(last.get(k), (int, float))]
        st.caption(f"Latest (step {last.get('step')}): " + ", ".join(numbers))
    stop_polling_if_done(current)


@st.fragment(run_every=curve_poll)
def curves() -> None:
    current = C.refresh(run)
    if current is None:
        return
    tail = metrics_tail(current)
    records = tail.records
    if not records:
        st.info(
            "No losses logged yet: the run is starting (loading data, building networks).", icon=":material/hourglass:"
        )
        return
    names = cached("names", (str(current.path), tail.version), lambda: R.loss_names(records))
    settings = (str(current.path), tail.version, smoothing, log_y)
    fig = cached("losses", settings, lambda: F.loss_figure(records, names, smoothing, log_y))
    st.plotly_chart(fig, key="live.losses", config={"displaylogo": False})
    if show_system:
        system = R.system_names(records)
        if system:
            fig = cached("system", settings, lambda: F.loss_figure(records, system, smoothing, False, 200))
            st.plotly_chart(fig, key="live.system", config={"displaylogo": False})


@st.fragment(run_every=image_poll)
def images() -> None:
    current = C.refresh(run)
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
    path = choices[label]
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = -1

    def render() -> tuple[str, str | None, bytes]:
        synset = ui.load_synset(path)
        s = synset.storage()
        caption = (
            f"{label}: {s.n_bases} bases per class x {synset.n_variants} "
            f"{synset.variant_name}(s); first images of each class. "
            f"{G.display_note(synset.info)}"
        )
        png = G.png_bytes(G.overview_image(synset, max_per_class=15, scale=2))
        return caption, G.health_note(synset), png

    try:  # rendered once per snapshot file, not once per poll
        caption, warning, png = cached("image", (str(path), stamp, label), render)
    except Exception as e:  # a missing or corrupted snapshot is shown, not raised
        st.session_state.get("live.cache", {}).pop("image", None)
        st.error(f"Cannot show snapshot {label}: {e}")
        return
    st.caption(caption)
    if warning:
        st.warning(warning, icon=":material/warning:")
    st.image(png, output_format="PNG")


progress()
st.subheader("Losses")
curves()
st.subheader("Synthetic images")
images()
