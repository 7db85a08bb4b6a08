//! The host-view watch: a chunked NDJSON response, one [`HostFrame`] per line.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use kuryr_model::HostFrame;

use crate::error::ClientError;

/// The frames of one watch connection. It ends (`None`, or an `Err` followed by `None`)
/// when the connection drops or a line cannot be decoded: reconnect with
/// `since = <last revision seen>`.
pub type HostWatch = BoxStream<'static, Result<HostFrame, ClientError>>;

/// Splits a byte stream into lines, across chunk boundaries, with a bound on the length
/// of one line.
#[derive(Debug)]
pub(crate) struct LineBuffer {
    buf: Vec<u8>,
    /// Bytes before this index have been handed out already.
    start: usize,
    /// No newline in `buf[start..scanned]`.
    scanned: usize,
    max_line: usize,
}

impl LineBuffer {
    pub(crate) fn new(max_line: usize) -> Self {
        LineBuffer {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max_line,
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete line (without its `\n` or `\r\n`), `Ok(None)` if more bytes are
    /// needed, or an error once the pending line is longer than the bound.
    pub(crate) fn next_line(&mut self) -> Result<Option<&[u8]>, ClientError> {
        match self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            Some(off) => {
                let end = self.scanned + off;
                let begin = self.start;
                if end - begin > self.max_line {
                    return Err(self.too_long(end - begin));
                }
                self.start = end + 1;
                self.scanned = self.start;
                let mut line = &self.buf[begin..end];
                if let Some(stripped) = line.strip_suffix(b"\r") {
                    line = stripped;
                }
                Ok(Some(line))
            }
            None => {
                self.scanned = self.buf.len();
                let pending = self.buf.len() - self.start;
                if pending > self.max_line {
                    return Err(self.too_long(pending));
                }
                Ok(None)
            }
        }
    }

    /// What is left after the last newline.
    pub(crate) fn rest(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn too_long(&self, len: usize) -> ClientError {
        ClientError::Decode(format!(
            "watch line longer than {} bytes ({len} bytes without a newline)",
            self.max_line
        ))
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| b.is_ascii_whitespace())
}

fn decode_frame(line: &[u8], url: &str) -> Result<HostFrame, ClientError> {
    serde_json::from_slice(line)
        .map_err(|e| ClientError::Decode(format!("watch frame from {url}: {e}")))
}

struct WatchState {
    resp: Option<reqwest::Response>,
    lines: LineBuffer,
    idle_timeout: Option<Duration>,
    url: String,
    done: bool,
}

impl WatchState {
    async fn next(&mut self) -> Option<Result<HostFrame, ClientError>> {
        loop {
            if self.done {
                return None;
            }
            match self.lines.next_line() {
                Err(e) => {
                    self.finish();
                    return Some(Err(e));
                }
                Ok(Some(line)) => {
                    if is_blank(line) {
                        continue;
                    }
                    let frame = decode_frame(line, &self.url);
                    if frame.is_err() {
                        self.finish();
                    }
                    return Some(frame);
                }
                Ok(None) => {}
            }
            let Some(resp) = self.resp.as_mut() else {
                self.finish();
                return None;
            };
            let chunk = match self.idle_timeout {
                None => resp.chunk().await,
                Some(idle) => match tokio::time::timeout(idle, resp.chunk()).await {
                    Ok(r) => r,
                    Err(_) => {
                        self.finish();
                        return Some(Err(ClientError::Unreachable(format!(
                            "watch {}: nothing received for {idle:?}",
                            self.url
                        ))));
                    }
                },
            };
            match chunk {
                Ok(Some(bytes)) => self.lines.push(&bytes),
                Ok(None) => {
                    // The server closed the response. A last line without its newline is
                    // only taken if it is a whole frame.
                    self.resp = None;
                    self.done = true;
                    let rest = self.lines.rest();
                    if is_blank(rest) {
                        tracing::debug!(url = %self.url, "watch stream ended");
                        return None;
                    }
                    return Some(decode_frame(rest, &self.url).map_err(|_| {
                        ClientError::Unreachable(format!(
                            "watch {}: connection closed in the middle of a frame",
                            self.url
                        ))
                    }));
                }
                Err(e) => {
                    self.finish();
                    return Some(Err(ClientError::Unreachable(format!(
                        "watch {}: {}",
                        self.url,
                        crate::client::error_chain(&e)
                    ))));
                }
            }
        }
    }

    fn finish(&mut self) {
        self.done = true;
        self.resp = None;
    }
}

pub(crate) fn frames(
    resp: reqwest::Response,
    url: String,
    max_line: usize,
    idle_timeout: Option<Duration>,
) -> HostWatch {
    let state = WatchState {
        resp: Some(resp),
        lines: LineBuffer::new(max_line),
        idle_timeout,
        url,
        done: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        let item = s.next().await?;
        Some((item, s))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]], max: usize) -> Result<Vec<String>, ClientError> {
        let mut lb = LineBuffer::new(max);
        let mut out = Vec::new();
        for c in chunks {
            lb.push(c);
            while let Some(l) = lb.next_line()? {
                out.push(String::from_utf8_lossy(l).into_owned());
            }
        }
        Ok(out)
    }

    #[test]
    fn splits_across_chunks() {
        let got = lines_of(&[b"ab", b"c\nde", b"f\r\n\ng", b"h\n"], 100);
        assert_eq!(
            got,
            Ok(vec![
                "abc".to_string(),
                "def".to_string(),
                String::new(),
                "gh".to_string()
            ])
        );
        let mut lb = LineBuffer::new(100);
        lb.push(b"x\nyz");
        assert_eq!(lb.next_line(), Ok(Some(&b"x"[..])));
        assert_eq!(lb.next_line(), Ok(None));
        assert_eq!(lb.rest(), b"yz");
    }

    #[test]
    fn bounds_line_length() {
        assert!(lines_of(&[b"12345\n"], 5).is_ok());
        assert!(matches!(
            lines_of(&[b"123456\n"], 5),
            Err(ClientError::Decode(_))
        ));
        assert!(matches!(
            lines_of(&[b"1234", b"56"], 5),
            Err(ClientError::Decode(_))
        ));
        // Many short lines in one big chunk are fine.
        let big = b"1234\n".repeat(1000);
        assert_eq!(lines_of(&[&big], 5).map(|l| l.len()), Ok(1000));
    }
}
