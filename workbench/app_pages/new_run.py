"""New run: choose what to distill, see live what the storage budget buys, and launch it in the background."""

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from workbench import estimate as E
from workbench import jobs as J
from workbench import newrun as NR
from workbench import runs as R
from workbench import ui
from workbench.pages import AppPage

PAGE = AppPage(title="New run", icon=":material/add_circle:", order=10)

ENGINE_DEFAULTS = "(engine defaults)"


def key(dotted: str) -> str:
    """Session key of the widget for config key ``dotted``."""
    return f"new.v.{dotted}"


def reset(prefix: str = "new.v.") -> None:
    """Forget widget values under ``prefix`` so they show the (new) defaults again."""
    for k in [k for k in st.session_state if str(k).startswith(prefix)]:
        del st.session_state[k]


def on_dataset_change() -> None:
    reset(key("synset.basis_size"))


def on_backend_change() -> None:
    reset(key("method.params."))


@st.cache_data(show_spinner=False)
def preset_config(path: str, mtime: float) -> dict:
    return NR.preset_config(Path(path) if path else None)


@st.cache_data(show_spinner=False)
def dataset_facts(name: str, options_json: str):
    from haba_core.data import dataset_info

    return dataset_info(name, **json.loads(options_json))


def field(spec: NR.FieldSpec, default, where=st):
    """The widget for one hyperparameter; its value as the widget holds it."""
    k = key(spec.key)
    value = NR.widget_value(spec, default)
    help_ = f"`{spec.key}`, engine default `{spec.default!r}`. {spec.help}".strip()
    if spec.kind == "list" and spec.choices:
        return where.multiselect(spec.label, spec.choices, default=list(default or ()), key=k, help=help_)
    if spec.choices:  # a Literal field or one declaring its choices
        options = list(spec.choices)
        return where.selectbox(
            spec.label, options, index=options.index(value) if value in options else 0, key=k, help=help_
        )
    if spec.kind == "bool":
        return where.checkbox(spec.label, value=bool(value), key=k, help=help_)
    if spec.kind == "opt_bool":
        options = [NR.AUTO, "true", "false"]
        return where.selectbox(spec.label, options, index=options.index(value), key=k, help=help_)
    if spec.kind in ("int", "opt_int", "float", "opt_float"):
        cast = int if spec.kind in ("int", "opt_int") else float
        return where.number_input(
            spec.label,
            min_value=None if spec.min_value is None else cast(spec.min_value),  # the field's range
            value=None if value is None else cast(value),
            format=None if cast is int else "%g",
            step=1 if cast is int else NR.float_step(value),
            key=k,
            help=help_,
            placeholder="none",
        )
    return where.text_input(spec.label, value="" if value is None else str(value), key=k, help=help_)


def widgets(specs: list[NR.FieldSpec], defaults: dict, base: dict | None = None, nets: list[str] = ()) -> None:
    """Widgets for ``specs`` in three columns; defaults from ``defaults`` (by key), else ``base`` (a config)."""
    cols = st.columns(3)
    for i, s in enumerate(specs):
        default = defaults[s.key] if s.key in defaults else NR.get_dotted(base or {}, s.key)
        if default is None and s.key.startswith("synset.params."):
            default = s.default  # an option of another kind than the preset's
        if s.key == "eval.nets":
            cols[i % 3].multiselect(
                "nets",
                list(nets),
                default=[n for n in default or [] if n in nets],
                key=key(s.key),
                format_func=lambda n: NR.label("net", n),
                help=f"`eval.nets`: {s.help}.",
            )
        else:
            field(s, default, cols[i % 3])


def collect(specs: list[NR.FieldSpec], values: dict, errors: list[str]) -> None:
    for s in specs:
        try:
            values[s.key] = NR.config_value(s, st.session_state.get(key(s.key)))
        except ValueError as e:
            errors.append(str(e))


# -- page -------------------------------------------------------------------------------------------------------
st.title("New run")
cluster = ui.cluster_address()  # MTT experts launched from here run on this Ray cluster when set
st.caption(
    "Distill a synthetic set in a separate `python -m haba_core distill` process. The defaults launch as they are; "
    "the panel on the right shows what the storage budget buys before anything starts."
)

