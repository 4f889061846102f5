"""HaBa workbench: `streamlit run app.py` (or `make app`). Only routing; pages live in workbench/app_pages/."""

import streamlit as st

from workbench.ui import PAGES, page_path

st.set_page_config(page_title="HaBa workbench", page_icon=":material/blur_on:", layout="wide")
pages = [st.Page(page_path(f), title=t, icon=i, default=(k == 0)) for k, (f, t, i) in enumerate(PAGES)]
st.navigation(pages).run()
