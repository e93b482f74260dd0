//! Property tests of configuration parsing: any set of variables either parses or is refused
//! with problems that each name a variable, and good values come back as given.

use std::collections::{BTreeMap, BTreeSet};

use proptest::collection::btree_map;
use proptest::prelude::*;

use super::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A whole-number variable: its name, the range it accepts and where the value lands.
struct Number {
    name: &'static str,
    min: u64,
    max: u64,
    get: fn(&Config) -> u64,
}

const fn number(name: &'static str, min: u64, max: u64, get: fn(&Config) -> u64) -> Number {
    Number {
        name,
        min,
        max,
        get,
    }
}

const DAY: u64 = 86_400;

const NUMBERS: &[Number] = &[
    number(MAX_STREAMS_PER_CONNECTION, 1, 65_535, |c| {
        c.max_streams_per_connection.into()
    }),
    number(MAX_CONNECTIONS, 1, 1_000_000, |c| c.max_connections as u64),
    number(MAX_CONNECTIONS_PER_IP, 0, 1_000_000, |c| {
        c.max_connections_per_ip.unwrap_or(0) as u64
    }),
    number(HEARTBEAT_SECS, 1, 3600, |c| c.heartbeat.as_secs()),
    number(RETRY_MS, 0, DAY * 1000, |c| c.retry_ms),
    number(SHUTDOWN_GRACE_SECS, 0, 3600, |c| c.shutdown_grace.as_secs()),
    number(STREAM_QUEUE, 1, 1_000_000, |c| c.stream_queue as u64),
    number(STREAM_QUEUE_BYTES, 16 << 10, 1 << 30, |c| {
        c.stream_queue_bytes as u64
    }),
    number(REPLAY_BYTES, 0, 1 << 34, |c| c.replay_bytes as u64),
    number(CATCHUP_READERS, 1, 256, |c| c.catchup_readers as u64),
    number(WORKER_THREADS, 0, 1024, |c| c.worker_threads as u64),
    number(CATCHUP_READER_IDLE_SECS, 0, DAY, |c| {
        c.catchup_reader_idle.as_secs()
    }),
    number(SNAPSHOT_BYTES, 1024, 1 << 36, |c| c.snapshot_bytes as u64),
    number(STREAM_MAX_SECS, 0, 30 * DAY, |c| {
        c.stream_max_lifetime.map_or(0, |d| d.as_secs())
    }),
    number(METADATA_REFRESH_SECS, 1, 3600, |c| {
        c.metadata_refresh.as_secs()
    }),
    number(MAX_EVENT_BYTES, 1, 1 << 30, |c| c.max_event_bytes as u64),
    number(MAX_KEYS_PER_STREAM, 1, 100_000, |c| {
        c.max_keys_per_stream as u64
    }),
    number(HANDSHAKE_TIMEOUT_SECS, 1, 300, |c| {
        c.handshake_timeout.as_secs()
    }),
    number(IDLE_TIMEOUT_SECS, 0, DAY, |c| {
        c.idle_timeout.map_or(0, |d| d.as_secs())
    }),
    number(STREAM_STALL_SECS, 1, 3600, |c| c.stream_stall.as_secs()),
    number(DRAIN_DELAY_SECS, 0, 3600, |c| c.drain_delay.as_secs()),
    number(TOPIC_IDLE_SECS, 0, DAY, |c| c.topic_idle.as_secs()),
    number(DEMO_TICKS_PER_SEC, 1, 1000, |c| c.demo_ticks_per_sec.into()),
];

/// A variable with a fixed set of words: its name, the words and where the value lands.
struct Choice {
    name: &'static str,
    words: &'static [&'static str],
    get: fn(&Config) -> &'static str,
}

