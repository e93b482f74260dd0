//! Resume tokens: the `id:` of every event, and the only cursor a client holds.
//!
//! A token is the position vector *after* an event — for every partition of the topic, the next
//! offset to deliver — so it is self-contained: any replica, or the same one after a restart,
//! resumes from it with no server-side session state.
//!
//! Binary layout (version 1), then base64url without padding (never CR, LF or NUL):
//!
//! | field        | encoding                                                            |
//! |--------------|---------------------------------------------------------------------|
//! | version      | 1 byte, `1`                                                          |
//! | flags        | 1 byte; bit 0 = sparse (partition numbers listed), bit 1 = every     |
//! |              | partition (a short key-stream id after a broken partitioner promise: |
//! |              | partitions not named start at their earliest offset), others 0       |
//! | topic        | 4 bytes, FNV-1a 32 of the topic name, little-endian                  |
//! | count        | varint, number of entries                                            |
//! | per entry    | sparse only: varint gap to the previous partition (first: partition) |
//! |              | zigzag varint: offset minus the previous entry's offset (first: 0)   |
//!
//! Dense tokens list partitions `0..count`. Offsets of a topic's partitions are usually close to
//! each other, so deltas stay short: a 30-partition topic at offsets around 10^9 takes about
//! 100 bytes (~135 characters). The longest token for `n` partitions is `6 + 5 + 15 n` bytes
//! before base64; tokens over [`MAX_TOKEN_CHARS`] are rejected without being decoded.

use base64::Engine;
use thiserror::Error;

/// Longest token accepted (characters of base64url), about 3 KB of binary.
pub const MAX_TOKEN_CHARS: usize = 4096;

const VERSION: u8 = 1;
const FLAG_SPARSE: u8 = 1;
const FLAG_EVERY: u8 = 2;
const KNOWN_FLAGS: u8 = FLAG_SPARSE | FLAG_EVERY;

/// Why a resume token was refused. Every variant is the client's fault (HTTP 400).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_CHARS`].
    #[error("resume id is longer than {MAX_TOKEN_CHARS} characters")]
    TooLong,
    /// Not base64url.
    #[error("resume id is not a token issued by this gateway (not base64url)")]
    NotBase64,
    /// The bytes end early, carry trailing bytes or break a rule of the layout.
    #[error("resume id is malformed: {0}")]
    Malformed(&'static str),
    /// A version this gateway does not know.
    #[error("resume id has unknown version {0}")]
    UnknownVersion(u8),
    /// Issued for another topic.
    #[error("resume id belongs to another topic")]
    WrongTopic,
}

/// A decoded position: `(partition, next offset)` pairs, partitions strictly increasing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position {
    /// The entries, sorted by partition, no duplicates, offsets non-negative.
    pub entries: Vec<(i32, i64)>,
    /// The stream reads every partition from this position, those not named from their earliest
    /// offset, even where a partitioner is promised (set by [`encode_every`]).
    pub every: bool,
}

impl Position {
    /// The next offset recorded for `partition`, if the token names it.
    pub fn offset(&self, partition: i32) -> Option<i64> {
        self.entries
            .binary_search_by_key(&partition, |(p, _)| *p)
            .ok()
            .map(|i| self.entries[i].1)
    }
}

