//! A minimal blocking HTTP/1.1 client over a unix socket: one POST, one answer,
//! `Connection: close`. The plugin is exec'd once per CNI call, so a runtime
//! and an HTTP stack would cost more start-up time than the call itself.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The agent's answers are a few KiB; anything this large is not one.
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// The agent's answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no answer from {} within {}s", socket.display(), after.as_secs_f64())]
    Timeout { socket: PathBuf, after: Duration },
    #[error("talking to {}: {source}", socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("malformed HTTP answer from {}: {reason}", socket.display())]
    Protocol { socket: PathBuf, reason: String },
}

/// POSTs `body` (JSON) to `path` on the unix socket `socket` and reads the
/// answer, all within `timeout`.
pub fn post(
    socket: &Path,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Response, TransportError> {
    let stream = UnixStream::connect(socket).map_err(|source| TransportError::Connect {
        socket: socket.to_path_buf(),
        source,
    })?;
    let mut conn = Deadline {
        stream,
        deadline: Instant::now() + timeout,
    };
    exchange(&mut conn, path, body).map_err(|e| match e {
        Failure::Io(source)
            if matches!(
                source.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            TransportError::Timeout {
                socket: socket.to_path_buf(),
                after: timeout,
            }
        }
        Failure::Io(source) => TransportError::Io {
            socket: socket.to_path_buf(),
            source,
        },
        Failure::Protocol(reason) => TransportError::Protocol {
            socket: socket.to_path_buf(),
            reason,
        },
    })
}

enum Failure {
    Io(io::Error),
    Protocol(String),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

fn bad(reason: impl Into<String>) -> Failure {
    Failure::Protocol(reason.into())
}

fn exchange(conn: &mut Deadline, path: &str, body: &[u8]) -> Result<Response, Failure> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: kuryr-agent\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    conn.flush()?;

    let mut reader = BufReader::new(conn.take(MAX_RESPONSE));
    // Skip interim 1xx answers (none is expected: no Expect header is sent).
    let (status, headers) = loop {
        let status = read_status(&mut reader)?;
        let headers = read_headers(&mut reader)?;
        if !(100..200).contains(&status) {
            break (status, headers);
        }
    };
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| bad(format!("Content-Length {v:?}")))
        })
        .transpose()?;
    let body = if chunked {
        read_chunked(&mut reader)?
    } else if let Some(n) = length {
        if n > MAX_RESPONSE {
            return Err(bad(format!("a body of {n} bytes")));
        }
        let mut body = vec![0; usize::try_from(n).map_err(|_| bad("body too large"))?];
        reader.read_exact(&mut body)?;
        body
    } else if status == 204 || status == 304 {
        Vec::new()
    } else {
        // Neither length nor chunks: the body ends with the connection.
        let mut body = Vec::new();
        reader.read_to_end(&mut body)?;
        body
    };
    Ok(Response { status, body })
}

/// One line without its CRLF; EOF before the line ends is an error.
fn read_line(reader: &mut impl BufRead) -> Result<String, Failure> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(Failure::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the agent closed the connection before answering",
        )));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| bad("a header line that is not UTF-8"))
}

fn read_status(reader: &mut impl BufRead) -> Result<u16, Failure> {
    let line = read_line(reader)?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(bad(format!("status line {line:?}")));
    }
    code.parse()
        .map_err(|_| bad(format!("status line {line:?}")))
}

fn read_headers(reader: &mut impl BufRead) -> Result<Vec<(String, String)>, Failure> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            return Ok(headers);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("header line {line:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
}

fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?;
        // A chunk size may carry extensions after ';'.
        let size = line.split(';').next().unwrap_or_default().trim();
        let size =
            u64::from_str_radix(size, 16).map_err(|_| bad(format!("chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(reader)?.is_empty() {}
            return Ok(body);
        }
        if size > MAX_RESPONSE {
            return Err(bad(format!("a chunk of {size} bytes")));
        }
        let start = body.len();
        body.resize(
            start + usize::try_from(size).map_err(|_| bad("chunk too large"))?,
            0,
        );
        reader.read_exact(&mut body[start..])?;
        if !read_line(reader)?.is_empty() {
            return Err(bad("a chunk longer than its size"));
        }
    }
}

/// The socket with one deadline for the whole exchange: each read or write
/// waits at most for what is left of it.
struct Deadline {
    stream: UnixStream,
    deadline: Instant,
}

impl Deadline {
    fn remaining(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::from(io::ErrorKind::TimedOut));
        }
        Ok(left)
    }
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.remaining()?;
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.remaining()?;
        self.stream.set_write_timeout(Some(left))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let mut reader = BufReader::new(raw);
        let status = read_status(&mut reader).map_err(describe)?;
        let headers = read_headers(&mut reader).map_err(describe)?;
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "Transfer-Encoding" && v == "chunked");
        let body = if chunked {
            read_chunked(&mut reader).map_err(describe)?
        } else {
            let mut b = Vec::new();
            reader.read_to_end(&mut b).map_err(|e| e.to_string())?;
            b
        };
        Ok((status, body))
    }

    fn describe(f: Failure) -> String {
        match f {
            Failure::Io(e) => format!("io: {e}"),
            Failure::Protocol(r) => format!("protocol: {r}"),
        }
    }

    #[test]
    fn reads_a_plain_answer() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse(raw), Ok((200, b"{}".to_vec())));
    }

    #[test]
    fn reads_a_chunked_answer() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n\
                    4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-Trailer: y\r\n\r\n";
        assert_eq!(parse(raw), Ok((503, b"{\"a\":1}".to_vec())));
    }

    #[test]
    fn rejects_malformed_answers() {
        let cases: [&[u8]; 5] = [
            b"SPDY/3 200 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        ];
        for raw in cases {
            let got = parse(raw);
            assert!(
                got.as_ref().is_err_and(|e| e.starts_with("protocol")),
                "{:?}: {got:?}",
                String::from_utf8_lossy(raw)
            );
        }
        // A cut-off answer is an I/O failure (the agent went away), not a protocol one.
        let got = parse(b"HTTP/1.1 200 OK\r\nContent-");
        assert!(got.is_err_and(|e| e.starts_with("io")));
    }
}
