//! Key partitioners an operator may promise producers use (`KSG_KEY_PARTITIONER`): the Java
//! client's default, `toPositive(murmur2(key)) % partitions` (librdkafka's `murmur2` and
//! `murmur2_random`), and librdkafka's default, `crc32(key) % partitions` (`consistent_random`
//! and `consistent`). Knowing where a key lives lets a key stream's ids name one partition
//! instead of all of them; the promise is checked on every keyed record the gateway reads.

/// A key partitioner the operator promises every producer of every topic uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPartitioner {
    /// The Java client's default (and librdkafka's `murmur2`, `murmur2_random`).
    Murmur2,
    /// librdkafka's default `consistent_random` (and `consistent`): CRC-32 of the key.
    Crc32,
}

impl KeyPartitioner {
    /// The partition this partitioner picks for a non-empty `key` among `partitions`.
    pub fn partition(self, key: &[u8], partitions: usize) -> usize {
        match self {
            KeyPartitioner::Murmur2 => partition_for(key, partitions),
            KeyPartitioner::Crc32 => crc32(key) as usize % partitions.max(1),
        }
    }

    /// The name used in `KSG_KEY_PARTITIONER` and in logs.
    pub fn name(self) -> &'static str {
        match self {
            KeyPartitioner::Murmur2 => "murmur2",
            KeyPartitioner::Crc32 => "crc32",
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and librdkafka's `rd_crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

/// Kafka's 32-bit murmur2 of `data` (seed `0x9747b28c`), as a signed Java `int`.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        if tail.len() == 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for `key` among `partitions`.
pub fn partition_for(key: &[u8], partitions: usize) -> usize {
    ((murmur2(key) & 0x7fff_ffff) as usize) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kafkas_own_test_vectors() {
        for (input, expected) in [
            (&b"21"[..], -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ] {
            assert_eq!(
                murmur2(input),
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_values() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(
            crc32(b"The quick brown fox jumps over the lazy dog"),
            0x414f_a339
        );
        assert_eq!(
            KeyPartitioner::Crc32.partition(b"123456789", 7),
            0xcbf4_3926 % 7
        );
    }

    #[test]
    fn partition_is_positive_modulo() {
        assert_eq!(
            partition_for(b"21", 7),
            ((-973_932_308i32 & 0x7fff_ffff) as usize) % 7
        );
        assert!((0..1000).all(|i| partition_for(format!("k{i}").as_bytes(), 3) < 3));
    }
}
