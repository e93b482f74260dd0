//! A minimal HTTP/2 frame client that, unlike real clients, ignores the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS, so tests can see what the server does with one stream more.

use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const FLAG_ACK: u8 = 1;
const FLAG_END_STREAM: u8 = 1;
const FLAG_END_HEADERS: u8 = 4;

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

/// What the server did with each stream.
#[derive(Default, Debug)]
pub struct StreamSeen {
    /// `:status 200` arrived (static table index 8, as h2 encodes it).
    pub ok: bool,
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
    pub async fn handshake(mut io: T) -> Self {
        io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        // SETTINGS: INITIAL_WINDOW_SIZE (4) = 16 MiB.
        let mut settings = Vec::new();
        settings.extend_from_slice(&4u16.to_be_bytes());
        settings.extend_from_slice(&(16u32 << 20).to_be_bytes());
        write_frame(&mut io, SETTINGS, 0, 0, &settings).await;
        // Connection window + 1 GiB.
        write_frame(&mut io, 8, 0, 0, &(1u32 << 30).to_be_bytes()).await;
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

    /// Opens a GET stream for `path` (HPACK literals without indexing, no Huffman).
    pub async fn get(&mut self, stream: u32, path: &str) {
        let mut block = vec![0x82, 0x87]; // :method GET, :scheme https
        block.push(0x01); // :authority, literal without indexing
        push_string(&mut block, "localhost");
        block.push(0x04); // :path, literal without indexing
        push_string(&mut block, path);
        write_frame(
            &mut self.io,
            HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            stream,
            &block,
        )
        .await;
    }

    /// Writes one frame.
    pub async fn send_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        write_frame(&mut self.io, kind, flags, stream, payload).await;
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
        let mut head = [0u8; 9];
        self.io.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let frame = Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload: {
                let mut p = vec![0; len];
                self.io.read_exact(&mut p).await.ok()?;
                p
            },
        };
        match frame.kind {
            HEADERS => {
                self.streams.entry(frame.stream).or_default().ok =
                    frame.payload.first() == Some(&0x88)
            }
            DATA => self
                .streams
                .entry(frame.stream)
                .or_default()
                .data
                .extend_from_slice(&frame.payload),
            RST_STREAM => {
                let code = u32::from_be_bytes(frame.payload[..4].try_into().unwrap());
                self.streams.entry(frame.stream).or_default().reset = Some(code);
            }
            GOAWAY => {}
            _ => {}
        }
        Some(frame)
    }
}

fn push_string(block: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 127, "short strings only");
    block.push(s.len() as u8);
    block.extend_from_slice(s.as_bytes());
}

async fn write_frame<T: AsyncWrite + Unpin>(
    io: &mut T,
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) {
    let len = (payload.len() as u32).to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    io.write_all(&frame).await.unwrap();
    io.flush().await.unwrap();
}
