//! The clamd client: one connection per command over TCP or a unix socket, with INSTREAM bodies
//! written chunk by chunk as they arrive.
//!
//! Wire details live in [`protocol`] (pure, no I/O); this module owns sockets and timeouts.
//! Outside `IDSESSION`, clamd answers one command per connection and then closes, so every
//! command opens a new connection (nearly free next to a scan: under 0.1 ms, measured with clamd 1.4.6).
//!
//! Errors keep the three-outcome rule: nothing here turns a failure into `Clean`. A
//! [`ClamdError`] maps to an [`UnscannedReason`] with [`ClamdError::unscanned_reason`], and a
//! [`ScanReply`] maps to a [`Verdict`](crate::verdict::Verdict) with [`ScanReply::into_verdict`].

pub mod protocol;
pub mod selftest;

pub use protocol::{parse_scan_reply, parse_version, ProtocolError, ScanReply};

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;

use crate::verdict::{EngineVersion, UnscannedReason};

/// Largest piece of a body written to clamd as one chunk. Larger `send` calls are split, so the
/// write timeout bounds the time for each MiB rather than for a whole body.
const SEND_PIECE_BYTES: usize = 1024 * 1024;

/// Longest reply accepted from clamd. Real replies are one short line.
const MAX_REPLY_BYTES: usize = 4096;

/// Where a clamd listens: `tcp://host:port` or `unix:///absolute/path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClamdAddress {
    /// A TCP endpoint as `host:port` (host may be a name, an IPv4 address or a bracketed IPv6).
    Tcp(String),
    /// A unix socket (clamd's `LocalSocket`).
    Unix(PathBuf),
}

/// Why a string is not a [`ClamdAddress`]. The config check (`clamd.address`) reports these
/// messages as they are: this is the one parser of a clamd address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The string has neither `tcp://` nor `unix://` in front.
    #[error("expected \"tcp://HOST:PORT\" or \"unix:///absolute/path\", found {0:?}")]
    UnknownScheme(String),
    /// A `tcp://` address without a sound host or with a bad port.
    #[error("expected \"tcp://HOST:PORT\" with a port from 1 to 65535, found {0:?}")]
    InvalidTcp(String),
    /// A `unix://` address whose path is not absolute.
    #[error(
        "expected an absolute path after \"unix://\", as in \"unix:///run/clamav/clamd.ctl\", found {0:?}"
    )]
    InvalidUnix(String),
}

impl FromStr for ClamdAddress {
    type Err = AddressError;

    /// `tcp://HOST:PORT` (HOST a name of letters, digits, `.`, `-` and `_`, an IPv4 address or a
    /// bracketed IPv6 address; PORT digits only, 1 to 65535) or `unix:///absolute/path`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(host_port) = s.strip_prefix("tcp://") {
            let sound =
                host_port.rsplit_once(':').is_some_and(|(host, port)| tcp_host(host) && tcp_port(port));
            if sound {
                Ok(ClamdAddress::Tcp(host_port.to_string()))
            } else {
                Err(AddressError::InvalidTcp(s.to_string()))
            }
        } else if let Some(path) = s.strip_prefix("unix://") {
            if path.starts_with('/') && path.len() > 1 {
                Ok(ClamdAddress::Unix(PathBuf::from(path)))
            } else {
                Err(AddressError::InvalidUnix(s.to_string()))
            }
        } else {
            Err(AddressError::UnknownScheme(s.to_string()))
        }
    }
}

fn tcp_host(host: &str) -> bool {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
    }
}

fn tcp_port(port: &str) -> bool {
    // Digits only: `u16::from_str` would also take "+1".
    port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p != 0)
}

impl fmt::Display for ClamdAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClamdAddress::Tcp(host_port) => write!(f, "tcp://{host_port}"),
            ClamdAddress::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// Written as the string it was read from, so `clamd.address` stays a string in the config file.
