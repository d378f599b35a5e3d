//! `--replay access.log`: the request paths of an nginx `combined` log,
//! replayed in the log's order (each thread starts at a different place).

use std::collections::HashMap;
use std::path::Path;

use super::Paths;
use crate::error::{Error, Result, io_context};
use crate::mix::Order;
use crate::url::Url;

/// Distinct paths and the order they appear in.
#[derive(Debug)]
pub struct Replay {
    pub paths: Vec<String>,
    pub sequence: Vec<u32>,
    /// Lines whose request was not a GET or HEAD of a path (probes, POSTs).
    pub skipped: usize,
}

pub fn load(file: &Path, base: &Url) -> Result<(Paths, usize)> {
    let what = format!("--replay {}", file.display());
    let bytes = std::fs::read(file).map_err(|e| io_context(&what, e))?;
    // Logs hold whatever clients sent; undecodable bytes only matter if they
    // break the line's structure.
    let text = String::from_utf8_lossy(&bytes);
    let r = parse(&text).map_err(|e| e.context(&what))?;
    Ok((
        Paths {
            base: base.clone(),
            paths: r.paths,
            order: Order::Sequence(r.sequence),
        },
        r.skipped,
    ))
}

pub fn parse(text: &str) -> Result<Replay> {
    let mut index: HashMap<&str, u32> = HashMap::new();
    let mut paths = Vec::new();
    let mut sequence = Vec::new();
    let mut skipped = 0;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let request = request_field(line).ok_or_else(|| {
            Error::new(format!(
                "line {}: not an nginx combined log line: {}",
                n + 1,
                clip(line)
            ))
        })?;
        let mut parts = request.split(' ');
        let path = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("GET" | "HEAD"), Some(p), Some(v), None)
                if p.starts_with('/') && v.starts_with("HTTP/") =>
            {
                p
            }
            _ => {
                skipped += 1;
                continue;
            }
        };
        let id = *index.entry(path).or_insert_with(|| {
            paths.push(path.to_string());
            (paths.len() - 1) as u32
        });
        sequence.push(id);
    }
    if sequence.is_empty() {
        return Err(Error::new("no GET or HEAD requests to replay"));
    }
    Ok(Replay {
        paths,
        sequence,
        skipped,
    })
}

/// The quoted request of `addr - user [time] "request" status bytes ...`.
fn request_field(line: &str) -> Option<&str> {
    let close = line.find("] \"")?;
    if !line[..close].contains(" [") {
        return None;
    }
    let rest = &line[close + 3..];
    let end = rest.find('"')?;
    let after = rest[end + 1..].trim_start();
    let status = after.split(' ').next()?;
    (status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit())).then_some(&rest[..end])
}

fn clip(line: &str) -> String {
    let s: String = line.chars().take(60).collect();
    if s.len() < line.len() {
        format!("{s}...")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"127.0.0.1 - - [10/Oct/2024:13:55:36 +0000] "GET /static/a.css HTTP/1.1" 200 2326 "-" "curl/8.0"
10.0.0.2 - bob [10/Oct/2024:13:55:37 +0000] "GET /media/b.png?x=1 HTTP/1.1" 304 0 "http://x/" "Mozilla/5.0 (X11)"
10.0.0.3 - - [10/Oct/2024:13:55:38 +0000] "POST /api HTTP/1.1" 201 12 "-" "-"
10.0.0.4 - - [10/Oct/2024:13:55:39 +0000] "\x16\x03\x01" 400 150 "-" "-"

127.0.0.1 - - [10/Oct/2024:13:55:40 +0000] "HEAD /static/a.css HTTP/1.1" 200 0 "-" "-"
"#;

    #[test]
    fn replays_get_and_head_paths_in_order() {
        let r = parse(LOG).unwrap();
        assert_eq!(r.paths, ["/static/a.css", "/media/b.png?x=1"]);
        assert_eq!(r.sequence, [0, 1, 0]);
        assert_eq!(r.skipped, 2);
    }

    #[test]
    fn rejects_lines_that_are_not_combined_format() {
        let e = parse("hello world\n").unwrap_err();
        assert!(
            e.0.starts_with("line 1: not an nginx combined log line"),
            "{e}"
        );
        assert!(parse(r#"1.2.3.4 - - [x] "GET / HTTP/1.1" abc 1 "-" "-""#).is_err());
        assert!(parse(r#"1.2.3.4 - - [x] "POST / HTTP/1.1" 200 1 "-" "-""#).is_err());
    }
}
