"""Side-by-side benchmark of quicserve, Hypercorn and Uvicorn on one minimal ASGI app.

Job: ``bench.app`` is the app every server runs, ``bench.run`` is the CLI
(``python -m bench.run``); see ``bench/README.md``. Nothing in ``quicserve`` imports this
package, and this package imports nothing from ``quicserve``: servers are black boxes started
as subprocesses.
"""