impl serde::Serialize for ClamdAddress {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Read by [`ClamdAddress::from_str`]: the config is typed as it is loaded.
impl<'de> serde::Deserialize<'de> for ClamdAddress {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How long each step of talking to clamd may take. A step that runs out fails the command; it
/// never yields a verdict other than `Unscanned`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClamdTimeouts {
    /// Opening the connection.
    pub connect: Duration,
    /// Each write: the command, each chunk of at most 1 MiB, the terminator.
    pub write: Duration,
    /// Waiting for the reply after the command or the last chunk (for INSTREAM: the scan itself).
    pub reply: Duration,
}

impl ClamdTimeouts {
    pub fn from_config(clamd: &crate::config::ClamdConfig) -> ClamdTimeouts {
        ClamdTimeouts {
            connect: clamd.connect_timeout(),
            write: clamd.write_timeout(),
            reply: clamd.reply_timeout(),
        }
    }
}

/// What went wrong talking to clamd. None of these is a verdict: each is `Unscanned` with the
/// reason [`ClamdError::unscanned_reason`] gives.
#[derive(Debug, thiserror::Error)]
pub enum ClamdError {
    /// No connection could be opened (refused, no such socket, or not within the connect timeout).
    #[error("cannot connect to clamd at {address}: {source}")]
    Connect {
        /// The address as configured, e.g. `tcp://127.0.0.1:3310`.
        address: String,
        #[source]
        source: io::Error,
    },
    /// clamd stopped reading or answering: `phase` is `"write"` (a write did not complete within
    /// the write timeout) or `"reply"` (no complete reply within the reply timeout).
    #[error("clamd did not complete the {phase} within its timeout")]
    Timeout {
        /// `"write"` or `"reply"`.
        phase: &'static str,
    },
    /// An I/O error other than clamd closing the connection.
    #[error("I/O error talking to clamd: {0}")]
    Io(#[from] io::Error),
    /// clamd closed the connection without sending a reply (shutting down, or it could not create
    /// its temp file). Never a clean verdict.
    #[error("clamd closed the connection without a reply")]
    ClosedWithoutReply,
    /// clamd answered something clamgate cannot use.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

impl ClamdError {
    /// Why the body is unscanned when this error ends a scan: connect failures and closed
    /// connections are `engine_unavailable`, timeouts `timeout`, anything else `engine_error`.
    pub fn unscanned_reason(&self) -> UnscannedReason {
        match self {
            ClamdError::Connect { .. } | ClamdError::ClosedWithoutReply => UnscannedReason::EngineUnavailable,
            ClamdError::Timeout { .. } => UnscannedReason::Timeout,
            ClamdError::Io(_) | ClamdError::Protocol(_) => UnscannedReason::EngineError,
        }
    }
}

/// A client for one clamd. Cheap to clone; holds no connection (each command opens its own).
#[derive(Debug, Clone)]
pub struct ClamdClient {
    address: ClamdAddress,
    timeouts: ClamdTimeouts,
}

impl ClamdClient {
    /// A client for the clamd at `address`. Nothing is contacted until a command is sent.
    pub fn new(address: ClamdAddress, timeouts: ClamdTimeouts) -> Self {
        ClamdClient { address, timeouts }
    }

    /// The address this client connects to.
    pub fn address(&self) -> &ClamdAddress {
        &self.address
    }

    /// The timeouts this client applies.
    pub fn timeouts(&self) -> ClamdTimeouts {
        self.timeouts
    }

    /// Sends `PING`; `Ok` only when clamd answers `PONG`.
    ///
    /// A clamd whose queue is full does not answer (connects still succeed): that is a
    /// `Timeout { phase: "reply" }`.
    pub async fn ping(&self) -> Result<(), ClamdError> {
        let raw = self.command(protocol::PING_COMMAND).await?;
        if protocol::is_pong(&raw) {
            Ok(())
        } else {
            let raw = String::from_utf8_lossy(&raw).trim_end_matches(['\0', '\n']).to_string();
            Err(ProtocolError::UnexpectedReply { command: "PING", raw }.into())
        }
    }

    /// Sends `VERSION`: the engine version, and the daily database's version and date when
    /// clamd has loaded one.
    pub async fn version(&self) -> Result<EngineVersion, ClamdError> {
        let raw = self.command(protocol::VERSION_COMMAND).await?;
        Ok(parse_version(&raw)?)
    }

    /// Connects and sends `zINSTREAM\0`; the body follows with [`InstreamScan::send`] and the
    /// verdict comes from [`InstreamScan::finish`].
    ///
    /// The caller should check the body against clamd's `StreamMaxLength` before streaming
    /// (clamgate's `scan.max_scan_bytes`); a body that passes it anyway ends in
    /// [`ScanReply::SizeLimitExceeded`].
    pub async fn start_scan(&self) -> Result<InstreamScan, ClamdError> {
        let mut conn = self.connect().await?;
        let mut state = SendState::Open;
        match timeout_write(&mut conn, protocol::INSTREAM_COMMAND, self.timeouts.write).await {
            Ok(()) => {}
            Err(WriteFailure::Io(err)) => state = SendState::stopped(err),
            Err(WriteFailure::TimedOut) => return Err(ClamdError::Timeout { phase: "write" }),
        }
        Ok(InstreamScan { conn, timeouts: self.timeouts, state, bytes_sent: 0 })
    }

    /// Whether this clamd can scan a file clamgate holds, by its descriptor (FILDES): only over a
    /// unix socket, i.e. a clamd on this host.
    pub fn can_scan_files(&self) -> bool {
        cfg!(unix) && matches!(self.address, ClamdAddress::Unix(_))
    }

    /// Starts a FILDES scan of `file` (the whole file, from offset 0): connects to the unix
    /// socket, sends `zFILDES\0` and the descriptor (`SCM_RIGHTS`). clamd reads the file itself:
    /// no byte crosses the socket, and clamd makes no copy of its own. The reply comes from the
    /// returned [`PendingReply`], read with the same rules as INSTREAM's.
    ///
    /// `Err(Io)` (kind `Unsupported`) over TCP: a remote clamd cannot open this host's files.
    #[cfg(unix)]
    pub async fn start_file_scan(&self, file: &std::fs::File) -> Result<PendingReply, ClamdError> {
        if !self.can_scan_files() {
            return Err(ClamdError::Io(io::Error::new(
                io::ErrorKind::Unsupported,
                "FILDES needs clamd on a unix socket",
            )));
        }
        let mut conn = self.connect().await?;
        match timeout_write(&mut conn, protocol::FILDES_COMMAND, self.timeouts.write).await {
            Ok(()) => {}
            Err(WriteFailure::Io(err)) => return Err(ClamdError::Io(err)),
            Err(WriteFailure::TimedOut) => return Err(ClamdError::Timeout { phase: "write" }),
        }
        let Connection::Unix(stream) = &conn else {
            return Err(ClamdError::Io(io::Error::new(io::ErrorKind::Unsupported, "not a unix socket")));
        };
        let sent = tokio::time::timeout(self.timeouts.write, send_descriptor(stream, file)).await;
        match sent {
            Ok(Ok(())) => Ok(PendingReply { conn, fildes: true }),
            Ok(Err(err)) => Err(ClamdError::Io(err)),
            Err(_) => Err(ClamdError::Timeout { phase: "write" }),
        }
    }

    /// Scans a body already in memory: [`start_scan`](Self::start_scan), one
    /// [`send`](InstreamScan::send), [`finish`](InstreamScan::finish).
    pub async fn scan_bytes(&self, body: &[u8]) -> Result<ScanReply, ClamdError> {
        let mut scan = self.start_scan().await?;
        scan.send(body).await?;
        scan.finish().await
    }

    async fn connect(&self) -> Result<Connection, ClamdError> {
        let attempt = async {
            match &self.address {
                ClamdAddress::Tcp(host_port) => {
                    let stream = TcpStream::connect(host_port.as_str()).await?;
                    // Chunks are written as they arrive; do not let Nagle hold small ones back.
                    stream.set_nodelay(true)?;
                    Ok(Connection::Tcp(stream))
                }
                #[cfg(unix)]
                ClamdAddress::Unix(path) => Ok(Connection::Unix(UnixStream::connect(path).await?)),
                #[cfg(not(unix))]
                ClamdAddress::Unix(_) => Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "unix sockets are not supported on this platform",
                )),
            }
        };
        let result = match tokio::time::timeout(self.timeouts.connect, attempt).await {
            Ok(result) => result,
            // No connection means no engine to talk to: unavailable (retry elsewhere), not a
            // scan that ran out of time.
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {} ms", self.timeouts.connect.as_millis()),
            )),
        };
        result.map_err(|source| ClamdError::Connect { address: self.address.to_string(), source })
    }

    /// Sends a one-shot command and returns clamd's reply, terminator included.
    async fn command(&self, command: &'static [u8]) -> Result<Vec<u8>, ClamdError> {
        let mut conn = self.connect().await?;
        match timeout_write(&mut conn, command, self.timeouts.write).await {
            // A failed write may still leave a reply to read (clamd answers and closes).
            Ok(()) | Err(WriteFailure::Io(_)) => {}
            Err(WriteFailure::TimedOut) => return Err(ClamdError::Timeout { phase: "write" }),
        }
        let reply = read_reply_within(&mut conn, self.timeouts.reply).await?;
        Ok(reply.bytes)
    }
}

