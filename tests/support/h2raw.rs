//! A minimal HTTP/2 frame client that, unlike real clients, ignores the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS, so tests can see what the server does with one stream more,
//! and writes any frames a test builds (floods, resets, header blocks that never end).

use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frame types (RFC 9113, 6).
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;
/// Frame flags.
pub const FLAG_ACK: u8 = 1;
pub const FLAG_END_STREAM: u8 = 1;
pub const FLAG_END_HEADERS: u8 = 4;
/// Error codes (RFC 9113, 7).
pub const NO_ERROR: u32 = 0;
pub const CANCEL: u32 = 8;
pub const ENHANCE_YOUR_CALM: u32 = 11;

/// One frame as read.
pub struct Frame {
    /// Frame type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream id.
    pub stream: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The GOAWAY this frame is, if it is one.
    pub fn goaway(&self) -> Option<GoAway> {
        if self.kind != GOAWAY || self.payload.len() < 8 {
            return None;
        }
        let word = |at: usize| u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap());
        Some(GoAway {
            last_stream: word(0) & 0x7fff_ffff,
            code: word(4),
            debug: self.payload[8..].to_vec(),
        })
    }
}

/// A GOAWAY frame's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoAway {
    /// The last stream the server processed.
    pub last_stream: u32,
    /// Error code.
    pub code: u32,
    /// Additional debug data (h2 names the limit that was hit, e.g. `too_many_resets`).
    pub debug: Vec<u8>,
}

/// What the server did with each stream.
#[derive(Default, Debug)]
pub struct StreamSeen {
    /// `:status 200` arrived (static table index 8, as h2 encodes it).
    pub ok: bool,
    /// The response status, when this client can read it (see [`status_of`]).
    pub status: Option<u16>,
    /// END_STREAM arrived.
    pub ended: bool,
    /// All DATA received.
    pub data: Vec<u8>,
    /// RST_STREAM error code, if reset.
    pub reset: Option<u32>,
}

/// A raw HTTP/2 connection.
pub struct RawH2<T> {
    io: T,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS (id 3), when sent.
    pub max_concurrent_streams: Option<u32>,
    /// Per-stream observations.
    pub streams: HashMap<u32, StreamSeen>,
}

impl<T: AsyncRead + AsyncWrite + Unpin> RawH2<T> {
    /// Sends the preface and large windows, reads the server's SETTINGS and acknowledges them.
    pub async fn handshake(io: T) -> Self {
        // Streams 16 MiB each, the connection + 1 GiB.
        Self::handshake_with(io, 16 << 20, 1 << 30).await
    }

    /// The handshake with stream windows of `stream_window` bytes and the connection's
    /// window raised by `connection_increment` (0: left at 65,535).
    pub async fn handshake_with(mut io: T, stream_window: u32, connection_increment: u32) -> Self {
        io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        // SETTINGS: INITIAL_WINDOW_SIZE (4).
        let mut settings = Vec::new();
        settings.extend_from_slice(&4u16.to_be_bytes());
        settings.extend_from_slice(&stream_window.to_be_bytes());
        write_frame(&mut io, SETTINGS, 0, 0, &settings).await;
        if connection_increment > 0 {
            let increment = connection_increment.to_be_bytes();
            write_frame(&mut io, WINDOW_UPDATE, 0, 0, &increment).await;
        }
        let mut raw = RawH2 {
            io,
            max_concurrent_streams: None,
            streams: HashMap::new(),
        };
        loop {
            let frame = raw.read_frame().await;
            if frame.kind == SETTINGS && frame.flags & FLAG_ACK == 0 {
                for setting in frame.payload.chunks(6) {
                    let id = u16::from_be_bytes([setting[0], setting[1]]);
                    let value =
                        u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                    if id == 3 {
                        raw.max_concurrent_streams = Some(value);
                    }
                }
                write_frame(&mut raw.io, SETTINGS, FLAG_ACK, 0, &[]).await;
                return raw;
            }
        }
    }

    /// Opens a GET stream for `path` (see [`request_block`]).
    pub async fn get(&mut self, stream: u32, path: &str) {
        write_frame(
            &mut self.io,
            HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            stream,
            &request_block(path),
        )
        .await;
    }

    /// Writes one frame.
    pub async fn send_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        write_frame(&mut self.io, kind, flags, stream, payload).await;
    }

    /// Writes bytes as they are (frames built with [`frame`]); an error when the server has
    /// closed the connection.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// The connection, after the handshake (nothing read from it is held back).
    pub fn into_inner(self) -> T {
        self.io
    }

    /// Reads frames, acknowledging PINGs as a live client does, until the server closes the
    /// connection; returns the frame types seen.
    pub async fn read_until_closed(&mut self) -> Vec<u8> {
        let mut kinds = Vec::new();
        while let Some(frame) = self.try_read_frame().await {
            if frame.kind == PING && frame.flags & FLAG_ACK == 0 {
                write_frame(&mut self.io, PING, FLAG_ACK, 0, &frame.payload).await;
            }
            kinds.push(frame.kind);
        }
        kinds
    }

    /// Reads one frame and records what it says about its stream.
    pub async fn read_frame(&mut self) -> Frame {
        self.try_read_frame().await.expect("a frame")
    }

    /// Reads one frame, `None` when the connection closed.
    pub async fn try_read_frame(&mut self) -> Option<Frame> {
        let frame = read_frame(&mut self.io).await?;
        let end_stream = frame.flags & FLAG_END_STREAM != 0;
        match frame.kind {
            HEADERS => {
                let seen = self.streams.entry(frame.stream).or_default();
                seen.ok = frame.payload.first() == Some(&0x88);
                seen.status = status_of(&frame.payload);
                seen.ended |= end_stream;
            }
            DATA => {
                let seen = self.streams.entry(frame.stream).or_default();
                seen.data.extend_from_slice(&frame.payload);
                seen.ended |= end_stream;
            }
            RST_STREAM => {
                let code = u32::from_be_bytes(frame.payload[..4].try_into().unwrap());
                self.streams.entry(frame.stream).or_default().reset = Some(code);
            }
            _ => {}
        }
        Some(frame)
    }
}

