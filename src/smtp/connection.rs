//! The client's byte stream: command lines in, message data in, replies out.
//!
//! Reading is buffered so that pipelined commands (RFC 2920) are taken one at a time from the
//! same buffer the DATA/BDAT decoder reads from — there is exactly one parser of the stream.
//! Replies are collected and written in one go when the input buffer holds no further complete
//! command (RFC 2920 §3.2: a server must flush before it blocks reading), so a pipelining client
//! gets its replies in one packet and a lock-step client is never kept waiting.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::data::DataDecoder;
use super::reply::Reply;

/// Anything we can speak SMTP over: plain TCP, or TLS after STARTTLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why reading from the client stopped.
#[derive(Debug)]
pub enum ReadError {
    /// No input within the timeout.
    Timeout,
    /// The client closed the connection (possibly mid-line).
    Closed,
    Io(io::Error),
    /// The server is stopping (the shutdown grace period is over).
    Stopped,
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// One command line as received.
#[derive(Debug)]
pub struct Line {
    /// The line without its terminator (and without a bare CR/LF's neighbours removed).
    pub bytes: Vec<u8>,
    /// Set when the line was ended by a bare LF or held a bare CR.
    pub bare: Option<&'static str>,
    /// Set when the line was longer than the limit; `bytes` is then empty.
    pub too_long: bool,
}

const READ_CHUNK: usize = 16 * 1024;

pub struct Connection {
    stream: Box<dyn Io>,
    input: Vec<u8>,
    /// Start of unread input in `input`.
    pos: usize,
    output: Vec<u8>,
    /// When this becomes true, waiting for input ends with [`ReadError::Stopped`].
    stop: Option<watch::Receiver<bool>>,
}

impl Connection {
    pub fn new(stream: Box<dyn Io>) -> Connection {
        Connection {
            stream,
            input: Vec::with_capacity(READ_CHUNK),
            pos: 0,
            output: Vec::with_capacity(512),
            stop: None,
        }
    }

    /// Ends every wait for input when `stop` becomes true (the server's hard stop).
    pub fn with_stop(mut self, stop: watch::Receiver<bool>) -> Connection {
        self.stop = Some(stop);
        self
    }

    /// Queues a reply; it is sent at the next flush.
    pub fn reply(&mut self, reply: &Reply) {
        reply.write_to(&mut self.output);
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            self.stream.flush().await?;
            self.output.clear();
        }
        Ok(())
    }