/// One INSTREAM scan in progress, on its own connection to clamd.
///
/// # Contract
/// - [`send`](Self::send) writes each chunk to clamd at once (framed, split into pieces of at most
///   1 MiB, each write bounded by the write timeout), so clamd spools the body while it downloads.
///   Empty chunks are skipped (a zero-length chunk would end the body).
/// - When clamd stops reading, which it does after answering `INSTREAM size limit exceeded.
///   ERROR` past its `StreamMaxLength`, the next write fails with EPIPE or ECONNRESET. `send`
///   records that, returns `Ok(())`, and ignores every later chunk;
///   [`clamd_stopped_reading`](Self::clamd_stopped_reading) tells the caller it may stop sending.
///   The reply clamd sent before closing is still readable: **always call
///   [`finish`](Self::finish)** to get it. A failed write is never reported as "clamd down" by
///   `send` itself.
/// - `send` fails only with `Timeout { phase: "write" }`, when a write does not complete in time
///   (clamd alive but not reading). The connection then holds a partial chunk and is useless:
///   later `send` calls and `finish` return the same error.
/// - Dropping the scan before [`end`](Self::end) (or `finish`) closes the connection and clamd
///   discards the body without scanning it (measured with clamd 1.4.6: no scan thread is taken).
///   After `end`, clamd scans the body to its end whatever happens to the connection.
#[derive(Debug)]
pub struct InstreamScan {
    conn: Connection,
    timeouts: ClamdTimeouts,
    state: SendState,
    bytes_sent: u64,
}

