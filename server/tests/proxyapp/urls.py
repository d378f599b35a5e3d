"""URL routes of the proxy-test app (see views.py for what each one does)."""

from django.urls import path, re_path

from . import views

urlpatterns = [
    path("ping/", views.ping),
    path("hello/", views.hello),
    re_path(r"^echo/", views.echo),
    path("form/", views.form),
    path("upload/", views.upload),
    path("stream/", views.stream),
    path("big/", views.big),
    path("protected/<str:name>", views.protected),
    path("accel/", views.accel),
    path("slow/", views.slow),
    path("reset/", views.reset),
]
