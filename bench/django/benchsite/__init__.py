"""The comparison suite's Django site: scripts/collectstatic's demo project, served by gunicorn.

It reuses the demo project's settings (installed apps, the full middleware stack, STATIC_ROOT and
WhiteNoise's CompressedManifestStaticFilesStorage) and adds what a WhiteNoise deployment has:
WhiteNoiseMiddleware right after SecurityMiddleware, a small view at /hello/, and MEDIA_ROOT
through Django's own django.views.static.serve (how uploads reach users when nothing sits in
front of the app server). Needs the demo project on sys.path and BYPASS_DEMO_OUT set, as
bypass-bench does when it starts gunicorn.
"""
