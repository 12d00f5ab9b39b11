"""The operator console: a small web app served by the daemon itself (docs/operator-guide.md).

It reads through read-only snapshots of the store in a worker thread (never the state lock) and
acts through the same signed, journalled command path as ``prepay topup``. Starlette, uvicorn
and Jinja2 are imported only when a site configures a console (the daemon imports
`gateway.console.server` lazily).
"""