#[derive(Debug)]
enum SendState {
    /// Every write so far succeeded.
    Open,
    /// A write failed: clamd closed its end, usually after replying. Only the reply is left.
    StoppedReading,
    /// A write timed out, possibly halfway through a chunk.
    TimedOut,
}

impl SendState {
    fn stopped(err: io::Error) -> SendState {
        tracing::debug!(error = %err, "clamd stopped reading the INSTREAM body; its reply follows");
        SendState::StoppedReading
    }
}

impl InstreamScan {
    /// Writes `chunk` to clamd now. See the [type-level contract](InstreamScan): a write error
    /// is remembered and reported by [`finish`](Self::finish), not here.
    pub async fn send(&mut self, chunk: &[u8]) -> Result<(), ClamdError> {
        for (header, piece) in protocol::chunk_frames(chunk, SEND_PIECE_BYTES) {
            match self.state {
                SendState::Open => {}
                SendState::StoppedReading => return Ok(()),
                SendState::TimedOut => return Err(ClamdError::Timeout { phase: "write" }),
            }
            // Header and bytes in one vectored write: one segment per chunk, no copy.
            let mut frame = Buf::chain(&header[..], piece);
            let write = self.conn.write_all_buf(&mut frame);
            match tokio::time::timeout(self.timeouts.write, write).await {
                Ok(Ok(())) => self.bytes_sent += piece.len() as u64,
                Ok(Err(err)) => self.state = SendState::stopped(err),
                Err(_) => {
                    self.state = SendState::TimedOut;
                    return Err(ClamdError::Timeout { phase: "write" });
                }
            }
        }
        Ok(())
    }

