//! Rendering requests to bytes, once, before the run: the hot path only copies
//! or points at these bytes.

use crate::error::{Error, Result};

/// What every request of a run shares: method, extra headers, connection reuse.
#[derive(Debug, Clone)]
pub struct Template {
    pub method: String,
    /// Extra `-H` headers as (name, value), in the order given.
    pub headers: Vec<(String, String)>,
    pub keepalive: bool,
}

impl Template {
    /// Renders one request; `accept_encoding` of `None` sends no such header.
    pub fn render(&self, authority: &str, path: &str, accept_encoding: Option<&str>) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + path.len());
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        if !self.has_header("host") {
            push_header(&mut out, "Host", authority);
        }
        for (name, value) in &self.headers {
            push_header(&mut out, name, value);
        }
        if let Some(ae) = accept_encoding {
            push_header(&mut out, "Accept-Encoding", ae);
        }
        if !self.keepalive && !self.has_header("connection") {
            push_header(&mut out, "Connection", "close");
        }
        // A body-carrying method without a body must say so, or a server may wait for one.
        if matches!(self.method.as_str(), "POST" | "PUT" | "PATCH")
            && !self.has_header("content-length")
        {
            push_header(&mut out, "Content-Length", "0");
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// HEAD responses carry no body whatever their Content-Length says.
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a `-H 'Name: value'` argument.
pub fn parse_header(s: &str) -> Result<(String, String)> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| Error::new(format!("-H {s:?}: expected 'Name: value'")))?;
    let name = name.trim();
    if !is_token(name) {
        return Err(Error::new(format!("-H {s:?}: invalid header name")));
    }
    let value = value.trim();
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(Error::new(format!("-H {s:?}: value contains a line break")));
    }
    Ok((name.to_string(), value.to_string()))
}

/// Checks a `--method` value is an HTTP token.
pub fn parse_method(s: &str) -> Result<String> {
    if is_token(s) {
        Ok(s.to_string())
    } else {
        Err(Error::new(format!(
            "--method {s:?}: not a valid HTTP method"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_headers() {
        let t = Template {
            method: "GET".into(),
            headers: vec![parse_header("X-A:  1 ").unwrap()],
            keepalive: false,
        };
        let r = t.render("h:8080", "/x", Some("br"));
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "GET /x HTTP/1.1\r\nHost: h:8080\r\nX-A: 1\r\nAccept-Encoding: br\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn user_host_wins_and_post_has_length() {
        let t = Template {
            method: "POST".into(),
            headers: vec![parse_header("host: example").unwrap()],
            keepalive: true,
        };
        let r = String::from_utf8(t.render("h", "/", None)).unwrap();
        assert_eq!(
            r,
            "POST / HTTP/1.1\r\nhost: example\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn rejects_bad_headers() {
        assert!(parse_header("NoColon").is_err());
        assert!(parse_header("Bad Name: x").is_err());
        assert!(parse_header(": x").is_err());
        assert!(parse_method("GE T").is_err());
    }
}
