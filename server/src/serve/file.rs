//! The response to a GET or HEAD of one file representation: preconditions, ranges, and the
//! head that goes with them. Pure: it sees metadata, never the file.

use super::conditional::{self, Precondition, Validators};
use super::negotiate::Encoding;
use super::range::{self, ByteRange, RangeOutcome};
use super::reply::ConnectionHeader;
use crate::http::date;
use crate::http::request::{Method, Request};
use crate::http::response::{Head, write_content_range};

/// What the response needs to know about the representation on disk.
#[derive(Clone, Copy, Debug)]
pub struct FileMeta<'a> {
    pub len: u64,
    /// Strong entity-tag, quotes included.
    pub etag: &'a [u8],
    /// Seconds since the epoch.
    pub last_modified: u64,
}

/// How the mount wants this representation served.
#[derive(Clone, Copy, Debug)]
pub struct FilePolicy<'a> {
    pub content_type: &'a str,
    pub encoding: Encoding,
    pub cache_control: &'a [u8],
    /// The resource has precompressed siblings, so every response for it varies.
    pub vary_accept_encoding: bool,
    /// Untrusted content that could run script: download instead of render.
    pub attachment: bool,
    /// Untrusted content: sandbox any document a browser makes of it.
    pub sandbox: bool,
    /// Further fields, rendered as header lines: those an app set on an X-Accel-Redirect.
    pub extra: &'a [u8],
}

/// Which bytes of the representation follow the head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyPlan {
    None,
    /// One contiguous range (the whole file for a 200).
    Range(ByteRange),
    /// multipart/byteranges: each part's header bytes, then its range; then the closing
    /// delimiter.
    Multipart {
        parts: Vec<(Vec<u8>, ByteRange)>,
        closing: Vec<u8>,
    },
}

/// Renders the head into `out` and says which bytes follow it. `boundary` is used for
/// multipart/byteranges; it must be long and random enough not to occur in files.
pub fn respond(
    req: &Request<'_>,
    meta: &FileMeta<'_>,
    policy: &FilePolicy<'_>,
    connection: ConnectionHeader,
    boundary: &str,
    out: &mut Vec<u8>,
) -> BodyPlan {
    let validators = Validators {
        etag: meta.etag,
        last_modified: meta.last_modified,
    };
    let safe = matches!(req.method, Method::Get | Method::Head);
    match conditional::evaluate(&req.headers, &validators, safe) {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            // RFC 9110 §15.4.5: the fields a cache needs to update its stored response, and
            // no representation metadata.
            let mut head = Head::start(out, 304);
            head.field("ETag", meta.etag)
                .field("Cache-Control", policy.cache_control);
            if policy.vary_accept_encoding {
                head.field("Vary", "Accept-Encoding");
            }
            sandbox(&mut head, policy);
            head.raw(policy.extra);
            connection.write(&mut head);
            head.finish();
            return BodyPlan::None;
        }
        Precondition::Failed => {
            let mut head = Head::start(out, 412);
            head.field_u64("Content-Length", 0);
            sandbox(&mut head, policy);
            connection.write(&mut head);
            head.finish();
            return BodyPlan::None;
        }
    }

    // Range applies to GET only (RFC 9110 §14.2); HEAD answers as a GET without Range would.
    let outcome = if req.method == Method::Get {
        range::evaluate(&req.headers, &validators, meta.len)
    } else {
        RangeOutcome::Full
    };
    match outcome {
        RangeOutcome::Full => {
            let mut head = Head::start(out, 200);
            representation_fields(&mut head, meta, policy);
            head.field_u64("Content-Length", meta.len);
            connection.write(&mut head);
            head.finish();
            body_unless_head(
                req,
                BodyPlan::Range(ByteRange {
                    start: 0,
                    len: meta.len,
                }),
            )
        }
        RangeOutcome::Unsatisfiable => {
            let mut head = Head::start(out, 416);
            head.content_range(None, meta.len)
                .field_u64("Content-Length", 0);
            if policy.vary_accept_encoding {
                head.field("Vary", "Accept-Encoding");
            }
            sandbox(&mut head, policy);
            connection.write(&mut head);
            head.finish();
            BodyPlan::None
        }
        RangeOutcome::Partial(ranges) if ranges.len() == 1 => {
            let r = ranges[0];
            let mut head = Head::start(out, 206);
            representation_fields(&mut head, meta, policy);
            head.content_range(Some((r.start, r.start + r.len - 1)), meta.len)
                .field_u64("Content-Length", r.len);
            connection.write(&mut head);
            head.finish();
            BodyPlan::Range(r)
        }
        RangeOutcome::Partial(ranges) => {
            let mut parts = Vec::with_capacity(ranges.len());
            let mut total = 0u64;
            for (i, r) in ranges.iter().enumerate() {
                let mut part = Vec::with_capacity(128);
                // The CRLF before each delimiter belongs to the delimiter (RFC 2046 §5.1.1);
                // the first one may be omitted, but sending it is valid and uniform.
                if i > 0 {
                    part.extend_from_slice(b"\r\n");
                }
                part.extend_from_slice(b"--");
                part.extend_from_slice(boundary.as_bytes());
                part.extend_from_slice(b"\r\nContent-Type: ");
                part.extend_from_slice(policy.content_type.as_bytes());
                part.extend_from_slice(b"\r\nContent-Range: ");
                write_content_range(&mut part, Some((r.start, r.start + r.len - 1)), meta.len);
                part.extend_from_slice(b"\r\n\r\n");
                total += part.len() as u64 + r.len;
                parts.push((part, *r));
            }
            let closing = format!("\r\n--{boundary}--\r\n").into_bytes();
            total += closing.len() as u64;

            let mut head = Head::start(out, 206);
            let mut multipart = Vec::with_capacity(64);
            multipart.extend_from_slice(b"multipart/byteranges; boundary=");
            multipart.extend_from_slice(boundary.as_bytes());
            head.field("Content-Type", &multipart);
            common_fields(&mut head, meta, policy);
            head.field_u64("Content-Length", total);
            connection.write(&mut head);
            head.finish();
            BodyPlan::Multipart { parts, closing }
        }
    }
}

