"""Findings: the committed results of the findings studies (``python -m bench.studies``), one section per question."""

import streamlit as st

from workbench import findings as FD
from workbench import findings_figures as FF
from workbench import runs as R
from workbench.pages import AppPage

PAGE = AppPage(title="Findings", icon=":material/science:", order=70)

CHART = {"displaylogo": False}
TABLE_CONFIG = {
    "line": "kind",
    "floats": st.column_config.NumberColumn("stored floats", format="localized"),
    "mean": st.column_config.NumberColumn("accuracy %", format="%.2f"),
    "std_seeds": st.column_config.NumberColumn("± seeds", format="%.2f"),
    "se": st.column_config.NumberColumn("± se", format="%.2f"),
    "std_nets": st.column_config.NumberColumn("± nets", format="%.2f"),
}

st.title("Findings")
root = FD.findings_dir()
st.caption(
    "The HaBa paper's questions as studies on Fashion-MNIST, each rerun by one command. Every arm is distilled with "
    "several seeds and each set trains several fresh networks; accuracy is the mean over distillation seeds of each "
    f"set's mean, ± the sample std across those seeds. Read from `{root}` (`${FD.FINDINGS_ENV}` moves it)."
)


def heading(name: str) -> tuple[dict | None, str]:
    """The section's heading and question; the study's JSON (None when missing or unreadable) and its command."""
    title, question = FD.STUDIES[name]
    study, problem = FD.load_study(name, root)
    st.header(title, divider="gray")
    st.markdown((study or {}).get("question") or question)
    command = (study or {}).get("command") or f"python -m bench.studies {name}"
    if problem:
        st.error(f"{problem}. Rerun `{command}` to write it again.", icon=":material/error:")
    elif study is None:
        st.info(f"Not run yet: there is no `{name}.json`. Run `{command}`.", icon=":material/hourglass_empty:")
    return study, command


def arm_status(study: dict, command: str) -> FD.Progress:
    """Protocol, seeds done of expected, the rerun command and, plainly, how much of the study has run."""
    p = FD.progress(study)
    seeds = ", ".join(str(s) for s in study.get("distill_seeds") or [])
    st.markdown(
        f"**Protocol:** {FD.protocol_text(study)} · **Seeds:** {p.seeds_done} of {p.seeds_expected} done "
        f"(distillation seeds {seeds or '?'}; {study.get('eval_seeds', '?')} networks per set) · "
        f"**Rerun:** `{command}`"
    )
    if len(study.get("protocols") or []) > 1:
        st.warning("Several protocols: compare only rows that share one.", icon=":material/rule:")
    if p.complete:
        st.caption(p.text())
    else:
        st.info(p.text(), icon=":material/hourglass_top:")
    commits = ", ".join(study.get("cell_commits") or []) or "-"
    emulated = study.get("bf16_emulated") or []
    st.caption(
        f"Report written at commit `{str(study.get('git_commit', '?'))[:12]}`; cells ran at {commits}."
        + (f" bf16 emulated (float32 arithmetic rounded to bf16) in {', '.join(emulated)}." if emulated else "")
    )
    return p


def arm_table(study: dict, columns=("line", "budget", "floats", "seeds", "mean", "std_seeds", "std_nets", "shape")):
    st.dataframe(FD.arm_table(study)[list(columns)], hide_index=True, column_config=TABLE_CONFIG)


def differences(study: dict) -> None:
    """The differences the study reports between arms (when its report has them), in an expander."""
    table = FD.comparisons_table(study)
    if not table.empty:
        title = f"Differences between arms ({len(table)}), ± the standard error over distillation seeds"
        with st.expander(title + " (none where an arm has one seed: then the sets of that seed)"):
            config = {"difference": st.column_config.NumberColumn(format="%+.2f"), "se": TABLE_CONFIG["se"]}
            st.dataframe(table, hide_index=True, column_config=config)


# -- RQ1 ----------------------------------------------------------------------------------------------------------
study, command = heading("frontier")
if study is not None:
    arm_status(study, command)
    points = FD.frontier_points(study)
    finished = [r for r in R.list_runs() if r.state == "finished"]
    by_name = {r.name: r for r in finished}
    yours = FD.run_points({r.name: e for r in finished if (e := R.read_evaluation(r))})
    chosen = st.multiselect(
        "Overlay your runs",
        list(dict.fromkeys(yours["run"])),
        key="findings.runs",
        format_func=lambda n: by_name[n].label,
        help="Your finished runs with a ConvNet evaluation (Evaluate page), as points: their bars are the std across "
        "evaluation networks of one set, not across distillation seeds.",
        placeholder="none of your finished runs has a ConvNet evaluation"
        if yours.empty
        else "choose runs to compare with the study",
    )
    overlay = yours[yours["run"].isin(chosen)]
    foreign = sorted(set(overlay["protocol"]) - set(study.get("protocols") or []))
    if foreign:
        st.warning(
            f"Your runs were evaluated under {', '.join(foreign)}, not the study's protocol: their points are not "
            "comparable with the lines (evaluate them with the study's settings first).",
            icon=":material/rule:",
        )
    left, right = st.columns([3, 2])
    if points.empty and overlay.empty:
        left.info("No arm has a result to plot yet.", icon=":material/hourglass_empty:")
    else:
        left.plotly_chart(FF.frontier_figure(points, overlay), key="findings.frontier", config=CHART)
    with right:
        arm_table(study, ("line", "budget", "floats", "seeds", "mean", "std_seeds"))
    differences(study)

