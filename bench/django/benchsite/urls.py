"""/hello/ (a small dynamic page) and MEDIA_ROOT via django.views.static.serve."""

from django.conf import settings
from django.urls import path, re_path
from django.views.static import serve

from . import views

urlpatterns = [
    path("hello/", views.hello),
    re_path(r"^media/(?P<path>.*)$", serve, {"document_root": settings.MEDIA_ROOT}),
]