/// Renders the `200` head [`respond`] gives a plain GET of the whole representation on a
/// keep-alive HTTP/1.1 connection: what the content cache stores.
pub fn render_ok_head(
    len: u64,
    etag: &[u8],
    last_modified: u64,
    policy: &FilePolicy<'_>,
    out: &mut Vec<u8>,
) {
    let meta = FileMeta {
        len,
        etag,
        last_modified,
    };
    let mut head = Head::start(out, 200);
    representation_fields(&mut head, &meta, policy);
    head.field_u64("Content-Length", meta.len);
    ConnectionHeader::Default.write(&mut head);
    head.finish();
}

fn body_unless_head(req: &Request<'_>, plan: BodyPlan) -> BodyPlan {
    if req.method == Method::Head {
        BodyPlan::None
    } else {
        plan
    }
}

/// The fields describing the representation itself.
fn representation_fields(head: &mut Head<'_>, meta: &FileMeta<'_>, policy: &FilePolicy<'_>) {
    head.field("Content-Type", policy.content_type);
    common_fields(head, meta, policy);
}

/// Fields every 200/206 for this representation carries, multipart included.
fn common_fields(head: &mut Head<'_>, meta: &FileMeta<'_>, policy: &FilePolicy<'_>) {
    if policy.encoding != Encoding::Identity {
        head.field("Content-Encoding", policy.encoding.token());
    }
    head.field("ETag", meta.etag)
        .field("Last-Modified", date::format(meta.last_modified))
        .field("Cache-Control", policy.cache_control)
        .field("Accept-Ranges", "bytes");
    if policy.vary_accept_encoding {
        head.field("Vary", "Accept-Encoding");
    }
    head.field("X-Content-Type-Options", "nosniff");
    if policy.attachment {
        head.field("Content-Disposition", "attachment");
    }
    sandbox(head, policy);
    head.raw(policy.extra);
}

