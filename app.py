"""HaBa workbench: `streamlit run app.py` (or `make app`). Only routing; pages live in workbench/app_pages/."""

import streamlit as st
import torch

from workbench.ui import PAGES, page_path

# The server only draws small figures and snapshot images: on one thread it stays off the cores of the runs it
# watches (with two it stalled a 2-thread run on a 2-core machine; scripts/watch_overhead.py measures it).
torch.set_num_threads(1)

st.set_page_config(page_title="HaBa workbench", page_icon=":material/blur_on:", layout="wide")
pages = [st.Page(page_path(f), title=t, icon=i, default=(k == 0)) for k, (f, t, i) in enumerate(PAGES)]
st.navigation(pages).run()
