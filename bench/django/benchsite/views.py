"""The proxied-view workload: a small HTML page produced by a Django view, the same bytes on
every request (so each contender's answer can be checked by its length)."""

from pathlib import Path

from django.http import HttpResponse

PAGE = (Path(__file__).parent / "hello.html").read_bytes()


def hello(request):
    return HttpResponse(PAGE, content_type="text/html; charset=utf-8")
