"""HaBa workbench: `streamlit run app.py` (or `make app`). Only routing; pages live in workbench/app_pages/, each
declaring its title, icon and place (``workbench.pages``)."""

import streamlit as st
import torch

from workbench.pages import ordered_pages

# The server only draws small figures and snapshot images: on one thread it stays off the cores of the runs it
# watches (with two it stalled a 2-thread run on a 2-core machine; bench/watch_overhead.py measures it).
torch.set_num_threads(1)

st.set_page_config(page_title="HaBa workbench", page_icon=":material/blur_on:", layout="wide")
pages = [st.Page(p.path, title=p.title, icon=p.icon, default=(k == 0)) for k, p in enumerate(ordered_pages())]
st.navigation(pages).run()
