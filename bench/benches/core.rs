//! The core's hot functions, one request's worth each: parsing a browser's request head,
//! decoding its target, choosing a precompressed representation, evaluating a Range, rendering
//! a response head, and the whole decision for a hashed static file (`Service::respond`), once
//! with the hot-asset cache (after the first call every request is a hit: the cache lookup and
//! the pre-rendered head) and once with `--cache-size 0` (the open-file table, validators,
//! negotiation and a freshly rendered head).

use std::hint::black_box;
use std::sync::Arc;

use bypass::config::{self, Command};
use bypass::files::path::decode_target;
use bypass::http::headers::Headers;
use bypass::http::request::{header_slots, parse};
use bypass::http::response::Head;
use bypass::serve::conditional::Validators;
use bypass::serve::negotiate::{Encoding, EncodingSet, choose};
use bypass::serve::range::evaluate;
use bypass::serve::reply::Output;
use bypass::serve::{Service, Site};
use criterion::{Criterion, criterion_group, criterion_main};

/// What Chrome sends for a stylesheet, give or take the cookie.
const BROWSER_HEAD: &[u8] = b"GET /static/admin/css/base.1f418065fc2c.css HTTP/1.1\r\n\
Host: www.example.com\r\n\
Connection: keep-alive\r\n\
sec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\", \"Not-A.Brand\";v=\"99\"\r\n\
sec-ch-ua-mobile: ?0\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
sec-ch-ua-platform: \"Linux\"\r\n\
Accept: text/css,*/*;q=0.1\r\n\
Sec-Fetch-Site: same-origin\r\n\
Sec-Fetch-Mode: no-cors\r\n\
Sec-Fetch-Dest: style\r\n\
Referer: https://www.example.com/admin/\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-GB,en;q=0.9\r\n\
Cookie: csrftoken=Yq0mZ5V1kW2nQ3xR4tS6uV8wX0yZ1a2b; sessionid=abcdefghijklmnopqrstuvwxyz012345\r\n\
\r\n";

fn http(c: &mut Criterion) {
    c.bench_function("parse browser head", |b| {
        b.iter(|| {
            let mut slots = header_slots();
            let r = parse(black_box(BROWSER_HEAD), &mut slots);
            black_box(matches!(r, Ok(Some(_))))
        })
    });
    c.bench_function("decode_target", |b| {
        b.iter(|| decode_target(black_box(b"/static/admin/css/base.1f418065fc2c.css?v=3")))
    });
    c.bench_function("render 200 head", |b| {
        let mut buf = Vec::with_capacity(512);
        b.iter(|| {
            buf.clear();
            let mut h = Head::start(&mut buf, 200);
            h.field("Content-Type", "text/css; charset=utf-8")
                .field_u64("Content-Length", black_box(23_345))
                .field("ETag", "\"6b028f37-5a28-br\"")
                .field("Last-Modified", "Sun, 22 Nov 2026 00:44:07 GMT")
                .field("Cache-Control", "max-age=31536000, immutable")
                .field("Content-Encoding", "br")
                .field("Vary", "Accept-Encoding")
                .field("X-Content-Type-Options", "nosniff");
            h.finish();
            black_box(buf.len())
        })
    });
}

fn decisions(c: &mut Criterion) {
    let mut available = EncodingSet::default();
    available.insert(Encoding::Brotli);
    available.insert(Encoding::Gzip);
    c.bench_function("negotiate browser Accept-Encoding", |b| {
        b.iter(|| {
            choose(
                [black_box(&b"gzip, deflate, br, zstd"[..])],
                black_box(available),
            )
        })
    });
    let validators = Validators {
        etag: b"\"6b028f37-5a28\"",
        last_modified: 1_795_000_000,
    };
    let single = [httparse::Header {
        name: "Range",
        value: b"bytes=1000-1999",
    }];
    let multi = [
        httparse::Header {
            name: "Range",
            value: b"bytes=0-99, 200-299, -100",
        },
        httparse::Header {
            name: "If-Range",
            value: b"\"6b028f37-5a28\"",
        },
    ];
    c.bench_function("range single", |b| {
        b.iter(|| evaluate(&Headers::new(black_box(&single)), &validators, 20_971_520))
    });
    c.bench_function("range multi + If-Range", |b| {
        b.iter(|| evaluate(&Headers::new(black_box(&multi)), &validators, 20_971_520))
    });
}

fn service(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    std::fs::create_dir_all(root.join("admin/css")).unwrap();
    let css = "body{margin:0}\n".repeat(1500);
    std::fs::write(root.join("admin/css/base.1f418065fc2c.css"), &css).unwrap();
    std::fs::write(
        root.join("admin/css/base.1f418065fc2c.css.br"),
        &css[..4000],
    )
    .unwrap();
    std::fs::write(
        root.join("admin/css/base.1f418065fc2c.css.gz"),
        &css[..5000],
    )
    .unwrap();
    std::fs::write(
        root.join("staticfiles.json"),
        r#"{"paths": {"admin/css/base.css": "admin/css/base.1f418065fc2c.css"}, "version": "1.1"}"#,
    )
    .unwrap();
    for (name, cache_size) in [
        ("Service::respond hashed static file, br, cache hit", None),
        (
            "Service::respond hashed static file, br, --cache-size 0",
            Some("0"),
        ),
    ] {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--static".into(),
            format!("/static/={}", root.display()).into(),
        ];
        if let Some(size) = cache_size {
            args.extend(["--cache-size".into(), size.into()]);
        }
        let Ok(Command::Serve(config)) = config::parse(args) else {
            panic!("bad bypass command line");
        };
        let site = Site::new(&config).expect("site");
        let mut service = Service::new(Arc::new(site));
        let mut out = Output::default();
        c.bench_function(name, |b| {
            b.iter(|| {
                let mut slots = header_slots();
                let Ok(Some(req)) = parse(BROWSER_HEAD, &mut slots) else {
                    unreachable!("the head parses");
                };
                service.respond(&req, true, &mut out);
                black_box(out.queued_replies());
                out.clear();
            })
        });
    }
}

criterion_group!(benches, http, decisions, service);
criterion_main!(benches);
