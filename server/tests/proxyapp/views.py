"""Views of the proxy-test app: each one shows the proxy something it must carry faithfully.

- ping/                 readiness probe of the test harness.
- hello/                a small HTML page.
- echo/...              JSON of what reached the app: method, raw URI, query string, every
                        HTTP_* header, the body's length and sha256 (read from wsgi.input, so a
                        chunked body counts too). `?status=N` answers with status N.
- form/                 a urlencoded POST, fields echoed back as JSON.
- upload/               a multipart upload (field `file`) saved under MEDIA_ROOT/uploads/.
- stream/?n=K           StreamingHttpResponse of K lines (`&delay_ms=D` between them;
                        `&gate=PATH`: after the first line, wait until the file PATH exists).
- big/?mb=N             N MiB of deterministic bytes (see `big_block`), streamed 64 KiB at a
                        time; `&length=1` declares Content-Length, otherwise gunicorn chunks it.
- protected/<name>      django-sendfile2's nginx backend: X-Accel-Redirect to
                        /protected-files/<name>, Content-Disposition attachment, an empty body
                        but Content-Length: the file's size (gunicorn keeps the connection open).
- accel/?to=URL         X-Accel-Redirect: URL verbatim, with a non-empty body the proxy must drop.
- slow/?secs=S          sleeps S seconds, then answers.
- reset/                sends the head and part of the body, then fails: gunicorn ends the
                        connection mid-response (`?framing=chunked` for a chunked response,
                        otherwise Content-Length is declared).
"""

import hashlib
import os
import time

from django.conf import settings
from django.core.files.storage import FileSystemStorage
from django.http import (
    HttpResponse,
    HttpResponseNotAllowed,
    JsonResponse,
    StreamingHttpResponse,
)
from django.views.decorators.csrf import csrf_exempt
from django_sendfile import sendfile

BLOCK = 1 << 16
_BASE = bytes(range(256)) * (BLOCK // 256)


def big_block(k):
    """Block k of /big/: k as 8 big-endian bytes, then bytes 0..255 repeating, rotated by k % 251.

    tests/proxy.rs builds the same bytes to check a download.
    """
    r = k % 251
    return k.to_bytes(8, "big") + (_BASE[r:] + _BASE[:r])[8:]


def _int(request, name, default):
    try:
        return int(request.GET.get(name, default))
    except ValueError:
        return default


def ping(request):
    return HttpResponse("pong\n", content_type="text/plain")


def hello(request):
    return HttpResponse(
        "<!doctype html><title>hello</title><p>Hello from the app behind bypass.</p>\n"
    )


@csrf_exempt
def echo(request):
    stream = request.META["wsgi.input"]
    digest = hashlib.sha256()
    length = 0
    while True:
        data = stream.read(BLOCK)
        if not data:
            break
        digest.update(data)
        length += len(data)
    body = {
        "method": request.method,
        "path": request.path,
        "raw_uri": request.META.get("RAW_URI"),
        "query_string": request.META.get("QUERY_STRING", ""),
        "remote_addr": request.META.get("REMOTE_ADDR"),
        "remote_port": request.META.get("REMOTE_PORT"),
        "content_length": request.META.get("CONTENT_LENGTH"),
        "content_type": request.META.get("CONTENT_TYPE"),
        "headers": {k: v for k, v in request.META.items() if k.startswith("HTTP_")},
        "body_len": length,
        "body_sha256": digest.hexdigest(),
    }
    resp = JsonResponse(body, status=_int(request, "status", 200))
    resp["X-Echo"] = "yes"
    return resp


@csrf_exempt
def form(request):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    return JsonResponse(
        {
            "content_type": request.META.get("CONTENT_TYPE"),
            "fields": {k: request.POST.getlist(k) for k in request.POST},
        }
    )


@csrf_exempt
def upload(request):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    upload = request.FILES.get("file")
    if upload is None:
        return JsonResponse({"error": "no file field"}, status=400)
    storage = FileSystemStorage(location=settings.MEDIA_ROOT)
    name = storage.save("uploads/" + upload.name, upload)
    digest = hashlib.sha256()
    size = 0
    with storage.open(name, "rb") as f:
        for chunk in iter(lambda: f.read(BLOCK), b""):
            digest.update(chunk)
            size += len(chunk)
    return JsonResponse(
        {
            "name": name,
            "size": size,
            "sha256": digest.hexdigest(),
            "url": settings.MEDIA_URL + name,
            "fields": {k: request.POST.getlist(k) for k in request.POST},
        }
    )


def stream(request):
    n = _int(request, "n", 10)
    delay = _int(request, "delay_ms", 0) / 1000
    gate = request.GET.get("gate")

    def lines():
        for i in range(n):
            if i and delay:
                time.sleep(delay)
            if i == 1 and gate:
                deadline = time.monotonic() + 30
                while not os.path.exists(gate) and time.monotonic() < deadline:
                    time.sleep(0.01)
            yield f"line {i} of {n}\n".encode()

    return StreamingHttpResponse(lines(), content_type="text/plain")


def big(request):
    blocks = _int(request, "mb", 1) * 16

    resp = StreamingHttpResponse(
        (big_block(k) for k in range(blocks)), content_type="application/octet-stream"
    )
    if request.GET.get("length"):
        resp["Content-Length"] = str(blocks * BLOCK)
    return resp


def protected(request, name):
    resp = sendfile(
        request, os.path.join(settings.SENDFILE_ROOT, name), attachment=True
    )
    resp["Cache-Control"] = "private, max-age=60"
    resp.set_cookie("downloaded", "1", httponly=True)
    return resp


def accel(request):
    resp = HttpResponse(
        "the app's own body, which the proxy must replace\n", content_type="text/plain"
    )
    resp["X-Accel-Redirect"] = request.GET.get("to", "")
    resp["X-Accel-Buffering"] = "no"
    resp["X-Accel-Limit-Rate"] = "1024"
    resp["Cache-Control"] = "private, max-age=60"
    return resp


def slow(request):
    secs = float(request.GET.get("secs", "1"))
    time.sleep(secs)
    return HttpResponse(f"slept {secs}\n", content_type="text/plain")


class ResetMidResponse(Exception):
    """Raised by /reset/ after part of the body has gone out."""


def reset(request):
    kib = _int(request, "kb", 64)

    def body():
        yield b"r" * (kib * 1024)
        raise ResetMidResponse("the app fails mid-response, as /reset/ is meant to")

    resp = StreamingHttpResponse(body(), content_type="application/octet-stream")
    if request.GET.get("framing") != "chunked":
        resp["Content-Length"] = str(1 << 20)
    return resp