const CHOICES: &[Choice] = &[
    Choice {
        name: TLS,
        words: &["on", "off"],
        get: |c| if c.tls.is_some() { "on" } else { "off" },
    },
    Choice {
        name: LOG_FORMAT,
        words: &["text", "json"],
        get: |c| if c.log_json { "json" } else { "text" },
    },
    Choice {
        name: KEY_PARTITIONER,
        words: &["none", "murmur2", "crc32"],
        get: |c| match c.key_partitioner {
            None => "none",
            Some(KeyPartitioner::Murmur2) => "murmur2",
            Some(KeyPartitioner::Crc32) => "crc32",
        },
    },
];

/// The value a whole-number variable holds: a whole number (an optional `+`) in range,
/// surrounding whitespace ignored. `None`: the value must be refused.
fn whole_number(value: &str, min: u64, max: u64) -> Option<u64> {
    let digits = value.trim();
    let digits = digits.strip_prefix('+').unwrap_or(digits);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = digits.bytes().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })?;
    (min..=max).contains(&n).then_some(n)
}

/// Whitespace a value may be wrapped in.
fn padding() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", " ", "\t", "  \n"])
}

/// A value for a whole-number variable: in range (perhaps padded, signed or zero-led), just out
/// of range, negative, huge, or any text.
fn number_value(min: u64, max: u64) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (padding(), prop_oneof![Just(min), Just(max), min..=max], padding(), 0..3usize)
            .prop_map(|(before, n, after, style)| match style {
                0 => format!("{before}{n}{after}"),
                1 => format!("{before}+{n}{after}"),
                _ => format!("{before}00{n}{after}"),
            }),
        1 => Just(format!("{}", max + 1)),
        1 => Just(format!("{}", min.wrapping_sub(1))),
        1 => (1..u64::MAX).prop_map(|n| format!("-{n}")),
        1 => Just("99999999999999999999999".to_string()),
        2 => any::<String>(),
        1 => "[0-9 +.e_-]{0,8}",
    ]
}

/// A value for a word variable: one of its words (perhaps padded), a near miss, or any text.
fn choice_value(words: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (padding(), prop::sample::select(words), padding())
            .prop_map(|(before, w, after)| format!("{before}{w}{after}")),
        1 => prop::sample::select(words).prop_map(str::to_uppercase),
        1 => any::<String>(),
    ]
}

/// Names: every known variable, pass-through and unknown `KSG_` names, names of other programs.
fn name() -> impl Strategy<Value = String> {
    let known: Vec<&str> = VARIABLES.iter().map(|(name, _)| *name).collect();
    prop_oneof![
        6 => prop::sample::select(known).prop_map(str::to_string),
        1 => "KSG_KAFKA_[A-Za-z_]{0,10}",
        1 => "KSG_(TEST_)?[A-Z_]{0,12}",
        1 => any::<String>(),
    ]
}

/// Values that reach every parser: addresses, lists, templates, filters, origins, paths, and
/// any text.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => prop::sample::select(vec![
            "", " ", "0", "1", "-1", "+7", "99999999999999999999", "on", "off", "json", "crc32",
            "127.0.0.1:0", "[::1]:8443", "localhost:80", "a,b*,", "*", "bad topic",
            "/q/{key}=t", "/{topic}/{key}", "/a/{topic}=t", "/q//x=t", "=", "info",
            "a=debug,warn", "=info", "info,", "a=b=c", "[x]=info", "*", "https://a.example",
            "https://a.example/", "http://x\u{7f}", "0123456789abcdef", "0123456789 abcdef",
            "c.pem",
        ])
        .prop_map(str::to_string),
        1 => "[a-z0-9*?,=/{}: .%-]{0,24}",
    ]
}