preset_files = NR.presets()
preset_names = [ENGINE_DEFAULTS] + [p.name for p in preset_files]
default_preset = NR.default_preset(preset_files)
form, side = st.columns([3, 2], gap="large")

with form:
    preset_name = st.selectbox(
        "Preset",
        preset_names,
        key="new.preset",
        on_change=reset,
        index=preset_names.index(default_preset.name) if default_preset else 0,
        help="An experiment file from `configs/`: it sets the defaults below (changing it resets the form).",
    )
    preset_path = next((p for p in preset_files if p.name == preset_name), None)
    base = preset_config(str(preset_path or ""), preset_path.stat().st_mtime if preset_path else 0.0)
    backends, backend_problem = NR.available_backends()

    c1, c2, c3 = st.columns(3)
    datasets = NR.available_datasets()
    dataset = c1.selectbox(
        "Dataset",
        datasets,
        key=key("data.name"),
        on_change=on_dataset_change,
        index=datasets.index(base["data"]["name"]) if base["data"]["name"] in datasets else 0,
        format_func=lambda d: NR.label("dataset", d),
        help=NR.help_text("dataset", datasets),
    )
    backend_options = backends or [base["method"]["name"]]  # every registered backend
    method = c2.selectbox(
        "Backend",
        backend_options,
        key=key("method.name"),
        on_change=on_backend_change,
        index=backend_options.index(base["method"]["name"]) if base["method"]["name"] in backend_options else 0,
        format_func=lambda b: NR.label("method", b) + ("" if b in backends else " (not available)"),
        help=NR.help_text("method", backends) if backends else None,
    )
    kinds = NR.available_synsets()  # every registered synset kind
    kind = c3.radio(
        "Synset",
        kinds,
        key=key("synset.kind"),
        horizontal=True,
        index=kinds.index(base["synset"]["kind"]) if base["synset"]["kind"] in kinds else 0,
        format_func=lambda k: NR.label("synset", k),
        help=NR.help_text("synset", kinds),
    )

    c1, c2, c3 = st.columns(3)
    c1.number_input(
        "Storage budget (IPC-equivalent)",
        min_value=0.01,
        value=float(base["synset"]["budget_ipc"] or 1.0),
        step=1.0,
        format="%g",
        key=key("synset.budget_ipc"),
        help=f"`synset.budget_ipc`: {NR.field_spec('synset.budget_ipc').help}.",
    )
    for spec in NR.synset_option_specs():  # kind options shown on the form itself (the rest: Advanced > Synset)
        if spec.key in NR.MAIN_KEYS:
            c2.number_input(
                spec.label.removeprefix("n ").capitalize(),  # "n hallucinators" -> "Hallucinators"
                min_value=None if spec.min_value is None else int(spec.min_value),
                value=int(NR.get_dotted(base, spec.key) or spec.default),
                step=1,
                key=key(spec.key),
                disabled=not NR.synset_takes(kind, spec),
                help=f"`{spec.key}`. {spec.help}",
            )
    options_json = json.dumps(base["data"].get("options") or {}, sort_keys=True)
    try:  # the Advanced tab's data.options, once it has been drawn
        options_json = json.dumps(json.loads(st.session_state.get(key("data.options")) or options_json), sort_keys=True)
    except (ValueError, TypeError):
        pass
    try:
        info = dataset_facts(dataset, options_json)
        sizes = [NR.AUTO] + list(range(min(info.im_size), 3, -1))
    except Exception as e:  # explained in the side panel by the check below
        info, sizes = None, [NR.AUTO]
        st.error(f"Dataset {dataset!r}: {e}")
    preset_size = base["synset"].get("basis_size")
    auto_size = None
    if info is not None:
        kind_options = {  # the chosen kind's options as the form holds them (Advanced > Synset once drawn)
            s.key.rsplit(".", 1)[-1]: st.session_state.get(key(s.key), s.default)
            for s in NR.synset_option_specs()
            if NR.synset_takes(kind, s)
        }
        try:
            auto_size = NR.auto_basis_size(info, kind, st.session_state.get(key("synset.budget_ipc")), **kind_options)
        except Exception:  # a bad option value is explained in the side panel by the check below
            auto_size = None
    auto_label = f"auto ({auto_size or min(info.im_size)}x{auto_size or min(info.im_size)})" if info else "auto"
    c3.selectbox(
        "Basis size",
        sizes,
        key=key("synset.basis_size"),
        index=sizes.index(preset_size) if preset_size in sizes else 0,
        format_func=lambda s: auto_label if s == NR.AUTO else f"{s}x{s}",
        help=f"`synset.basis_size`: {NR.field_spec('synset.basis_size').help}.",
    )

    c1, c2, c3 = st.columns(3)
    for where, name, step in ((c1, "iterations", 50), (c2, "seed", 1)):
        spec = NR.field_spec(name)
        where.number_input(
            name.capitalize(),
            min_value=int(spec.min_value),
            value=int(base[name]),
            step=step,
            key=key(name),
            help=f"`{name}`: {spec.help}.",
        )
    devices = ["auto", "cpu"]
    try:
        import torch

        if torch.cuda.is_available():
            devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    c3.selectbox(
        "Device",
        devices,
        key=key("device"),
        index=devices.index(base["device"]) if base["device"] in devices else 0,
        help=f"`device`: {NR.field_spec('device').help}.",
    )

    # -- every other hyperparameter ---------------------------------------------------------------------------
    specs = [s for s in NR.field_specs() if s.key not in NR.MAIN_KEYS]
    m_specs = NR.method_specs(method)
    e_field = NR.expert_field(method)  # the folder of expert trajectories, when the backend declares it needs one
    base_method = base["method"]["params"] if base["method"]["name"] == method else {}
    method_defaults = {s.key: base_method.get(s.key.rsplit(".", 1)[-1], s.default) for s in m_specs or ()}
    if e_field is not None and not method_defaults.get(e_field.key):
        method_defaults[e_field.key] = f"experts/{dataset}"
    net_name_default = base["net"].get("name", "convnet")
    nets = NR.available_nets()
    tab_names = ["Backend", "Synset", "HaBa constraint", "Network", "Data", "Loop", "Evaluation", "Overrides"]
    by_tab = {"synset": "Synset", "haba": "HaBa constraint", "data": "Data", "eval": "Evaluation"}
    with st.expander("Advanced: every hyperparameter", icon=":material/tune:"):
        tabs = dict(zip(tab_names, st.tabs(tab_names), strict=True))
        with tabs["Backend"]:
            if m_specs is None:
                st.info(f"{method.upper()} is not available in this engine, so it has no settings to show.")
            widgets(m_specs or [], method_defaults)
        for name in ("Synset", "HaBa constraint", "Data", "Loop", "Evaluation"):
            with tabs[name]:
                widgets([s for s in specs if by_tab.get(s.section, "Loop") == name], {}, base, nets)
        with tabs["Network"]:
            net_name = st.selectbox(
                "distillation network",
                nets,
                key=key("net.name"),
                index=nets.index(net_name_default) if net_name_default in nets else 0,
                format_func=lambda n: NR.label("net", n),
            )
            net_params = base["net"].get("params", {}) if net_name == net_name_default else {}
            n_specs = NR.net_specs(net_name, net_params)
            widgets(n_specs, {s.key: net_params.get(s.key.rsplit(".", 1)[-1], s.default) for s in n_specs})
        with tabs["Overrides"]:
            st.text_area(
                "Dotted overrides, one `key=value` per line (they win over everything above)",
                key="new.set_lines",
                height=120,
                placeholder="method.lr_img=100\nnet.width=32",
            )
    experts_dir = None
    if e_field is not None:
        experts_dir = Path(st.session_state.get(key(e_field.key)) or method_defaults[e_field.key])
        who = NR.label("method", method)
        with st.container(border=True):
            st.markdown(f"**{who} expert trajectories** in `{experts_dir}` (`{e_field.key}`, Advanced > Backend)")
            job = J.experts_job(experts_dir)
            if J.has_experts(experts_dir) and not (job and job[0] == "running"):
                st.success("Experts found.", icon=":material/check_circle:")
            elif job and job[0] == "running":
                st.info(f"Training experts; {who} can start when they are done.", icon=":material/hourglass:")
                st.code(job[1] or "(no output yet)", language="text")
            elif J.experts_available():
                st.warning(f"No experts there yet: {who} matches their training trajectories.")
                if st.button("Train experts first", key="new.train_experts", icon=":material/model_training:"):
                    try:
                        J.launch_experts(dataset, experts_dir, address=cluster)
                        st.rerun()
                    except (J.JobError, OSError) as e:
                        st.error(str(e))
            else:
                st.warning(f"This engine cannot train {who} experts yet (no `python -m haba_core experts`).")

    # -- the config this form stands for -----------------------------------------------------------------------
    values: dict = {}
    form_errors: list[str] = []
    main_specs = [s for s in NR.field_specs() if s.key in NR.MAIN_KEYS and s.key != "synset.basis_size"]
    collect(main_specs, values, form_errors)
    values["method.name"], values["synset.kind"], values["data.name"] = method, kind, dataset
    size = st.session_state.get(key("synset.basis_size"), NR.AUTO)
    full = info is not None and size == min(info.im_size)
    values["synset.basis_size"] = NR.AUTO if size == NR.AUTO else (None if full else int(size))
    collect(specs, values, form_errors)
    collect(m_specs or [], values, form_errors)
    values["net.name"] = st.session_state.get(key("net.name"), net_name_default)
    collect(n_specs, values, form_errors)
    try:
        config = NR.build_config(base, values, NR.parse_set_lines(st.session_state.get("new.set_lines", "")))
        result = NR.check(config, None if backend_problem else backends, experts_dir)
    except Exception as e:  # a malformed override line, explained instead of crashing
        result = NR.Check(errors=[str(e)])
    result.errors[:0] = form_errors

    st.divider()
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    run_name = c1.text_input(
        "Run name",
        key="new.name",
        placeholder="automatic (dataset_backend_synset_budget_time)",
        help="Letters, digits, '-', '_' and '.'; the run's folder in the runs directory.",
    )
    launch = c2.button(
        "Launch",
        type="primary",
        key="new.launch",
        disabled=not result.ok,
        icon=":material/rocket_launch:",
        width="stretch",
    )

