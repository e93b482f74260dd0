//! Property tests of the resume-token codec.
//!
//! What the codec guarantees: every position within the documented limits (partitions sorted
//! and distinct, offsets non-negative, up to 200 entries) encodes to a token of at most
//! [`MAX_TOKEN_CHARS`] that decodes to exactly that position; decoding any other text either
//! fails or yields a well-formed position (sorted, distinct, non-negative) that re-encodes to a
//! token decoding to the same position, so a forged or altered id can only name a position a
//! real one could have named. Decoding never panics.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;

/// The most entries for which the README promises a token fits in any case.
const MAX_ENTRIES: usize = 200;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Next offsets: anything from 0 to `i64::MAX`, or a realistic cluster around one base.
fn offsets(max: usize) -> impl Strategy<Value = Vec<i64>> {
    prop_oneof![
        vec(0..=i64::MAX, 0..=max),
        (0..=i64::MAX / 2, vec(0..1_000_000i64, 0..=max))
            .prop_map(|(base, deltas)| deltas.into_iter().map(|d| base + d).collect()),
        vec(
            prop::sample::select(vec![0, 1, i64::MAX - 1, i64::MAX]),
            0..=max
        ),
    ]
}

/// Sorted, distinct partitions (small gaps or anywhere in `0..=i32::MAX`) with their offsets.
fn sparse_entries() -> impl Strategy<Value = Vec<(i32, i64)>> {
    (
        prop::collection::btree_set(
            prop_oneof![0..64i32, 0..=i32::MAX, Just(i32::MAX)],
            0..=MAX_ENTRIES,
        ),
        offsets(MAX_ENTRIES),
    )
        .prop_map(|(partitions, offsets)| {
            partitions
                .into_iter()
                .zip(offsets.into_iter().chain(std::iter::repeat(7)))
                .collect()
        })
}

/// A varint as the layout writes it, or with `overlong` redundant continuation bytes (which
/// decode to the same value while the varint stays within 10 bytes).
fn varint(value: u64, overlong: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    put_varint(&mut bytes, value);
    if overlong > 0 {
        *bytes.last_mut().unwrap() |= 0x80;
        bytes.extend(std::iter::repeat_n(0x80, overlong - 1));
        bytes.push(0);
    }
    bytes
}

/// Raw varint values of a layout field: small, zigzagged small negatives, large, extreme.
fn raw_field() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..4u64,
        prop::sample::select(vec![1, 3, 5, u64::MAX, u64::MAX - 1, 1 << 32, 1 << 63]),
        0..=u64::from(u32::MAX),
        any::<u64>(),
    ]
}

/// Token bytes that get past the header often: version 1, flags mostly known, the fingerprint
/// of `t`; then either noise, or a count and entries laid out as the version-1 layout says
/// with any values in the fields (negative offsets, partitions past `i32::MAX`, overlong
/// varints) and a count that may be one off.
fn token_bytes() -> impl Strategy<Value = Vec<u8>> {
    let header = |flags: u8| {
        let mut bytes = vec![VERSION, flags];
        bytes.extend_from_slice(&fingerprint("t").to_le_bytes());
        bytes
    };
    let varint_byte = prop_oneof![0u8..0x80, 0x80u8..=0xff, Just(0x80), Just(0xff), Just(0x7f)];
    prop_oneof![
        vec(any::<u8>(), 0..40),
        (0u8..8, vec(varint_byte, 0..60))
            .prop_map(move |(flags, tail)| { [header(flags), tail].concat() }),
        (
            prop_oneof![4 => 0u8..4, 1 => 0u8..8],
            -1i64..=1,
            vec((raw_field(), raw_field(), 0usize..4), 0..8),
        )
            .prop_map(move |(flags, count_error, entries)| {
                let mut bytes = header(flags);
                let count = (entries.len() as i64 + count_error).max(0) as u64;
                bytes.extend(varint(count, 0));
                for (gap, delta, overlong) in entries {
                    if flags & FLAG_SPARSE != 0 {
                        bytes.extend(varint(gap, overlong % 2));
                    }
                    bytes.extend(varint(delta, overlong / 2));
                }
                bytes
            }),
    ]
}

