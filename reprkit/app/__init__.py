"""Streamlit dashboard and plotly figure builders."""
