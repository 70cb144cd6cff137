"""Sandbox store: content-addressed input archives and per-attempt output archives."""