/// The canonical token of a decoded position.
fn reencode(p: &Position) -> String {
    let fp = fingerprint("t");
    if p.every {
        encode_every(fp, &p.entries)
    } else {
        encode_sparse(fp, &p.entries)
    }
}

/// What a successful decode must look like, and that it re-encodes to itself.
fn assert_well_formed(p: &Position) -> Result<(), TestCaseError> {
    prop_assert!(p.entries.windows(2).all(|w| w[0].0 < w[1].0), "{:?}", p);
    prop_assert!(p.entries.iter().all(|&(part, off)| part >= 0 && off >= 0));
    let token = reencode(p);
    let again = decode(&token, "t");
    prop_assert_eq!(again.as_ref(), Ok(p));
    Ok(())
}

proptest! {
    #![proptest_config(config(10_000))]

    #[test]
    fn any_text_decodes_to_a_well_formed_position_or_an_error(
        token in prop_oneof![
            any::<String>(),
            "[A-Za-z0-9_-]{0,64}",
            (MAX_TOKEN_CHARS - 8..MAX_TOKEN_CHARS + 8).prop_map(|n| "AQ".repeat(n / 2)),
            token_bytes().prop_map(|b| URL_SAFE_NO_PAD.encode(b)),
        ],
    ) {
        match decode(&token, "t") {
            Ok(p) => assert_well_formed(&p)?,
            Err(TokenError::TooLong) => prop_assert!(token.len() > MAX_TOKEN_CHARS),
            Err(_) => prop_assert!(token.len() <= MAX_TOKEN_CHARS),
        }
    }

    #[test]
    fn any_token_bytes_decode_to_a_well_formed_position_or_an_error(bytes in token_bytes()) {
        match decode(&URL_SAFE_NO_PAD.encode(&bytes), "t") {
            Ok(p) => assert_well_formed(&p)?,
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

proptest! {
    #![proptest_config(config(5_000))]

    #[test]
    fn dense_positions_round_trip(offsets in offsets(MAX_ENTRIES), topic in "[a-z.]{1,12}") {
        let token = encode_dense(fingerprint(&topic), &offsets);
        prop_assert!(token.len() <= MAX_TOKEN_CHARS, "{} chars", token.len());
        prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        let want: Vec<(i32, i64)> = (0..).zip(offsets.iter().copied()).collect();
        prop_assert_eq!(decode(&token, &topic), Ok(Position { entries: want, every: false }));
        if fingerprint(&topic) != fingerprint("other") {
            prop_assert_eq!(decode(&token, "other"), Err(TokenError::WrongTopic));
        }
    }

    #[test]
    fn sparse_positions_round_trip_within_the_documented_size(
        entries in sparse_entries(),
        every in any::<bool>(),
    ) {
        let fp = fingerprint("t");
        let token = if every { encode_every(fp, &entries) } else { encode_sparse(fp, &entries) };
        let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        prop_assert!(bytes.len() <= 6 + 5 + 15 * entries.len(), "{} bytes", bytes.len());
        prop_assert!(token.len() <= MAX_TOKEN_CHARS);
        prop_assert_eq!(decode(&token, "t"), Ok(Position { entries, every }));
    }

    #[test]
    fn a_cut_or_extended_token_is_refused(
        entries in sparse_entries(),
        cut in any::<prop::sample::Index>(),
        extra in vec(any::<u8>(), 1..4),
    ) {
        let bytes = URL_SAFE_NO_PAD.decode(encode_sparse(fingerprint("t"), &entries)).unwrap();
        let short = URL_SAFE_NO_PAD.encode(&bytes[..cut.index(bytes.len())]);
        prop_assert!(decode(&short, "t").is_err());
        let long = URL_SAFE_NO_PAD.encode([&bytes[..], &extra].concat());
        prop_assert_eq!(decode(&long, "t"), Err(TokenError::Malformed("trailing bytes")));
    }
}
