"""Sans-IO protocol modules: h11 or httptools, h2 and aioquic.h3 in, neutral stream events out.

Nothing in this package awaits, sleeps, or touches a socket: it is fed bytes (or
datagrams) with the current time, and is asked for events, bytes to send and its next
timer. ``tests/test_sansio_imports.py`` checks that no module here imports anyio.
"""
