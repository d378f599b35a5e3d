"""A small real Django project that bypass's proxy tests put behind bypass (tests/proxy.rs).

Served by gunicorn, started by tests/common/gunicorn.rs. No database, no auth, no sessions:
only views that show what reached the app and produce the response shapes a proxy must carry.
"""
