"""The application layer over ``haba_core``: run folders, jobs, figures and grids, and the Streamlit pages.

Only ``workbench/ui.py`` and ``workbench/app_pages/`` import Streamlit; everything else is plain Python that
notebooks and tests use directly.
"""
