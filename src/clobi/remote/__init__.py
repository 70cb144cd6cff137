"""Remote engines: `RemoteStore` and `RemoteSandbox` speak to a Clobi server over HTTP(S), so
`Client` and the agent work unchanged against a URL session (`--session https://…`).

Only the composition root (`clobi.session`) creates them. Needs `httpx`.
"""
