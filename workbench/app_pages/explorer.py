"""Hallucinator x basis explorer: every hallucination of a class's bases, and how different they are."""

import streamlit as st

from workbench import diversity as D
from workbench import figures as F
from workbench import grids as G
from workbench import ui
from workbench.pages import AppPage

PAGE = AppPage(title="Explorer", icon=":material/grid_view:", order=40)

MAX_COLUMNS = 16

st.title("Hallucinator x basis explorer")
st.caption("One row per hallucinator, one column per basis; the top row is the bare basis. Click a cell to enlarge it.")
all_runs = ui.all_runs()
if not all_runs:
    ui.no_runs()
    st.stop()
runs = [r for r in all_runs if ui.snapshot_choices(r)]
if not runs:
    st.info(
        "No run has a snapshot yet; a run saves its synthetic set every `snapshot_every` steps.",
        icon=":material/photo_library:",
    )
    st.stop()

run = ui.run_picker(runs, "explorer")
choices = ui.snapshot_choices(run)
labels = list(choices)
c1, c2, c3 = st.columns([2, 2, 1])
with c1:
    if len(labels) > 1:
        label = st.select_slider("Snapshot", labels, value=labels[-1], key="explorer.step")
    else:
        label = labels[0]
        st.markdown(f"Snapshot: **{label}**")
try:
    synset = ui.load_synset(choices[label])
except Exception as e:  # missing or unreadable snapshot
    st.error(f"Cannot open snapshot {label} of {run.name}: {e}", icon=":material/broken_image:")
    st.stop()

info = synset.info
warning = G.health_note(synset)
if warning:
    st.warning(warning, icon=":material/warning:")
cls = c2.selectbox(
    "Class", list(range(info.num_classes)), key="explorer.class", format_func=lambda c: f"{c}: {info.class_names[c]}"
)
zoom = c3.slider("Zoom", 1, 8, 4 if max(info.im_size) <= 32 else 2, key="explorer.zoom")
start = 0
if synset.n_bases > MAX_COLUMNS:
    start = st.slider("First basis shown", 0, synset.n_bases - MAX_COLUMNS, 0, key="explorer.start")
grid = G.class_grid(synset, cls, max_bases=MAX_COLUMNS, start=start)
image = G.grid_image(grid, scale=zoom)
names = G.row_labels(grid)
layout = image.info["grid"]

left, right = st.columns([3, 2], gap="large")
with left:
    fig = F.grid_figure(
        image,
        layout["rows"],
        layout["cols"],
        layout["cell"],
        layout["origin"],
        layout["pitch"],
        names,
        [f"basis {start + i}" for i in range(grid.n_bases)],
    )
    event = st.plotly_chart(
        fig, key="explorer.grid", on_select="rerun", selection_mode="points", config={"displayModeBar": False}
    )
    st.download_button(
        "Download grid (PNG)",
        G.png_bytes(image),
        key="explorer.download_grid",
        mime="image/png",
        file_name=f"{run.safe_name}_{label.replace(' ', '')}_class{cls}.png",
        icon=":material/download:",
    )
    st.caption(G.display_note(info))

# a click on the grid picks the large view (set before its widgets are drawn)
points = [p for p in (event.selection.points if event else []) if p.get("curve_number") == 1]
if points:
    idx = int(points[0].get("point_index", points[0].get("point_number", 0)))
    clicked = (label, cls, start, *divmod(idx, layout["cols"]))
    if st.session_state.get("explorer.clicked") != clicked:
        st.session_state["explorer.clicked"] = clicked
        st.session_state["explorer.cell_row"] = clicked[3] - 1  # grid row 0 is the bare basis (-1)
        st.session_state["explorer.cell_col"] = start + clicked[4]

with right:
    st.subheader("Diversity")
    if grid.n_hallucinators < 2:
        st.info("This synset stores plain images (one per basis): there are no hallucinations to compare.")
    else:
        d = D.hallucination_diversity(grid.images, info)
        st.caption(
            "Distances between hallucinations of the **same basis** (within), and between **different "
            "bases** under one hallucinator (between, a reference scale)."
        )
        m1, m2 = st.columns(2)
        m1.metric(
            "Pixel, within",
            f"{d['pixel_within']:.3f}",
            help="Mean RMS distance between two hallucinations of one basis (normalized units).",
        )
        m2.metric(
            "Pixel, between",
            "n/a" if d["pixel_between"] is None else f"{d['pixel_between']:.3f}",
            help="The same distance between different bases under one hallucinator (needs 2+ bases).",
        )
        if d["feature_within"] is not None:
            m1.metric(
                "Feature 1-cos, within",
                f"{d['feature_within']:.3f}",
                help="1 - cosine similarity of the embeddings of a fixed random ConvNet (seed 0).",
            )
            m2.metric(
                "Feature 1-cos, between", "n/a" if d["feature_between"] is None else f"{d['feature_between']:.3f}"
            )
        elif d["feature_error"]:
            st.caption(f"Feature distances unavailable: {d['feature_error']}")
        if d["pixel_between"]:
            st.markdown(
                f"Hallucinations of one basis differ **{d['pixel_within'] / d['pixel_between']:.2f}x** as "
                "much as different bases do (pixel distance)."
            )
        st.dataframe(
            [{"basis": start + r["basis"], "pixel": r["pixel"], "feature 1-cos": r["feature"]} for r in d["per_basis"]],
            hide_index=True,
            height=min(300, 38 + 35 * len(d["per_basis"])),
            key="explorer.per_basis",
        )
        st.caption(f"Means over {d['pairs_within']} pairs of hallucinations in class {cls}.")

    st.subheader("Large view")
    rows = [-1] + list(range(grid.n_hallucinators))
    cols = list(range(start, start + grid.n_bases))
    if st.session_state.get("explorer.cell_row") not in rows:
        st.session_state["explorer.cell_row"] = rows[min(1, len(rows) - 1)]
    if st.session_state.get("explorer.cell_col") not in cols:
        st.session_state["explorer.cell_col"] = cols[0]
    r1, r2 = st.columns(2)
    row = r1.selectbox(
        "Row",
        rows,
        key="explorer.cell_row",
        format_func=lambda j: (
            "bare basis" if j < 0 else (f"{grid.variant_name} {j}" if grid.n_hallucinators > 1 else grid.variant_name)
        ),
    )
    col = r2.selectbox("Basis", cols, key="explorer.cell_col")
    big = G.cell_image(grid, row, col - start, size=320)
    st.image(
        G.png_bytes(big),
        output_format="PNG",
        caption=f"class {cls}, basis {col}, " + ("bare basis" if row < 0 else f"hallucinator {row}"),
    )
    st.download_button(
        "Download this image (PNG)",
        G.png_bytes(big),
        key="explorer.download_cell",
        mime="image/png",
        file_name=f"{run.safe_name}_{label.replace(' ', '')}_class{cls}_b{col}_{'basis' if row < 0 else f'h{row}'}.png",
    )