    /// Whether clamd has stopped reading the body (a write failed). Further chunks are ignored;
    /// call [`finish`](Self::finish) for clamd's reply.
    pub fn clamd_stopped_reading(&self) -> bool {
        matches!(self.state, SendState::StoppedReading)
    }

    /// Body bytes written to clamd so far (excluding framing).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Ends the body (unless clamd already stopped reading) and reads clamd's reply within the
    /// reply timeout: [`end`](Self::end), then [`PendingReply::read`].
    ///
    /// - `Ok(reply)` whenever clamd sent anything, including after a failed write: past
    ///   `StreamMaxLength` this is [`ScanReply::SizeLimitExceeded`]. A reply cut short by end of
    ///   file is parsed, except that a truncated `stream: OK` is [`ScanReply::Unknown`]: clean
    ///   needs the whole reply.
    /// - `Err(ClosedWithoutReply)` when clamd closed without a word (shutdown, temp file failure).
    /// - `Err(Timeout { phase })` when the terminator could not be written (`"write"`) or no
    ///   reply came (`"reply"`) in time.
    pub async fn finish(self) -> Result<ScanReply, ClamdError> {
        let limit = self.timeouts.reply;
        self.end().await?.read(limit).await
    }

    /// Ends the body (unless clamd already stopped reading): from here on clamd scans it, and
    /// goes on scanning even if the connection is closed (clamd 1.4 does not notice a client
    /// that leaves). The reply is read from the returned [`PendingReply`].
    ///
    /// `Err(Timeout { phase: "write" })` when the terminator could not be written in time (or an
    /// earlier write timed out): the body never ended, so clamd is not scanning it.
    pub async fn end(mut self) -> Result<PendingReply, ClamdError> {
        match self.state {
            SendState::Open => {
                match timeout_write(&mut self.conn, &protocol::INSTREAM_END, self.timeouts.write).await {
                    Ok(()) => {}
                    Err(WriteFailure::Io(err)) => self.state = SendState::stopped(err),
                    Err(WriteFailure::TimedOut) => return Err(ClamdError::Timeout { phase: "write" }),
                }
            }
            SendState::StoppedReading => {}
            SendState::TimedOut => return Err(ClamdError::Timeout { phase: "write" }),
        }
        Ok(PendingReply { conn: self.conn, fildes: false })
    }
}

/// A connection on which clamd has the whole body and is scanning it (or has answered).
///
/// Dropping it closes the connection, but clamd finishes the scan all the same: whoever limits
/// concurrent scans should keep counting this one until [`read`](Self::read) returns.
#[derive(Debug)]
pub struct PendingReply {
    conn: Connection,
    /// A FILDES scan: its reply starts `fd[N]: `, not `stream: `.
    fildes: bool,
}

impl PendingReply {
    /// Reads clamd's reply within `limit`, with the rules of [`InstreamScan::finish`]. When it
    /// returns, clamd is done with the scan: it has replied, or closed the connection (or, on
    /// `Timeout`, not answered within `limit`).
    pub async fn read(mut self, limit: Duration) -> Result<ScanReply, ClamdError> {
        let raw = read_reply_within(&mut self.conn, limit).await?;
        let reply =
            if self.fildes { protocol::parse_fildes_reply(&raw.bytes) } else { parse_scan_reply(&raw.bytes) };
        if reply == ScanReply::Clean && !raw.terminated {
            return Ok(ScanReply::Unknown { raw: String::from_utf8_lossy(&raw.bytes).into_owned() });
        }
        Ok(reply)
    }
}