    /// Flushes pending replies and closes our side (for TLS: sends close_notify first,
    /// RFC 8446 §6.1).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.stream.shutdown().await
    }

    /// Whether a complete command line is already buffered (the client is pipelining).
    pub fn has_buffered_line(&self) -> bool {
        memchr::memchr(b'\n', &self.input[self.pos..]).is_some()
    }

    /// Drops all buffered input: after STARTTLS nothing sent before the handshake may be
    /// acted upon (CVE-2011-0411). Returns how many bytes were dropped.
    pub fn discard_buffered_input(&mut self) -> usize {
        let n = self.input.len() - self.pos;
        self.input.clear();
        self.pos = 0;
        n
    }

    /// Replaces the stream with what `handshake` makes of it (STARTTLS). Buffered input must
    /// have been discarded first; pending replies must have been flushed.
    pub async fn upgrade<F, Fut, T>(&mut self, handshake: F) -> io::Result<T>
    where
        F: FnOnce(Box<dyn Io>) -> Fut,
        Fut: std::future::Future<Output = io::Result<(Box<dyn Io>, T)>>,
    {
        debug_assert!(self.pos == self.input.len() && self.output.is_empty());
        let placeholder: Box<dyn Io> = Box::new(tokio::io::duplex(1).0);
        let plain = std::mem::replace(&mut self.stream, placeholder);
        let (upgraded, info) = handshake(plain).await?;
        self.stream = upgraded;
        Ok(info)
    }

    /// Reads more input into the buffer, flushing pending replies first.
    async fn fill(&mut self, timeout: Duration) -> Result<(), ReadError> {
        self.flush().await?;
        if self.pos > 0 && self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
        } else if self.pos > READ_CHUNK {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        let start = self.input.len();
        // Into spare capacity, not a zeroed slice: the pages of an idle session's buffer are
        // never touched (with 10,000 idle sessions that is 16 KiB of memory each).
        self.input.reserve(READ_CHUNK);
        let read = tokio::time::timeout(timeout, self.stream.read_buf(&mut self.input));
        // Reading is cancel-safe: if the stop wins, no input was consumed.
        let read = match &mut self.stop {
            Some(stop) => tokio::select! {
                r = read => Some(r),
                // A dropped sender means no stop will come: wait for the read alone.
                Ok(_) = stop.wait_for(|stopped| *stopped) => None,
            },
            None => Some(read.await),
        };
        let Some(read) = read else {
            self.input.truncate(start);
            return Err(ReadError::Stopped);
        };
        let n = match read {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                self.input.truncate(start);
                return Err(ReadError::Io(e));
            }
            Err(_) => {
                self.input.truncate(start);
                return Err(ReadError::Timeout);
            }
        };
        self.input.truncate(start + n);
        if n == 0 {
            return Err(ReadError::Closed);
        }
        Ok(())
    }

    /// Reads one command line of at most `max` bytes including its line ending.
    /// Longer lines are read to their end and reported as `too_long`.
    ///
    /// `timeout` bounds the whole line, not only the gaps between reads: a client trickling
    /// a byte at a time (slowloris) is cut off like an idle one.
    pub async fn read_line(&mut self, max: usize, timeout: Duration) -> Result<Line, ReadError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut discarding = false;
        loop {
            let unread = &self.input[self.pos..];
            if let Some(lf) = memchr::memchr(b'\n', unread) {
                let raw = &unread[..lf];
                self.pos += lf + 1;
                if discarding || lf + 1 > max {
                    return Ok(Line {
                        bytes: Vec::new(),
                        bare: None,
                        too_long: true,
                    });
                }
                let (content, ended_crlf) = match raw.strip_suffix(b"\r") {
                    Some(c) => (c, true),
                    None => (raw, false),
                };
                let bare = if !ended_crlf {
                    Some("<LF>")
                } else if content.contains(&b'\r') {
                    Some("<CR>")
                } else {
                    None
                };
                return Ok(Line {
                    bytes: content.to_vec(),
                    bare,
                    too_long: false,
                });
            }
            if unread.len() > max {
                // Keep only a possible trailing CR; the rest of this line is dropped.
                discarding = true;
                self.pos = self.input.len();
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.fill(left).await?;
        }
    }

    /// Feeds DATA input to `decoder` until its end-of-data line; input after it stays
    /// buffered for the next command.
    ///
    /// `timeout` bounds each line of the message (like Postfix's
    /// `smtpd_per_record_deadline`), so a client trickling bytes cannot hold the session.
    pub async fn read_data(
        &mut self,
        decoder: &mut DataDecoder,
        timeout: Duration,
    ) -> Result<(), ReadError> {
        let mut deadline = LineDeadline::new(timeout);
        loop {
            let unread = &self.input[self.pos..];
            match decoder.feed(unread) {
                Some(n) => {
                    self.pos += n;
                    return Ok(());
                }
                None => self.pos = self.input.len(),
            }
            if decoder.refused() {
                // A bare newline under `reject`: the message is refused whatever follows. A
                // legacy client that ended it with `<LF>.<LF>` waits for our answer, so we
                // answer once it pauses instead of waiting (in vain) for `<CR><LF>.<CR><LF>`
                // until the data timeout; what it still sends meanwhile is read (and the real
                // end honoured), so closing afterwards does not reset the connection under
                // our reply.
                let quiet = BARE_NEWLINE_QUIET.min(deadline.left());
                return match self.fill(quiet).await {
                    Ok(()) => continue,
                    Err(ReadError::Timeout) => Ok(()),
                    Err(e) => Err(e),
                };
            }
            self.fill(deadline.left()).await?;
            // Everything before was consumed: what is unread now is what just arrived.
            deadline.progress(&self.input[self.pos..]);
        }
    }

    /// Reads exactly `size` bytes of a BDAT chunk into `decoder`, or discards them when
    /// `decoder` is `None` (a chunk we refuse must still be read, RFC 3030 §2).
    pub async fn read_chunk(
        &mut self,
        mut size: u64,
        mut decoder: Option<&mut DataDecoder>,
        timeout: Duration,
    ) -> Result<(), ReadError> {
        let mut deadline = LineDeadline::new(timeout);
        loop {
            let available = (self.input.len() - self.pos) as u64;
            let take = available.min(size) as usize;
            if let Some(d) = decoder.as_deref_mut() {
                d.feed(&self.input[self.pos..self.pos + take]);
            }
            self.pos += take;
            size -= take as u64;
            if size == 0 {
                return Ok(());
            }
            self.fill(deadline.left()).await?;
            deadline.progress(&self.input[self.pos..]);
        }
    }
}

/// The time left for the current line of message data: `timeout` from the last line end
/// received, so a trickling client times out although it is never idle for `timeout`.
/// How long a client that sent a bare newline (under `bare_newline = "reject"`) may pause in its
/// message data before it gets the 550.
const BARE_NEWLINE_QUIET: Duration = Duration::from_millis(500);

struct LineDeadline {
    timeout: Duration,
    at: tokio::time::Instant,
}

impl LineDeadline {
    fn new(timeout: Duration) -> Self {
        LineDeadline {
            timeout,
            at: tokio::time::Instant::now() + timeout,
        }
    }

    fn left(&self) -> Duration {
        self.at
            .saturating_duration_since(tokio::time::Instant::now())
    }

