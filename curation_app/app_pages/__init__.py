"""Pages of the review studio (run through curation_app/streamlit_app.py)."""
