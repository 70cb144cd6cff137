"""The HTTP API: an app factory (`clobi.api.app.create_app`) with thin routes over the store and
sandbox contracts, token auth, and one place mapping Clobi's errors to HTTP statuses.

Needs the `server` extra (FastAPI, uvicorn). Import `clobi.api.app` only where a server runs.
"""