# -- RQ2 ----------------------------------------------------------------------------------------------------------
div, command = heading("diversity")
if div is not None:
    rows = div.get("rows") or []
    metrics = div.get("metrics") or {}
    seeds = ", ".join(str(s) for s in sorted({r.get("seed") for r in rows if r.get("seed") is not None}))
    arms = len({r.get("arm") for r in rows})
    st.markdown(
        f"**Protocol:** {'; '.join(div.get('protocols') or []) or 'ConvNet test accuracy of each set, as recorded'} "
        f"· **Seeds:** {seeds or 'none yet'} ({len(rows)} sets over {arms} arms) · **Rerun:** `{command}`"
    )
    if not rows or not metrics:
        st.info("Not run yet: no distilled set has been measured.", icon=":material/hourglass_empty:")
    else:
        metric = st.selectbox("Metric", list(metrics), key="findings.metric")
        st.caption(str(metrics[metric]))
        corr = (div.get("correlation") or {}).get(metric)
        if corr:
            parts = [("all sets", corr)] + [(f"IPC {b}", c) for b, c in (corr.get("by_budget") or {}).items()]
            shown = [
                f"{what}: **ρ = {c['spearman']:.2f}** (n = {c['n']})" for what, c in parts if c["spearman"] is not None
            ]
            st.markdown("Spearman correlation with accuracy, " + " · ".join(shown) if shown else "No correlation yet.")
        left, right = st.columns(2)
        points = FD.diversity_points(div, metric)
        left.markdown(f"**{metric} against accuracy**, one point per distilled set; dotted: real images")
        figure = FF.diversity_figure(points, metric, FD.diversity_real(div, metric))
        left.plotly_chart(figure, key="findings.diversity", config=CHART)
        steps = FD.diversity_steps(div, metric)
        if not steps.empty:
            right.markdown(f"**{metric} during distillation**, mean over seeds")
            right.plotly_chart(FF.steps_figure(steps, metric), key="findings.steps", config=CHART)

# -- RQ3 ----------------------------------------------------------------------------------------------------------
study, command = heading("cross_arch")
if study is not None:
    arm_status(study, command)
    resnet, problem = FD.load_study("cross_arch_resnet18", root)
    resnet_command = (resnet or {}).get("command") or "python -m bench.studies cross_arch_resnet18"
    done = FD.progress(resnet).text() if resnet else f"not run yet{f' ({problem})' if problem else ''}."
    st.caption(f"ResNet18 trains on the IPC-1 sets (`{resnet_command}`): {done}")
    study = FD.with_nets_of(study, resnet)
    matrix = FD.cross_arch_matrix(study).dropna(how="all")
    if matrix.empty:
        st.info("No arm has a result to show yet.", icon=":material/hourglass_empty:")
    else:
        left, right = st.columns(2)
        left.markdown("**Mean accuracy (%)**, arms x architectures")
        left.plotly_chart(FF.heatmap_figure(matrix), key="findings.cross_arch", config=CHART)
        gain = FD.gain_over_reference(study)
        right.markdown(f"**Gain over {FD.REFERENCE_KIND}** of the same budget (percentage points), per architecture")
        if gain.empty:
            right.info(f"No {FD.REFERENCE_KIND} row yet to measure gains against.", icon=":material/hourglass_empty:")
        else:
            right.plotly_chart(FF.heatmap_figure(gain, True, "points"), key="findings.gain", config=CHART)
    with st.expander("Every arm (ConvNet)"):
        arm_table(study)
    differences(study)

# -- RQ4 ----------------------------------------------------------------------------------------------------------
study, command = heading("constraint")
if study is not None:
    arm_status(study, command)
    for budget in FD.budgets(study):
        st.subheader(f"IPC {budget:g}")
        bars, chosen = FD.constraint_bars(study, budget)
        if bars.empty:
            st.info("No ablation arm has a result to show yet.", icon=":material/hourglass_empty:")
        else:
            figure = FF.constraint_figure(bars, chosen)
            st.plotly_chart(figure, key=f"findings.constraint.{budget:g}", config=CHART)
        if chosen:
            st.caption("Dashed line: the chosen configuration (the frontier's HaBa arm at this budget), the reference.")
        else:
            st.caption("The chosen configuration comes from the frontier study and has no result yet (run it first).")
    with st.expander("Every arm (ConvNet)"):
        arm_table(study)
    differences(study)
