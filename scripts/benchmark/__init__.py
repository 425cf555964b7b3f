"""The chat benchmark: real WebSocket clients in separate processes against the chat server and two references.

Run it with ``scripts/bench`` (``--help`` lists the scenarios and their parameters). The harness
starts each server itself on a free loopback port, drives it from a pool of client processes
(``client.py``: picows on uvloop), reads the server's CPU and memory from ``/proc``, stops it, and
prints one table per scenario with the ratios between servers.
"""
