//! Rendering response heads: status line, header fields, the blank line.

use super::date;

/// The reason phrase sent for a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Appends a response head to a buffer, field by field.
///
/// Every response starts with the status line, `Date` and `Server`; the caller adds the rest
/// and calls [`Head::finish`].
pub struct Head<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Head<'a> {
    pub fn start(buf: &'a mut Vec<u8>, status: u16) -> Self {
        buf.extend_from_slice(b"HTTP/1.1 ");
        push_u64(buf, u64::from(status));
        buf.push(b' ');
        buf.extend_from_slice(reason(status).as_bytes());
        buf.extend_from_slice(b"\r\nDate: ");
        buf.extend_from_slice(&date::current());
        buf.extend_from_slice(b"\r\nServer: bypass\r\n");
        Head { buf }
    }

    pub fn field(&mut self, name: &str, value: impl AsRef<[u8]>) -> &mut Self {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        self.buf.extend_from_slice(value.as_ref());
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    pub fn field_u64(&mut self, name: &str, value: u64) -> &mut Self {
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b": ");
        push_u64(self.buf, value);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// `Content-Range: bytes first-last/len`, or `bytes */len` when `range` is `None`.
    pub fn content_range(&mut self, range: Option<(u64, u64)>, len: u64) -> &mut Self {
        self.buf.extend_from_slice(b"Content-Range: ");
        write_content_range(self.buf, range, len);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// Appends fields already rendered as header lines (each ending in CRLF).
    pub fn raw(&mut self, lines: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(lines);
        self
    }

    /// Ends the head with the empty line.
    pub fn finish(self) {
        self.buf.extend_from_slice(b"\r\n");
    }
}

/// `bytes first-last/len` or `bytes */len`.
pub fn write_content_range(buf: &mut Vec<u8>, range: Option<(u64, u64)>, len: u64) {
    buf.extend_from_slice(b"bytes ");
    match range {
        Some((first, last)) => {
            push_u64(buf, first);
            buf.push(b'-');
            push_u64(buf, last);
        }
        None => buf.push(b'*'),
    }
    buf.push(b'/');
    push_u64(buf, len);
}

/// Appends the decimal digits of `n` without going through `fmt`.
pub fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_head() {
        let mut buf = Vec::new();
        let mut head = Head::start(&mut buf, 206);
        head.field("Content-Type", "text/css")
            .field_u64("Content-Length", 0)
            .content_range(Some((0, 9)), 100);
        head.finish();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.starts_with("HTTP/1.1 206 Partial Content\r\nDate: "));
        assert!(
            text.contains("\r\nServer: bypass\r\nContent-Type: text/css\r\nContent-Length: 0\r\n")
        );
        assert!(text.ends_with("Content-Range: bytes 0-9/100\r\n\r\n"));
    }

    #[test]
    fn digits() {
        for n in [0, 7, 10, 99, 1234567890, u64::MAX] {
            let mut buf = Vec::new();
            push_u64(&mut buf, n);
            assert_eq!(buf, n.to_string().into_bytes());
        }
    }
}
