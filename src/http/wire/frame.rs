//! HTTP/2 framing as the wire needs it: frame types, flags and sizes (RFC 9113), and a
//! frame's header.

pub(super) const DATA: u8 = 0x0;
pub(super) const HEADERS: u8 = 0x1;
pub(super) const RST_STREAM: u8 = 0x3;
pub(super) const SETTINGS: u8 = 0x4;
pub(super) const GOAWAY: u8 = 0x7;
pub(super) const WINDOW_UPDATE: u8 = 0x8;
pub(super) const CONTINUATION: u8 = 0x9;

pub(super) const END_STREAM: u8 = 0x1;
pub(super) const END_HEADERS: u8 = 0x4;
pub(super) const ACK: u8 = 0x1;

pub(super) const PREFACE_LEN: usize = 24;
pub(super) const HEAD_LEN: usize = 9;
/// RFC 9113's default SETTINGS_INITIAL_WINDOW_SIZE and connection window.
pub(super) const DEFAULT_WINDOW: i64 = 65_535;
pub(super) const MAX_WINDOW: i64 = (1 << 31) - 1;
/// The smallest SETTINGS_MAX_FRAME_SIZE, and the default.
pub(super) const MIN_FRAME: usize = 16_384;
pub(super) const MAX_FRAME: usize = (1 << 24) - 1;
/// Control frames larger than this are passed to `h2` unread: it refuses frames larger than
/// its own SETTINGS_MAX_FRAME_SIZE, which `h2conn::Settings::builder` sets to this value.
pub const LARGEST_READ: usize = MIN_FRAME;
/// Bytes read from the client at a time (what clients send an SSE gateway is small).
pub(super) const READ_BYTES: usize = 4096;
/// Bytes `h2` may add to an output buffer already this full only once some of it is written.
pub(super) const OUT_LIMIT: usize = 4 << 20;

/// The smallest share of the connection's window a stream waiting for it is given in a round
/// (a smaller window goes whole to the first in line, the next round to the next ones).
pub(super) const MIN_SHARE: i64 = 512;

/// New streams `h2` may hold that the connection's task has not accepted yet; the HEADERS of
/// the next wait in the way in until it accepts one. `h2` keeps each request it has read
/// but not handed out in a slab of the connection that never shrinks: a client that opens
/// 256 streams at once (every EventSource of a page reconnecting after a restart) grew it to
/// 256 requests, about 64 KiB held for the connection's life.
pub(super) const AHEAD: usize = 16;

/// The bytes a connection's streams may write between two of the connection's writes.
/// Streams due when it is spent wait for the next write (see `http::answers`).
pub const WRITE_BYTES: usize = 64 << 10;

/// A client frame's header.
pub(super) struct Head {
    pub(super) len: usize,
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) id: u32,
}

impl Head {
    pub(super) fn parse(bytes: &[u8]) -> Head {
        Head {
            len: (usize::from(bytes[0]) << 16)
                | (usize::from(bytes[1]) << 8)
                | usize::from(bytes[2]),
            kind: bytes[3],
            flags: bytes[4],
            id: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff,
        }
    }
}