/// FNV-1a 32-bit hash of a topic name: the token's topic check.
pub fn fingerprint(topic: &str) -> u32 {
    topic.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Encodes a dense vector: `next_offsets[p]` is the next offset of partition `p`.
pub fn encode_dense(topic_fingerprint: u32, next_offsets: &[i64]) -> String {
    let mut buf = header(topic_fingerprint, 0, next_offsets.len());
    let mut previous = 0i64;
    for &offset in next_offsets {
        put_varint(&mut buf, zigzag(offset.wrapping_sub(previous)));
        previous = offset;
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&buf)
}

/// Encodes a sparse vector of `(partition, next offset)` pairs sorted by partition.
pub fn encode_sparse(topic_fingerprint: u32, entries: &[(i32, i64)]) -> String {
    sparse(topic_fingerprint, FLAG_SPARSE, entries)
}

/// Encodes a sparse vector that tells every replica to read every partition: those not named
/// from their earliest offset. A key stream's last id when its partitioner promise was broken.
pub fn encode_every(topic_fingerprint: u32, entries: &[(i32, i64)]) -> String {
    sparse(topic_fingerprint, FLAG_SPARSE | FLAG_EVERY, entries)
}

fn sparse(topic_fingerprint: u32, flags: u8, entries: &[(i32, i64)]) -> String {
    let mut buf = header(topic_fingerprint, flags, entries.len());
    let (mut previous_partition, mut previous_offset) = (-1i64, 0i64);
    for &(partition, offset) in entries {
        let partition = i64::from(partition);
        put_varint(&mut buf, (partition - previous_partition - 1) as u64);
        put_varint(&mut buf, zigzag(offset.wrapping_sub(previous_offset)));
        previous_partition = partition;
        previous_offset = offset;
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&buf)
}

/// Decodes a token and checks that it was issued for `topic`.
pub fn decode(token: &str, topic: &str) -> Result<Position, TokenError> {
    if token.len() > MAX_TOKEN_CHARS {
        return Err(TokenError::TooLong);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| TokenError::NotBase64)?;
    let mut input = Reader(&bytes);
    let version = input.byte()?;
    if version != VERSION {
        return Err(TokenError::UnknownVersion(version));
    }
    let flags = input.byte()?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err(TokenError::Malformed("unknown flags"));
    }
    let fp = u32::from_le_bytes([input.byte()?, input.byte()?, input.byte()?, input.byte()?]);
    if fp != fingerprint(topic) {
        return Err(TokenError::WrongTopic);
    }
    let count = input.varint()?;
    // Each entry takes at least one byte: a count beyond the remaining bytes is a lie.
    if count > input.0.len() as u64 {
        return Err(TokenError::Malformed("entry count exceeds the token"));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let (mut partition, mut offset) = (-1i64, 0i64);
    for _ in 0..count {
        partition = if flags & FLAG_SPARSE != 0 {
            let gap = input.varint()?;
            i64::try_from(gap)
                .ok()
                .and_then(|gap| partition.checked_add(gap + 1))
                .ok_or(TokenError::Malformed("partition out of range"))?
        } else {
            partition + 1
        };
        let partition = i32::try_from(partition)
            .map_err(|_| TokenError::Malformed("partition out of range"))?;
        offset = offset.wrapping_add(unzigzag(input.varint()?));
        if offset < 0 {
            return Err(TokenError::Malformed("negative offset"));
        }
        entries.push((partition, offset));
    }
    if !input.0.is_empty() {
        return Err(TokenError::Malformed("trailing bytes"));
    }
    Ok(Position {
        entries,
        every: flags & FLAG_EVERY != 0,
    })
}

fn header(topic_fingerprint: u32, flags: u8, count: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(8 + count * 4);
    buf.push(VERSION);
    buf.push(flags);
    buf.extend_from_slice(&topic_fingerprint.to_le_bytes());
    put_varint(&mut buf, count as u64);
    buf
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, TokenError> {
        let (&first, rest) = self
            .0
            .split_first()
            .ok_or(TokenError::Malformed("truncated"))?;
        self.0 = rest;
        Ok(first)
    }

    fn varint(&mut self) -> Result<u64, TokenError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(TokenError::Malformed("varint overflows 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(TokenError::Malformed("varint overflows 64 bits"))
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_round_trips_and_plain_tokens_lack_it() {
        let fp = fingerprint("t");
        let every = decode(&encode_every(fp, &[(3, 9)]), "t").unwrap();
        assert_eq!((every.entries, every.every), (vec![(3, 9)], true));
        assert!(!decode(&encode_sparse(fp, &[(3, 9)]), "t").unwrap().every);
        assert!(!decode(&encode_dense(fp, &[3, 9]), "t").unwrap().every);
    }

    #[test]
    fn extreme_values_round_trip() {
        let offsets = [i64::MAX, 0, i64::MAX, 0];
        let token = encode_dense(fingerprint("t"), &offsets);
        assert_eq!(decode(&token, "t").unwrap().entries.len(), 4);
        let entries = [(0, 5), (i32::MAX, i64::MAX)];
        let token = encode_sparse(fingerprint("t"), &entries);
        assert_eq!(decode(&token, "t").unwrap().entries, entries);
    }

    #[test]
    fn size_is_small_for_typical_topics() {
        let offsets: Vec<i64> = (0..30).map(|p| 1_000_000_000 + p * 3_771).collect();
        let token = encode_dense(fingerprint("stock-prices"), &offsets);
        assert!(token.len() < 160, "{} chars", token.len());
        let one = encode_dense(fingerprint("stock-prices"), &[12]);
        assert_eq!(one.len(), 11);
    }

    #[test]
    fn lookup_by_partition() {
        let p = decode(&encode_sparse(fingerprint("t"), &[(2, 7), (9, 1)]), "t").unwrap();
        assert_eq!(
            (p.offset(2), p.offset(9), p.offset(3)),
            (Some(7), Some(1), None)
        );
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(decode("not base64!", "t"), Err(TokenError::NotBase64));
        assert_eq!(decode("", "t"), Err(TokenError::Malformed("truncated")));
        let long = "A".repeat(MAX_TOKEN_CHARS + 1);
        assert_eq!(decode(&long, "t"), Err(TokenError::TooLong));
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        assert_eq!(
            decode(&b64(&[2, 0]), "t"),
            Err(TokenError::UnknownVersion(2))
        );
        let fp = fingerprint("t").to_le_bytes();
        let with = |tail: &[u8], flags: u8| {
            let mut v = vec![1, flags];
            v.extend_from_slice(&fp);
            v.extend_from_slice(tail);
            b64(&v)
        };
        assert!(matches!(
            decode(&with(&[1, 2], 4), "t"),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            decode(&with(&[200, 1], 0), "t"),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            decode(&with(&[1, 2, 9], 0), "t"),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            decode(&with(&[1, 1], 0), "t"),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            decode(&with(&[1, 0xff], 0), "t"),
            Err(TokenError::Malformed(_))
        ));
        let overflow = [
            1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ];
        assert!(matches!(
            decode(&with(&overflow, 0), "t"),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn foreign_topic_is_refused() {
        let token = encode_dense(fingerprint("a"), &[1, 2]);
        assert_eq!(decode(&token, "b"), Err(TokenError::WrongTopic));
    }
}