/// Every response from an untrusted mount is sandboxed, whatever its status.
fn sandbox(head: &mut Head<'_>, policy: &FilePolicy<'_>) {
    if policy.sandbox {
        head.field("Content-Security-Policy", "sandbox");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request::{header_slots, parse};

    const ETAG: &[u8] = b"\"5f1a-64\"";

    fn run(raw: &str, policy: FilePolicy<'_>) -> (String, BodyPlan) {
        let mut slots = header_slots();
        let req = parse(raw.as_bytes(), &mut slots).unwrap().unwrap();
        let meta = FileMeta {
            len: 100,
            etag: ETAG,
            last_modified: 784111777,
        };
        let mut out = Vec::new();
        let plan = respond(
            &req,
            &meta,
            &policy,
            ConnectionHeader::Default,
            "BOUNDARY",
            &mut out,
        );
        (String::from_utf8(out).unwrap(), plan)
    }

    fn css() -> FilePolicy<'static> {
        FilePolicy {
            content_type: "text/css; charset=utf-8",
            encoding: Encoding::Identity,
            cache_control: b"max-age=60",
            vary_accept_encoding: true,
            attachment: false,
            sandbox: false,
            extra: &[],
        }
    }

    #[test]
    fn whole_file() {
        let (head, plan) = run("GET /a.css HTTP/1.1\r\nHost: x\r\n\r\n", css());
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
        for field in [
            "Content-Type: text/css; charset=utf-8",
            "Content-Length: 100",
            "ETag: \"5f1a-64\"",
            "Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT",
            "Cache-Control: max-age=60",
            "Accept-Ranges: bytes",
            "Vary: Accept-Encoding",
            "X-Content-Type-Options: nosniff",
        ] {
            assert!(
                head.contains(&format!("\r\n{field}\r\n")),
                "missing {field} in {head}"
            );
        }
        assert!(!head.contains("Content-Encoding"));
        assert_eq!(plan, BodyPlan::Range(ByteRange { start: 0, len: 100 }));
    }

    #[test]
    fn head_has_the_same_fields_and_no_body() {
        let (get, _) = run("GET /a.css HTTP/1.1\r\nHost: x\r\n\r\n", css());
        let (head, plan) = run(
            "HEAD /a.css HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0\r\n\r\n",
            css(),
        );
        assert_eq!(get, head);
        assert_eq!(plan, BodyPlan::None);
    }

    #[test]
    fn not_modified_carries_cache_fields_only() {
        let (head, plan) = run(
            "GET /a.css HTTP/1.1\r\nHost: x\r\nIf-None-Match: W/\"5f1a-64\"\r\n\r\n",
            css(),
        );
        assert!(head.starts_with("HTTP/1.1 304 Not Modified\r\n"));
        assert!(head.contains("\r\nETag: \"5f1a-64\"\r\n"));
        assert!(head.contains("\r\nCache-Control: max-age=60\r\n"));
        assert!(head.contains("\r\nVary: Accept-Encoding\r\n"));
        assert!(!head.contains("Content-Length") && !head.contains("Content-Type"));
        assert_eq!(plan, BodyPlan::None);
    }

    #[test]
    fn precondition_failed() {
        let (head, plan) = run(
            "GET /a.css HTTP/1.1\r\nHost: x\r\nIf-Match: \"other\"\r\n\r\n",
            css(),
        );
        assert!(head.starts_with("HTTP/1.1 412 "));
        assert!(head.contains("Content-Length: 0\r\n"));
        assert_eq!(plan, BodyPlan::None);
    }

    #[test]
    fn single_and_multiple_ranges() {
        let (head, plan) = run(
            "GET /a.css HTTP/1.1\r\nHost: x\r\nRange: bytes=-10\r\n\r\n",
            css(),
        );
        assert!(head.starts_with("HTTP/1.1 206 "));
        assert!(head.contains("\r\nContent-Range: bytes 90-99/100\r\n"));
        assert!(head.contains("\r\nContent-Length: 10\r\n"));
        assert_eq!(plan, BodyPlan::Range(ByteRange { start: 90, len: 10 }));

        let (head, plan) = run(
            "GET /a.css HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0,-1\r\n\r\n",
            css(),
        );
        assert!(head.contains("\r\nContent-Type: multipart/byteranges; boundary=BOUNDARY\r\n"));
        let BodyPlan::Multipart { parts, closing } = plan else {
            panic!("{plan:?}")
        };
        assert_eq!(parts.len(), 2);
        let first = String::from_utf8(parts[0].0.clone()).unwrap();
        assert_eq!(
            first,
            "--BOUNDARY\r\nContent-Type: text/css; charset=utf-8\r\nContent-Range: bytes 0-0/100\r\n\r\n"
        );
        assert!(String::from_utf8_lossy(&parts[1].0).starts_with("\r\n--BOUNDARY\r\n"));
        assert_eq!(closing, b"\r\n--BOUNDARY--\r\n");
        let total: u64 = parts
            .iter()
            .map(|(h, r)| h.len() as u64 + r.len)
            .sum::<u64>()
            + closing.len() as u64;
        assert!(head.contains(&format!("\r\nContent-Length: {total}\r\n")));
    }

    #[test]
    fn unsatisfiable() {
        let (head, plan) = run(
            "GET /a.css HTTP/1.1\r\nHost: x\r\nRange: bytes=100-\r\n\r\n",
            css(),
        );
        assert!(head.starts_with("HTTP/1.1 416 "));
        assert!(head.contains("\r\nContent-Range: bytes */100\r\n"));
        assert_eq!(plan, BodyPlan::None);
    }

    #[test]
    fn untrusted_media_and_encodings() {
        let policy = FilePolicy {
            content_type: "text/html; charset=utf-8",
            encoding: Encoding::Brotli,
            cache_control: b"no-cache",
            vary_accept_encoding: false,
            attachment: true,
            sandbox: true,
            extra: &[],
        };
        let (head, _) = run("GET /m/x.html HTTP/1.1\r\nHost: x\r\n\r\n", policy);
        assert!(head.contains("\r\nContent-Encoding: br\r\n"));
        assert!(head.contains("\r\nContent-Disposition: attachment\r\n"));
        assert!(head.contains("\r\nContent-Security-Policy: sandbox\r\n"));
        assert!(!head.contains("Vary"));
    }
}