/// Sends one byte carrying `file`'s descriptor (`SCM_RIGHTS`) on `stream`, waiting while the
/// socket is not writable.
#[cfg(unix)]
async fn send_descriptor(stream: &UnixStream, file: &std::fs::File) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::os::fd::AsFd;
    loop {
        stream.writable().await?;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let descriptors = [file.as_fd()];
            if !control.push(SendAncillaryMessage::ScmRights(&descriptors)) {
                return Err(io::Error::other("no room for the descriptor in the control message"));
            }
            rustix::net::sendmsg(stream, &[io::IoSlice::new(&[0])], &mut control, SendFlags::NOSIGNAL)
                .map_err(io::Error::from)
        });
        match sent {
            Ok(1) => return Ok(()),
            Ok(_) => {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "the descriptor byte was not sent"))
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
    }
}

enum WriteFailure {
    Io(io::Error),
    TimedOut,
}

async fn timeout_write(conn: &mut Connection, bytes: &[u8], limit: Duration) -> Result<(), WriteFailure> {
    match tokio::time::timeout(limit, conn.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(WriteFailure::Io(err)),
        Err(_) => Err(WriteFailure::TimedOut),
    }
}

/// A reply as read: up to and including the first terminator, or all bytes before end of file.
struct RawReply {
    bytes: Vec<u8>,
    terminated: bool,
}

/// Reads one reply within `limit`. Nothing at all before the connection ends is
/// `ClosedWithoutReply`.
async fn read_reply_within(conn: &mut Connection, limit: Duration) -> Result<RawReply, ClamdError> {
    let raw = tokio::time::timeout(limit, read_reply(conn))
        .await
        .map_err(|_| ClamdError::Timeout { phase: "reply" })??;
    if raw.bytes.is_empty() {
        return Err(ClamdError::ClosedWithoutReply);
    }
    Ok(raw)
}

async fn read_reply(conn: &mut Connection) -> Result<RawReply, ClamdError> {
    let mut bytes = Vec::with_capacity(64);
    let mut buf = [0u8; 512];
    loop {
        let n = match conn.read(&mut buf).await {
            Ok(n) => n,
            // clamd reset the connection (it closed with our unread body in its buffer); what it
            // sent before that has already been read.
            Err(err) if is_connection_closed(&err) => 0,
            Err(err) => return Err(ClamdError::Io(err)),
        };
        if n == 0 {
            return Ok(RawReply { bytes, terminated: false });
        }
        let read = &buf[..n];
        if let Some(end) = read.iter().position(|&b| b == b'\0' || b == b'\n') {
            bytes.extend_from_slice(&read[..=end]);
            return Ok(RawReply { bytes, terminated: true });
        }
        bytes.extend_from_slice(read);
        if bytes.len() > MAX_REPLY_BYTES {
            return Err(ProtocolError::ReplyTooLong { limit: MAX_REPLY_BYTES }.into());
        }
    }
}

fn is_connection_closed(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe
    )
}