    /// `received` just arrived: a line end in it starts a new line's deadline.
    fn progress(&mut self, received: &[u8]) {
        if memchr::memchr(b'\n', received).is_some() {
            self.at = tokio::time::Instant::now() + self.timeout;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BareNewline;
    use tokio::io::AsyncWriteExt;

    const T: Duration = Duration::from_secs(5);

    async fn conn_with(input: &'static [u8]) -> Connection {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut client = client;
        client.write_all(input).await.expect("write");
        drop(client);
        Connection::new(Box::new(server))
    }

    #[tokio::test]
    async fn lines_and_their_endings() {
        let mut c = conn_with(b"NOOP\r\nNOOP\nNO\rOP\r\n").await;
        let l = c.read_line(512, T).await.expect("line");
        assert_eq!((l.bytes.as_slice(), l.bare), (&b"NOOP"[..], None));
        let l = c.read_line(512, T).await.expect("line");
        assert_eq!(l.bare, Some("<LF>"));
        let l = c.read_line(512, T).await.expect("line");
        assert_eq!(l.bare, Some("<CR>"));
        assert!(matches!(c.read_line(512, T).await, Err(ReadError::Closed)));
    }

    #[tokio::test]
    async fn long_line_is_consumed_whole() {
        let mut input = vec![b'A'; 100_000];
        input.extend_from_slice(b"\r\nQUIT\r\n");
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(&input).await.expect("write");
        drop(client);
        let mut c = Connection::new(Box::new(server));
        let l = c.read_line(512, T).await.expect("line");
        assert!(l.too_long);
        let l = c.read_line(512, T).await.expect("line");
        assert_eq!(l.bytes, b"QUIT");
    }

    #[tokio::test]
    async fn data_then_pipelined_command() {
        let mut c = conn_with(b"hello\r\n.\r\nQUIT\r\n").await;
        let mut d = DataDecoder::dot(BareNewline::Reject, 1 << 20, 1000);
        c.read_data(&mut d, T).await.expect("data");
        assert_eq!(d.finish().expect("ok"), b"hello\r\n");
        assert!(c.has_buffered_line());
        assert_eq!(c.read_line(512, T).await.expect("line").bytes, b"QUIT");
    }

    #[tokio::test]
    async fn chunk_reads_exact_count() {
        let mut c = conn_with(b"abc\r\nQUIT\r\n").await;
        let mut d = DataDecoder::chunks(BareNewline::Reject, 1 << 20, 1000);
        c.read_chunk(5, Some(&mut d), T).await.expect("chunk");
        assert_eq!(c.read_line(512, T).await.expect("line").bytes, b"QUIT");
        assert_eq!(d.finish().expect("ok"), b"abc\r\n");
    }

    /// One byte every 100 ms never leaves the connection idle for 300 ms, but the line is
    /// not complete within 300 ms either: a timeout (slowloris).
    #[tokio::test]
    async fn trickled_line_times_out() {
        let (mut client, server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            for b in b"NOOP and more\r\n" {
                if client.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            client
        });
        let mut c = Connection::new(Box::new(server));
        let started = std::time::Instant::now();
        let r = c.read_line(512, Duration::from_millis(300)).await;
        assert!(
            matches!(r, Err(ReadError::Timeout)),
            "{:?}",
            r.map(|l| l.bytes)
        );
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "{:?}",
            started.elapsed()
        );
        drop(writer);
    }

    /// Message data: a new line every 100 ms keeps the session going past the timeout, one
    /// line trickled a byte every 100 ms does not.
    #[tokio::test]
    async fn trickled_data_line_times_out() {
        for (input, want_timeout) in [
            (&b"a\r\nb\r\nc\r\nd\r\ne\r\nf\r\n.\r\n"[..], false),
            (&b"abcdefghij\r\n.\r\n"[..], true),
        ] {
            let (mut client, server) = tokio::io::duplex(1024);
            let chunked = !want_timeout;
            let writer = tokio::spawn(async move {
                let pieces: Vec<&[u8]> = if chunked {
                    input.split_inclusive(|b| *b == b'\n').collect()
                } else {
                    input.chunks(1).collect()
                };
                for piece in pieces {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if client.write_all(piece).await.is_err() {
                        break;
                    }
                }
                client
            });
            let mut c = Connection::new(Box::new(server));
            let mut d = DataDecoder::dot(BareNewline::Reject, 1 << 20, 1000);
            let r = c.read_data(&mut d, Duration::from_millis(350)).await;
            assert_eq!(
                matches!(r, Err(ReadError::Timeout)),
                want_timeout,
                "{:?}",
                r.err()
            );
            drop(writer);
        }
    }

    /// The same inside a BDAT chunk.
    #[tokio::test]
    async fn trickled_chunk_times_out() {
        let (mut client, server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            for b in b"abcdefghij\r\n" {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if client.write_all(&[*b]).await.is_err() {
                    break;
                }
            }
            client
        });
        let mut c = Connection::new(Box::new(server));
        let mut d = DataDecoder::chunks(BareNewline::Reject, 1 << 20, 1000);
        let r = c
            .read_chunk(12, Some(&mut d), Duration::from_millis(350))
            .await;
        assert!(matches!(r, Err(ReadError::Timeout)), "{:?}", r.err());
        drop(writer);
    }

    #[tokio::test]
    async fn timeout_is_reported() {
        let (_client, server) = tokio::io::duplex(1024);
        let mut c = Connection::new(Box::new(server));
        let r = c.read_line(512, Duration::from_millis(50)).await;
        assert!(matches!(r, Err(ReadError::Timeout)));
    }
}