with side:
    st.subheader("What the budget buys")
    if result.plan is not None:
        p = result.plan.to_dict()
        m1, m2 = st.columns(2)
        m1.metric("Images per class", p["images_per_class"], help="Every basis x hallucinator pair is an image.")
        m2.metric("Budget used", f"{100 * p['budget_used']:.1f}%" if p.get("budget_used") else "n/a")
        rows = NR.breakdown_rows(result.plan)
        st.table(pd.DataFrame({"": [r[1] for r in rows]}, index=[r[0] for r in rows]), border="horizontal")
    if st.button("Estimate cost", key="new.estimate", disabled=not result.ok, icon=":material/timer:", help=E.HELP):
        E.start(result.config)
    E.panel(result.config)
    set_lines = NR.parse_set_lines(st.session_state.get("new.set_lines", ""))
    if set_lines:
        st.info(
            "Overrides from the Advanced tab win over the form: " + ", ".join(f"`{s}`" for s in set_lines),
            icon=":material/edit_note:",
        )
    for note in result.notes:
        st.info(note, icon=":material/info:")
    for w in result.warnings:
        st.warning(w)
    if result.errors:
        st.markdown("**Cannot launch yet:**")
        for err in result.errors:
            st.error(err, icon=":material/block:")
    else:
        st.success("Ready to launch.", icon=":material/check_circle:")
    if backend_problem:
        st.caption(f"Engine backends failed to load: {backend_problem}")
    if result.config:
        with st.expander("Resolved config (written to config.json)"):
            st.json(result.config, expanded=False)

if launch and result.ok:
    name = run_name.strip() or R.suggest_name(
        [dataset, method, kind, f"ipc{NR.get_dotted(result.config, 'synset.budget_ipc'):g}"]
    )
    try:
        J.launch_run(name, result.config)
    except (R.RunNameError, J.JobError, ValueError) as e:
        st.error(str(e))
    else:
        ui.remember_run(name)
        st.switch_page(ui.page_path("live.py"))