proptest! {
    #![proptest_config(config(4_000))]

    /// Whatever the variables hold, parsing returns; a refusal lists problems that each name a
    /// variable that was set, or a known one the values made necessary, and never shows the
    /// admin token.
    #[test]
    fn any_variables_parse_or_every_problem_names_a_variable(
        vars in btree_map(name(), value(), 0..10),
    ) {
        let Err(ConfigError(problems)) = Config::from_vars(vars.clone()) else {
            return Ok(());
        };
        prop_assert!(!problems.is_empty());
        let known = |name: &str| VARIABLES.iter().any(|(known, _)| *known == name);
        for p in &problems {
            prop_assert!(
                (vars.contains_key(&p.variable) && !p.variable.starts_with("KSG_TEST_"))
                    || known(&p.variable),
                "{:?} in {:?}",
                p,
                vars
            );
            prop_assert!(!p.message.is_empty());
            if p.variable == ADMIN_TOKEN {
                let quoted = format!("{:?}", vars[ADMIN_TOKEN]);
                prop_assert!(!p.message.contains(&quoted));
            }
        }
        let text = ConfigError(problems.clone()).to_string();
        for p in &problems {
            let shown = format!("{}: {}", p.variable, p.message);
            prop_assert!(text.contains(&shown), "{}", text);
        }
    }
}

/// A set of word and number variables, each with a value from its own strategy.
fn numbers_and_choices() -> impl Strategy<Value = BTreeMap<&'static str, String>> {
    let numbers: Vec<_> = NUMBERS
        .iter()
        .map(|n| prop::option::weighted(0.5, number_value(n.min, n.max)))
        .collect();
    let choices: Vec<_> = CHOICES
        .iter()
        .map(|c| prop::option::weighted(0.5, choice_value(c.words)))
        .collect();
    (numbers, choices).prop_map(|(numbers, choices)| {
        let names = NUMBERS.iter().map(|n| n.name);
        let names = names.chain(CHOICES.iter().map(|c| c.name));
        names
            .zip(numbers.into_iter().chain(choices))
            .filter_map(|(name, value)| Some((name, value?)))
            .collect()
    })
}

proptest! {
    #![proptest_config(config(3_000))]

    /// Good values come back as given and bad ones are refused, each naming its own variable
    /// and quoting its value, all of them together and nothing else.
    #[test]
    fn values_come_back_as_given_or_exactly_the_bad_ones_are_named(
        vars in numbers_and_choices(),
        extra_problem in any::<bool>(),
    ) {
        let mut want_bad = BTreeSet::new();
        for n in NUMBERS {
            if let Some(value) = vars.get(n.name) {
                if whole_number(value, n.min, n.max).is_none() {
                    want_bad.insert(n.name.to_string());
                }
            }
        }
        for c in CHOICES {
            if let Some(value) = vars.get(c.name) {
                if !c.words.contains(&value.trim()) {
                    want_bad.insert(c.name.to_string());
                }
            }
        }
        let mut input: Vec<(String, String)> =
            vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        if extra_problem {
            input.push(("KSG_NO_SUCH_VARIABLE".into(), "1".into()));
            want_bad.insert("KSG_NO_SUCH_VARIABLE".into());
        }

        match Config::from_vars(input) {
            Ok(c) => {
                prop_assert!(want_bad.is_empty(), "accepted {:?}", vars);
                for n in NUMBERS {
                    let value = vars.get(n.name).and_then(|v| whole_number(v, n.min, n.max));
                    let default = VARIABLES.iter().find(|(name, _)| *name == n.name).unwrap().1;
                    let want = value.unwrap_or_else(|| default.parse().unwrap());
                    prop_assert_eq!((n.get)(&c), want, "{}", n.name);
                }
                for ch in CHOICES {
                    let default = VARIABLES.iter().find(|(name, _)| *name == ch.name).unwrap().1;
                    let want = vars.get(ch.name).map_or(default, |v| v.trim());
                    prop_assert_eq!((ch.get)(&c), want, "{}", ch.name);
                }
            }
            Err(ConfigError(problems)) => {
                let named: BTreeSet<String> =
                    problems.iter().map(|p| p.variable.clone()).collect();
                prop_assert_eq!(&named, &want_bad, "{:?}", problems);
                prop_assert_eq!(named.len(), problems.len(), "one problem a variable");
                for p in &problems {
                    if let Some(value) = vars.get(p.variable.as_str()) {
                        let quoted = format!("invalid value {value:?}");
                        prop_assert!(p.message.contains(&quoted), "{:?}", p);
                    }
                }
            }
        }
    }
}