/// A connection to clamd over either transport.
#[derive(Debug)]
enum Connection {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            #[cfg(unix)]
            Connection::Unix(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            #[cfg(unix)]
            Connection::Unix(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Connection::Tcp(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            #[cfg(unix)]
            Connection::Unix(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Connection::Tcp(stream) => stream.is_write_vectored(),
            #[cfg(unix)]
            Connection::Unix(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            #[cfg(unix)]
            Connection::Unix(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Connection::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            #[cfg(unix)]
            Connection::Unix(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix_addresses() {
        assert_eq!("tcp://127.0.0.1:3310".parse(), Ok(ClamdAddress::Tcp("127.0.0.1:3310".to_string())));
        assert_eq!(
            "tcp://clamd.internal:3310".parse(),
            Ok(ClamdAddress::Tcp("clamd.internal:3310".to_string()))
        );
        assert_eq!("tcp://[::1]:3310".parse(), Ok(ClamdAddress::Tcp("[::1]:3310".to_string())));
        assert_eq!(
            "unix:///run/clamav/clamd.ctl".parse(),
            Ok(ClamdAddress::Unix(PathBuf::from("/run/clamav/clamd.ctl")))
        );
    }

    #[test]
    fn rejects_bad_addresses_with_the_reason() {
        for bad in ["127.0.0.1:3310", "http://127.0.0.1:3310", "", "/run/clamd.ctl"] {
            assert_eq!(
                bad.parse::<ClamdAddress>(),
                Err(AddressError::UnknownScheme(bad.to_string())),
                "{bad}"
            );
        }
        for bad in [
            "tcp://127.0.0.1",
            "tcp://127.0.0.1:",
            "tcp://:3310",
            "tcp://127.0.0.1:0",
            "tcp://127.0.0.1:65536",
            "tcp://127.0.0.1:3310/",
            "tcp://user@host:3310",
            "tcp://[::1:3310",
        ] {
            assert_eq!(bad.parse::<ClamdAddress>(), Err(AddressError::InvalidTcp(bad.to_string())), "{bad}");
        }
        for bad in ["unix://", "unix:///", "unix://relative/clamd.ctl"] {
            assert_eq!(bad.parse::<ClamdAddress>(), Err(AddressError::InvalidUnix(bad.to_string())), "{bad}");
        }
        let message = "ftp://x".parse::<ClamdAddress>().unwrap_err().to_string();
        assert!(message.contains("tcp://") && message.contains("unix://"), "{message}");
    }

    #[test]
    fn address_display_round_trips() {
        for text in ["tcp://127.0.0.1:3310", "tcp://[::1]:3310", "unix:///run/clamav/clamd.ctl"] {
            let address: ClamdAddress = text.parse().unwrap();
            assert_eq!(address.to_string(), text);
        }
    }

    #[test]
    fn errors_map_to_unscanned_reasons() {
        let connect = ClamdError::Connect {
            address: "tcp://127.0.0.1:1".to_string(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(connect.unscanned_reason(), UnscannedReason::EngineUnavailable);
        assert_eq!(ClamdError::ClosedWithoutReply.unscanned_reason(), UnscannedReason::EngineUnavailable);
        assert_eq!(ClamdError::Timeout { phase: "reply" }.unscanned_reason(), UnscannedReason::Timeout);
        assert_eq!(ClamdError::Timeout { phase: "write" }.unscanned_reason(), UnscannedReason::Timeout);
        assert_eq!(
            ClamdError::Io(io::Error::from(io::ErrorKind::InvalidData)).unscanned_reason(),
            UnscannedReason::EngineError
        );
        assert_eq!(
            ClamdError::from(ProtocolError::ReplyTooLong { limit: 1 }).unscanned_reason(),
            UnscannedReason::EngineError
        );
    }

    /// A one-connection fake clamd: reads what the client sends for `read_for`, then replies
    /// `reply` (if any) and closes.
    async fn fake_clamd(read_for: Duration, reply: Option<&'static [u8]>) -> ClamdClient {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = ClamdAddress::Tcp(listener.local_addr().unwrap().to_string());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut sink = vec![0u8; 64 * 1024];
            let _ = tokio::time::timeout(read_for, async {
                while socket.read(&mut sink).await.is_ok_and(|n| n > 0) {}
            })
            .await;
            if let Some(reply) = reply {
                let _ = socket.write_all(reply).await;
            }
        });
        ClamdClient::new(address, test_timeouts())
    }

    fn test_timeouts() -> ClamdTimeouts {
        ClamdTimeouts {
            connect: Duration::from_secs(2),
            write: Duration::from_millis(300),
            reply: Duration::from_millis(300),
        }
    }

    #[tokio::test]
    async fn eof_without_reply_is_closed_without_reply() {
        let client = fake_clamd(Duration::from_millis(50), None).await;
        let err = client.scan_bytes(b"body").await.unwrap_err();
        assert!(matches!(err, ClamdError::ClosedWithoutReply), "{err:?}");
        assert_eq!(err.unscanned_reason(), UnscannedReason::EngineUnavailable);
    }

    #[tokio::test]
    async fn truncated_clean_reply_is_not_clean() {
        let client = fake_clamd(Duration::from_millis(50), Some(b"stream: OK")).await;
        assert_eq!(
            client.scan_bytes(b"body").await.unwrap(),
            ScanReply::Unknown { raw: "stream: OK".to_string() }
        );
    }

    #[tokio::test]
    async fn reply_is_read_up_to_the_first_terminator() {
        let client = fake_clamd(Duration::from_millis(50), Some(b"stream: X FOUND\0stream: OK\0")).await;
        assert_eq!(
            client.scan_bytes(b"body").await.unwrap(),
            ScanReply::Found { signature: "X".to_string() }
        );
        let client =
            fake_clamd(Duration::from_millis(50), Some(b"COMMAND READ TIMED OUT\nstream: OK\0")).await;
        assert_eq!(client.scan_bytes(b"body").await.unwrap(), ScanReply::ReadTimedOut);
    }

    #[tokio::test]
    async fn no_reply_in_time_is_a_reply_timeout() {
        // The fake reads for longer than the reply timeout, then closes without a word.
        let client = fake_clamd(Duration::from_secs(5), None).await;
        let err = client.scan_bytes(b"body").await.unwrap_err();
        assert!(matches!(err, ClamdError::Timeout { phase: "reply" }), "{err:?}");
        assert_eq!(err.unscanned_reason(), UnscannedReason::Timeout);
        let err = fake_clamd(Duration::from_secs(5), None).await.ping().await.unwrap_err();
        assert!(matches!(err, ClamdError::Timeout { phase: "reply" }), "{err:?}");
    }

    #[tokio::test]
    async fn clamd_that_stops_reading_is_a_write_timeout() {
        // Accepts but never reads: the socket buffers fill and a write stalls.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = ClamdAddress::Tcp(listener.local_addr().unwrap().to_string());
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(socket);
        });
        let mut scan = ClamdClient::new(address, test_timeouts()).start_scan().await.unwrap();
        let piece = vec![b'a'; 1024 * 1024];
        let mut result = Ok(());
        for _ in 0..256 {
            result = scan.send(&piece).await;
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(ClamdError::Timeout { phase: "write" })), "{result:?}");
        assert!(!scan.clamd_stopped_reading());
        assert!(matches!(scan.send(b"more").await, Err(ClamdError::Timeout { phase: "write" })));
        assert!(matches!(scan.finish().await, Err(ClamdError::Timeout { phase: "write" })));
        server.abort();
    }

    #[tokio::test]
    async fn unexpected_ping_reply_is_a_protocol_error() {
        let client = fake_clamd(Duration::from_millis(50), Some(b"UNKNOWN COMMAND\0")).await;
        let err = client.ping().await.unwrap_err();
        let expected = ProtocolError::UnexpectedReply { command: "PING", raw: "UNKNOWN COMMAND".to_string() };
        assert!(matches!(&err, ClamdError::Protocol(protocol) if *protocol == expected), "{err:?}");
        assert_eq!(err.unscanned_reason(), UnscannedReason::EngineError);
    }

    #[tokio::test]
    async fn connect_refused_is_engine_unavailable() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let client = ClamdClient::new(ClamdAddress::Tcp(format!("127.0.0.1:{port}")), test_timeouts());
        let err = client.start_scan().await.unwrap_err();
        assert!(matches!(err, ClamdError::Connect { .. }), "{err:?}");
        assert_eq!(err.unscanned_reason(), UnscannedReason::EngineUnavailable);
    }
}
