//! A small blocking HTTP/1.1 client over `std::net::TcpStream`: one request at a time on a
//! keep-alive connection, reconnecting when the server closes it. The suite uses it to check
//! each contender's answer before measuring, the criterion round-trip bench to time requests.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// What came back for one request. The body is counted, and kept only when asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header fields in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Renders a GET (or HEAD) request for `path` with extra header fields.
pub fn request(method: &str, path: &str, host: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        r += &format!("{k}: {v}\r\n");
    }
    r += "\r\n";
    r.into_bytes()
}

pub struct Client {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// Bytes of `buf` already received and not yet consumed.
    filled: usize,
    pub keep_body: bool,
    /// Connections opened so far (a server that closes after every answer opens one each).
    pub connects: u64,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client {
            addr,
            stream: None,
            buf: vec![0; 64 * 1024],
            filled: 0,
            keep_body: false,
            connects: 0,
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            self.stream = Some(s);
            self.filled = 0;
            self.connects += 1;
        }
        Ok(self.stream.as_mut().expect("just connected"))
    }

    /// Sends one rendered request and reads its whole response. `head_only`: the request was
    /// HEAD, so no body follows whatever the head says.
    pub fn send(&mut self, req: &[u8], head_only: bool) -> io::Result<Response> {
        let fresh = self.stream.is_none();
        match self.exchange(req, head_only) {
            // A kept-alive connection the server closed meanwhile: retry once on a new one.
            Err(e) if !fresh && is_closed(&e) => {
                self.stream = None;
                self.exchange(req, head_only)
            }
            other => other,
        }
    }

    fn exchange(&mut self, req: &[u8], head_only: bool) -> io::Result<Response> {
        let result = self.exchange_inner(req, head_only);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn exchange_inner(&mut self, req: &[u8], head_only: bool) -> io::Result<Response> {
        self.stream()?.write_all(req)?;
        // The head.
        let (status, headers, head_len) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut fields);
            match parsed.parse(&self.buf[..self.filled]) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = parsed.code.unwrap_or(0);
                    let headers = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect::<Vec<_>>();
                    break (status, headers, n);
                }
                Ok(httparse::Status::Partial) => self.fill()?,
                Err(e) => return Err(bad(format!("malformed response head: {e}"))),
            }
        };
        self.consume(head_len);
        let mut response = Response {
            status,
            headers,
            body_len: 0,
            body: Vec::new(),
        };
        let close = response
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);
        if !no_body {
            let chunked = response
                .header("transfer-encoding")
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
            if chunked {
                self.read_chunked(&mut response)?;
            } else if let Some(len) = response.header("content-length") {
                let len = len
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| bad("bad Content-Length"))?;
                self.read_exact_body(len, &mut response)?;
            } else {
                self.read_to_close(&mut response)?;
            }
        }
        if close {
            self.stream = None;
        }
        Ok(response)
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.filled == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let filled = self.filled;
        let stream = self.stream.as_mut().ok_or_else(|| bad("not connected"))?;
        let n = stream.read(&mut self.buf[filled..])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.filled += n;
        Ok(())
    }

    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
    }

    /// Takes up to `want` bytes of body from the buffer (reading if it is empty).
    fn take_body(&mut self, want: u64, response: &mut Response) -> io::Result<u64> {
        if self.filled == 0 {
            self.fill()?;
        }
        let n = (self.filled as u64).min(want) as usize;
        if self.keep_body {
            response.body.extend_from_slice(&self.buf[..n]);
        }
        response.body_len += n as u64;
        self.consume(n);
        Ok(n as u64)
    }

    fn read_exact_body(&mut self, mut len: u64, response: &mut Response) -> io::Result<()> {
        while len > 0 {
            len -= self.take_body(len, response)?;
        }
        Ok(())
    }

    fn read_to_close(&mut self, response: &mut Response) -> io::Result<()> {
        loop {
            match self.take_body(u64::MAX, response) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    self.stream = None;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = self.buf[..self.filled]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.consume(end + 2);
                return Ok(line);
            }
            self.fill()?;
        }
    }

    fn read_chunked(&mut self, response: &mut Response) -> io::Result<()> {
        loop {
            let line = self.line()?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailer fields, up to the empty line.
                while !self.line()?.is_empty() {}
                return Ok(());
            }
            self.read_exact_body(size, response)?;
            if !self.line()?.is_empty() {
                return Err(bad("chunk not followed by CRLF"));
            }
        }
    }
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server that plays back canned answers, one per request, on one connection.
    fn canned(answers: Vec<&'static [u8]>, close_after: bool) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut answers = answers.into_iter();
            'conns: for s in l.incoming() {
                let mut s = s.unwrap();
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    let n = s.read(&mut buf).unwrap_or(0);
                    if n == 0 {
                        continue 'conns;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(p) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..p + 4);
                        let Some(a) = answers.next() else {
                            return;
                        };
                        s.write_all(a).unwrap();
                        if close_after {
                            continue 'conns;
                        }
                    }
                }
            }
        });
        addr
    }

    #[test]
    fn reads_lengths_chunks_and_bodyless_answers() {
        let addr = canned(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
                b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 99\r\n\r\n",
            ],
            false,
        );
        let mut c = Client::new(addr);
        c.keep_body = true;
        let req = request("GET", "/", "x", &[]);
        let r = c.send(&req, false).unwrap();
        assert_eq!(
            (r.status, r.body_len, r.body.as_slice()),
            (200, 5, &b"hello"[..])
        );
        let r = c.send(&req, false).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abcde"[..]));
        let r = c.send(&req, false).unwrap();
        assert_eq!(
            (r.status, r.body_len, r.header("etag")),
            (304, 0, Some("\"x\""))
        );
        assert_eq!(c.connects, 1);
    }

    #[test]
    fn reconnects_after_connection_close() {
        let addr = canned(
            vec![
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            ],
            true,
        );
        let mut c = Client::new(addr);
        let req = request("GET", "/", "x", &[("Accept-Encoding".into(), "br".into())]);
        assert_eq!(c.send(&req, false).unwrap().body_len, 2);
        assert_eq!(c.send(&req, false).unwrap().body_len, 2);
        assert_eq!(c.connects, 2);
    }
}