/// Reads one frame from `io`, `None` when the connection closed.
pub async fn read_frame<R: AsyncRead + Unpin>(io: &mut R) -> Option<Frame> {
    let mut head = [0u8; 9];
    io.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0; len];
    io.read_exact(&mut payload).await.ok()?;
    Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    })
}

/// The header block of `GET https://localhost{path}` (HPACK literals without indexing, no
/// Huffman); the caller chooses the frame and its flags.
pub fn request_block(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
    block.push(0x01); // :authority, literal without indexing
    push_string(&mut block, b"localhost");
    block.push(0x04); // :path, literal without indexing
    push_string(&mut block, path.as_bytes());
    block
}

/// Appends an HPACK integer (RFC 7541, 5.1) with an `n`-bit prefix; `flags` are the bits of
/// the first byte above the prefix.
pub fn push_int(block: &mut Vec<u8>, n: u32, flags: u8, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        block.push(flags | value as u8);
        return;
    }
    block.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        block.push(0x80 | (rest % 128) as u8);
        rest /= 128;
    }
    block.push(rest as u8);
}

/// Appends an HPACK string literal, not Huffman-coded.
pub fn push_string(block: &mut Vec<u8>, s: &[u8]) {
    push_int(block, 7, 0, s.len());
    block.extend_from_slice(s);
}

/// The `:status` of a response header block, when it comes first as a static-table entry or a
/// literal with the static name `:status` (what h2 sends, except for a status it already put in
/// the dynamic table, which this client does not track: the first response of a status on a
/// connection is always readable).
pub fn status_of(block: &[u8]) -> Option<u16> {
    let mut rest = block;
    // Dynamic table size updates (001xxxxx) may come first.
    while rest.first().is_some_and(|b| b & 0xe0 == 0x20) {
        let more = rest.iter().skip(1).position(|b| b & 0x80 == 0);
        rest = match rest[0] & 0x1f {
            0x1f => &rest[2 + more?..],
            _ => &rest[1..],
        };
    }
    let (&first, rest) = rest.split_first()?;
    if first & 0x80 != 0 {
        let statuses = [200, 204, 206, 304, 400, 404, 500];
        return statuses
            .get(usize::from(first & 0x7f).checked_sub(8)?)
            .copied();
    }
    // A literal (with indexing: 01xxxxxx; without or never indexed: 000xxxxx) named by static
    // entry 8, `:status`.
    let name = if first & 0xc0 == 0x40 {
        first & 0x3f
    } else {
        first & 0x0f
    };
    if name != 8 {
        return None;
    }
    let (&head, rest) = rest.split_first()?;
    let value = rest.get(..usize::from(head & 0x7f))?;
    let text = if head & 0x80 != 0 {
        huffman_digits(value)?
    } else {
        value.to_vec()
    };
    std::str::from_utf8(&text).ok()?.parse().ok()
}

/// Decodes a Huffman-coded string of digits (RFC 7541, Appendix B: `0`-`2` are five bits,
/// `00000`-`00010`; `3`-`9` six, `011001`-`011111`); `None` for anything else.
fn huffman_digits(bytes: &[u8]) -> Option<Vec<u8>> {
    let bits = bytes.len() * 8;
    let bit = |i: usize| (bytes[i / 8] >> (7 - i % 8)) & 1;
    let read = |from: usize, n: usize| (from..from + n).fold(0u8, |v, i| v << 1 | bit(i));
    let mut out = Vec::new();
    let mut i = 0;
    while bits - i >= 5 {
        let five = read(i, 5);
        if five <= 2 {
            out.push(b'0' + five);
            i += 5;
        } else if bits - i >= 6 && (25..=31).contains(&read(i, 6)) {
            out.push(b'0' + read(i, 6) - 22);
            i += 6;
        } else {
            break;
        }
    }
    // The rest is padding: fewer than eight bits, all ones.
    (bits - i < 8 && (i..bits).all(|j| bit(j) == 1)).then_some(out)
}

/// One frame's bytes on the wire.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

async fn write_frame<T: AsyncWrite + Unpin>(
    io: &mut T,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) {
    io.write_all(&frame(kind, flags, stream, payload))
        .await
        .unwrap();
    io.flush().await.unwrap();
}
