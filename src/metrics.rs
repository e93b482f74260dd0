//! Prometheus metrics: one registry per gateway, names prefixed `ksg_`, bounded labels only
//! (route template, topic, reason; never a key or a client address).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets (seconds) for latencies: 1 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets (seconds) for stream durations: 1 s to 1 day.
const DURATION_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14_400.0, 86_400.0,
];

/// Why a stream request was refused (label `reason`).
pub const REFUSED_REASONS: &[&str] = &[
    "not_found",
    "bad_request",
    "method_not_allowed",
    "bad_resume_id",
    "headers_too_large",
    "kafka_unavailable",
    "shutting_down",
    "unauthorized",
    "forbidden",
    "rate_limited",
    "too_many_streams",
];

/// Why a connection was closed without being served (label `reason`).
pub const CONNECTION_REJECT_REASONS: &[&str] = &[
    "limit",
    "per_ip_limit",
    "handshake_timeout",
    "tls_error",
    "proxy_protocol",
];

/// Kafka error codes shown at zero before they first happen (others appear when they do; the
/// label is librdkafka's error code name, a bounded set).
pub const KAFKA_ERROR_CODES: &[&str] = &[
    "AllBrokersDown",
    "BrokerTransportFailure",
    "Authentication",
    "UnknownTopicOrPartition",
    "catch_up",
];
/// Why a served connection was closed by the gateway (label `reason`).
pub const CONNECTION_CLOSE_REASONS: &[&str] = &["idle", "ping_timeout", "stalled"];

/// Every metric of one gateway, registered in its own [`Registry`].
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Connections accepted on the SSE listener.
    pub connections_accepted: IntCounter,
    /// Connections currently open.
    pub connections_open: IntGauge,
    /// Admin requests refused for a missing or wrong `KSG_ADMIN_TOKEN`.
    pub admin_unauthorized: IntCounter,
    /// Seconds from a request's arrival to its response head, whatever the answer (a stream's
    /// `200`, a refusal, a resume read from Kafka): what a client waits for before `open`.
    pub answer: Histogram,
    /// Seconds from a record's Kafka timestamp to the moment its event is handed to the streams
    /// that get it (once per record), by topic.
    pub event_latency: HistogramVec,
    /// Seconds from a stream's start to its first event, by route.
    pub first_event: HistogramVec,
    /// Seconds streams lasted, by route.
    pub stream_duration: HistogramVec,
    /// Records between each partition's high watermark and the gateway's position, summed per
    /// topic (read every `KSG_METADATA_REFRESH_SECS`).
    pub consumer_lag: IntGaugeVec,
    /// 1 while `/readyz` answers 200 (Kafka reached, not draining), else 0.
    pub ready: IntGauge,
    /// Always 1; the `version` label says which build runs.
    pub build_info: IntGaugeVec,
    /// Connections closed before being served, by reason.
    pub connections_rejected: IntCounterVec,
    /// Served connections the gateway closed, by reason.
    pub connections_closed: IntCounterVec,
    /// SSE streams opened, by route.
    pub streams_opened: IntCounterVec,
    /// SSE streams currently open, by route.
    pub streams_open: IntGaugeVec,
    /// `KSG_MAX_STREAMS` in force (given, or from the memory limit).
    pub streams_max: IntGauge,
    /// SSE streams currently open, by topic (topics that streams opened on: allowed by
    /// `KSG_TOPICS` and existing in Kafka).
    pub topic_streams_open: IntGaugeVec,
    /// Stream requests refused, by reason.
    pub streams_refused: IntCounterVec,
    /// Events written to streams, by topic.
    pub events_sent: IntCounterVec,
    /// Bytes of events written to streams, by topic.
    pub event_bytes_sent: IntCounterVec,
    /// Streams ended at their maximum lifetime (`KSG_STREAM_MAX_SECS`).
    pub streams_expired: IntCounter,
    /// Heartbeat comments written.
    pub heartbeats_sent: IntCounter,
    /// Records read from Kafka, by topic.
    pub records_consumed: IntCounterVec,
    /// Records over `KSG_MAX_EVENT_BYTES`, sent as `event: oversize`, by topic.
    pub records_oversize: IntCounterVec,
    /// Records a `where` filter could not test (a value that is not JSON or is over
    /// `KSG_MAX_EVENT_BYTES`, or without the field), by topic: once per record and distinct
    /// filter, where the live consumer or a catch-up reader tests it.
    pub filter_unmatchable: IntCounterVec,
    /// Records encoded as events, by topic: once each, when a stream or a replay first needs
    /// it (a record nobody reads is never encoded).
    pub records_encoded: IntCounterVec,
    /// Records found off the partition `KSG_KEY_PARTITIONER` promises, by topic (counted once per
    /// topic: the topic's key streams then read every partition).
    pub key_partition_mismatches: IntCounterVec,
    /// Records without a key left out of snapshots, by topic.
    pub snapshot_keyless: IntCounterVec,
    /// Streams ended because their queue was full, by topic.
    pub slow_stream_cutoffs: IntCounterVec,
    /// Errors reported by the Kafka client, by error code name.
    pub kafka_errors: IntCounterVec,
    /// Topics currently attached to the consumer.
    pub topics_attached: IntGauge,
    /// Partitions currently assigned to the consumer.
    pub partitions_assigned: IntGauge,
    /// Resumed or positioned streams, by where their first records come from (memory, kafka).
    pub resumes: IntCounterVec,
    /// Gap events sent (requested records no longer in Kafka), by topic.
    pub gaps: IntCounterVec,
    /// Offsets skipped by gap events, by topic.
    pub gap_offsets_skipped: IntCounterVec,
    /// Resumes that joined a catch-up reader another resume of the same topic had.
    pub catchup_shared: IntCounter,
    /// Bytes of events catch-up readers encoded and queued (once per cohort).
    pub catchup_bytes: IntCounter,
    /// HTTP/2 streams reset because their client granted no window for `KSG_STREAM_STALL_SECS`.
    pub stalled_stream_resets: IntCounter,
    /// Catch-ups handed over to live, by how: `live` (the reader reached the live position) or
    /// `ring` (the replay ring held the rest).
    pub catchup_handovers: IntCounterVec,
    /// Catch-up readers reading now.
    pub catchup_readers_active: IntGauge,
    /// Catch-up reader consumers in existence (reading or idle in the pool).
    pub catchup_readers: IntGauge,
    /// Keys held by snapshots being built.
    pub snapshot_entries: IntGauge,
    /// Bytes held by snapshots being built.
    pub snapshot_bytes: IntGauge,
    /// Bytes held by the replay rings of all topics.
    pub replay_bytes: IntGauge,
    /// Streams reading a queue of their own, not their connection's shared log.
    pub streams_own_queue: IntGauge,
    /// Stream requests refused by authorization, by reason (`ksg_auth_refused_total`).
    pub auth_refused: IntCounterVec,
    /// Reloads of the JWT key file, by result (`ok`, `error`).
    pub auth_key_reloads: IntCounterVec,
    /// Streams ended at their token's expiry.
    pub streams_token_expired: IntCounter,
    /// Streams ended because the key that verified their token left the key set.
    pub streams_key_revoked: IntCounter,
    /// Each route's [`RouteSeries`], made at its first stream (route labels are bounded: one
    /// per template).
    routes: Arc<Mutex<HashMap<Arc<str>, Arc<RouteSeries>>>>,
}

/// The series a topic's streams count into, resolved once per topic (the hub's entry of the
/// topic holds them) and shared by its streams: a stream keeps one pointer, not a handle each.
pub struct TopicSeries {
    /// The topic.
    pub name: String,
    /// `ksg_events_sent_total{topic}`.
    pub events: IntCounter,
    /// `ksg_event_bytes_sent_total{topic}`.
    pub bytes: IntCounter,
    /// `ksg_topic_streams_open{topic}`.
    pub open: IntGauge,
}

/// The series a route's streams count into, shared by them like [`TopicSeries`].
pub struct RouteSeries {
    /// `ksg_streams_opened_total{route}`.
    pub opened: IntCounter,
    /// `ksg_streams_open{route}`.
    pub open: IntGauge,
    /// `ksg_first_event_seconds{route}`.
    pub first_event: Histogram,
    /// `ksg_stream_duration_seconds{route}`.
    pub duration: Histogram,
    /// `ksg_heartbeats_sent_total`.
    pub heartbeats: IntCounter,
    /// `ksg_streams_expired_total`.
    pub expired: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric, pre-registering the given route labels.
    pub fn new(routes: &[std::sync::Arc<str>]) -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let streams_open = IntGaugeVec::new(
            Opts::new("ksg_streams_open", "SSE streams currently open"),
            &["route"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(streams_open.clone()))
            .expect("unique metric");
        let topic_streams_open = IntGaugeVec::new(
            Opts::new(
                "ksg_topic_streams_open",
                "SSE streams currently open, by topic",
            ),
            &["topic"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(topic_streams_open.clone()))
            .expect("unique metric");

        let histogram = |name: &str, help: &str, label: &str, buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            let h = HistogramVec::new(opts, &[label]).expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "ksg_consumer_lag",
                "Records between the partitions' high watermarks and the gateway's position, per topic",
            ),
            &["topic"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(consumer_lag.clone()))
            .expect("unique metric");

        let answer = Histogram::with_opts(
            HistogramOpts::new(
                "ksg_answer_seconds",
                "Seconds from a request's arrival to its response head, whatever the answer",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(answer.clone()))
            .expect("unique metric");

        let m = Metrics {
            answer,
            event_latency: histogram(
                "ksg_event_latency_seconds",
                "Seconds from a record's Kafka timestamp to its event being handed to the streams that get it",
                "topic",
                LATENCY_BUCKETS,
            ),
            first_event: histogram(
                "ksg_first_event_seconds",
                "Seconds from a stream's start to its first event",
                "route",
                LATENCY_BUCKETS,
            ),
            stream_duration: histogram(
                "ksg_stream_duration_seconds",
                "Seconds streams lasted",
                "route",
                DURATION_BUCKETS,
            ),
            consumer_lag,
            connections_accepted: counter("ksg_connections_accepted_total", "Connections accepted"),
            connections_open: gauge("ksg_connections_open", "Connections currently open"),
            streams_max: gauge(
                "ksg_streams_max",
                "Streams the gateway may hold open (KSG_MAX_STREAMS, or its default from the memory limit)",
            ),
            admin_unauthorized: counter(
                "ksg_admin_unauthorized_total",
                "Admin /metrics requests refused for a missing or wrong KSG_ADMIN_TOKEN",
            ),
            ready: gauge(
                "ksg_ready",
                "1 while /readyz answers 200 (Kafka reached, not draining), else 0",
            ),
            build_info: {
                let g = IntGaugeVec::new(
                    Opts::new("ksg_build_info", "Always 1; the version label says which build runs"),
                    &["version"],
                )
                .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            connections_rejected: counter_vec(
                "ksg_connections_rejected_total",
                "Connections closed before being served",
                "reason",
            ),
            connections_closed: counter_vec(
                "ksg_connections_closed_total",
                "Served connections closed by the gateway",
                "reason",
            ),
            streams_opened: counter_vec("ksg_streams_opened_total", "SSE streams opened", "route"),
            streams_open,
            topic_streams_open,
            streams_refused: counter_vec(
                "ksg_streams_refused_total",
                "Stream requests refused with an HTTP error",
                "reason",
            ),
            events_sent: counter_vec(
                "ksg_events_sent_total",
                "Events written to streams",
                "topic",
            ),
            event_bytes_sent: counter_vec(
                "ksg_event_bytes_sent_total",
                "Bytes of events written to streams",
                "topic",
            ),
            streams_expired: counter(
                "ksg_streams_expired_total",
                "Streams ended at their maximum lifetime",
            ),
            heartbeats_sent: counter("ksg_heartbeats_sent_total", "Heartbeat comments written"),
            records_consumed: counter_vec(
                "ksg_records_consumed_total",
                "Records read from Kafka",
                "topic",
            ),
            records_encoded: counter_vec(
                "ksg_records_encoded_total",
                "Records encoded as events, once each: when dispatched to streams, or when a replay first needs one no stream took (a record nobody reads is never encoded)",
                "topic",
            ),
            records_oversize: counter_vec(
                "ksg_records_oversize_total",
                "Records over KSG_MAX_EVENT_BYTES, sent as event: oversize",
                "topic",
            ),
            filter_unmatchable: counter_vec(
                "ksg_filter_unmatchable_total",
                "Records a where= filter could not test (the value is not JSON, is over KSG_MAX_EVENT_BYTES, or lacks the field): they do not match. Once per record and distinct filter",
                "topic",
            ),
            key_partition_mismatches: counter_vec(
                "ksg_key_partition_mismatches_total",
                "Records found off the partition KSG_KEY_PARTITIONER promises (the topic's key streams then read every partition)",
                "topic",
            ),
            snapshot_keyless: counter_vec(
                "ksg_snapshot_keyless_records_total",
                "Records without a key left out of snapshots",
                "topic",
            ),
            slow_stream_cutoffs: counter_vec(
                "ksg_slow_stream_cutoffs_total",
                "Streams ended because their client fell behind (queue full)",
                "topic",
            ),
            kafka_errors: counter_vec(
                "ksg_kafka_errors_total",
                "Errors reported by the Kafka client",
                "code",
            ),
            topics_attached: gauge("ksg_topics_attached", "Topics attached to the consumer"),
            partitions_assigned: gauge(
                "ksg_partitions_assigned",
                "Partitions assigned to the consumer",
            ),
            resumes: counter_vec(
                "ksg_resumes_total",
                "Streams started at a position, by where their first records come from",
                "source",
            ),
            gaps: counter_vec("ksg_gaps_total", "Gap events sent", "topic"),
            gap_offsets_skipped: counter_vec(
                "ksg_gap_offsets_skipped_total",
                "Offsets skipped by gap events (gone from Kafka)",
                "topic",
            ),
            catchup_handovers: counter_vec(
                "ksg_catchup_handovers_total",
                "Catch-ups handed over to live, by how (live position reached, or the rest from the replay ring)",
                "via",
            ),
            stalled_stream_resets: counter(
                "ksg_stalled_stream_resets_total",
                "HTTP/2 streams reset (RST_STREAM CANCEL) because their client granted no window for KSG_STREAM_STALL_SECS",
            ),
            catchup_shared: counter(
                "ksg_catchup_shared_total",
                "Resumes served by a catch-up reader shared with another resume",
            ),
            catchup_bytes: counter(
                "ksg_catchup_bytes_total",
                "Bytes of events catch-up readers encoded and queued: once for all the streams of one view at one position, however many they are",
            ),
            catchup_readers_active: gauge(
                "ksg_catchup_readers_active",
                "Catch-up readers reading now",
            ),
            catchup_readers: gauge(
                "ksg_catchup_readers",
                "Catch-up reader consumers in existence (reading or idle)",
            ),
            snapshot_entries: gauge("ksg_snapshot_entries", "Keys held by snapshots being built"),
            snapshot_bytes: gauge("ksg_snapshot_bytes", "Bytes held by snapshots being built"),
            replay_bytes: gauge("ksg_replay_bytes", "Bytes held by the replay rings"),
            streams_own_queue: gauge(
                "ksg_streams_own_queue",
                "Streams reading a queue of their own (while a replay or catch-up is read, or their resume id is ahead of the live position) rather than their connection's shared log",
            ),
            auth_refused: counter_vec(
                "ksg_auth_refused_total",
                "Stream requests refused by JWT authorization (401, 403), by reason",
                "reason",
            ),
            auth_key_reloads: counter_vec(
                "ksg_auth_key_reloads_total",
                "Reloads of the KSG_AUTH_JWT_KEYS file after it changed, by result",
                "result",
            ),
            streams_token_expired: counter(
                "ksg_streams_token_expired_total",
                "Streams ended at their access token's expiry (event: expired)",
            ),
            streams_key_revoked: counter(
                "ksg_streams_key_revoked_total",
                "Streams ended because the key that verified their token left the key set",
            ),
            routes: Arc::default(),
            registry,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for source in ["memory", "kafka", "snapshot"] {
            m.resumes.with_label_values(&[source]);
        }
        for reason in REFUSED_REASONS {
            m.streams_refused.with_label_values(&[reason]);
        }
        for reason in CONNECTION_REJECT_REASONS {
            m.connections_rejected.with_label_values(&[reason]);
        }
        for failure in crate::auth::FAILURES {
            m.auth_refused.with_label_values(&[failure.reason()]);
        }
        for result in ["ok", "error"] {
            m.auth_key_reloads.with_label_values(&[result]);
        }
        for via in ["live", "ring"] {
            m.catchup_handovers.with_label_values(&[via]);
        }
        for code in KAFKA_ERROR_CODES {
            m.kafka_errors.with_label_values(&[code]);
        }
        for reason in CONNECTION_CLOSE_REASONS {
            m.connections_closed.with_label_values(&[reason]);
        }
        for route in routes {
            m.first_event.with_label_values(&[route]);
            m.stream_duration.with_label_values(&[route]);
            m.streams_opened.with_label_values(&[route]);
            m.streams_open.with_label_values(&[route]);
        }
        m
    }

    /// The series of `topic`'s streams.
    pub fn topic_series(&self, topic: &str) -> Arc<TopicSeries> {
        let labels = &[topic];
        Arc::new(TopicSeries {
            name: topic.to_string(),
            events: self.events_sent.with_label_values(labels),
            bytes: self.event_bytes_sent.with_label_values(labels),
            open: self.topic_streams_open.with_label_values(labels),
        })
    }

    /// The series of `route`'s streams, the same for all of them.
    pub fn route_series(&self, route: &Arc<str>) -> Arc<RouteSeries> {
        let mut routes = self.routes.lock();
        let series = routes.entry(route.clone()).or_insert_with(|| {
            let labels = &[&**route];
            Arc::new(RouteSeries {
                opened: self.streams_opened.with_label_values(labels),
                open: self.streams_open.with_label_values(labels),
                first_event: self.first_event.with_label_values(labels),
                duration: self.stream_duration.with_label_values(labels),
                heartbeats: self.heartbeats_sent.clone(),
                expired: self.streams_expired.clone(),
            })
        });
        series.clone()
    }

    /// Removes every series labelled with `topic`, for a topic that failed to attach: its name
    /// came from a request, so keeping them would let requests grow the registry without bound.
    pub fn remove_topic(&self, topic: &str) {
        let labels = &[topic];
        for family in [
            &self.events_sent,
            &self.event_bytes_sent,
            &self.records_consumed,
            &self.records_oversize,
            &self.filter_unmatchable,
            &self.records_encoded,
            &self.key_partition_mismatches,
            &self.snapshot_keyless,
            &self.slow_stream_cutoffs,
            &self.gaps,
            &self.gap_offsets_skipped,
        ] {
            let _ = family.remove_label_values(labels);
        }
        let _ = self.event_latency.remove_label_values(labels);
        let _ = self.consumer_lag.remove_label_values(labels);
        let _ = self.topic_streams_open.remove_label_values(labels);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_show_at_zero() {
        let m = Metrics::new(&["/{topic}".into()]);
        let text = m.render();
        assert!(text.contains("ksg_streams_refused_total{reason=\"not_found\"} 0"));
        assert!(text.contains("ksg_streams_opened_total{route=\"/{topic}\"} 0"));
        assert!(text.contains("ksg_connections_accepted_total 0"));
        assert!(text.contains("ksg_connections_closed_total{reason=\"idle\"} 0"));
    }

    #[test]
    fn series_of_a_topic_can_be_removed() {
        let m = Metrics::new(&[]);
        for topic in ["gone", "kept"] {
            m.gaps.with_label_values(&[topic]);
            m.records_consumed.with_label_values(&[topic]).inc();
            m.event_latency.with_label_values(&[topic]).observe(0.1);
            m.consumer_lag.with_label_values(&[topic]).set(3);
            m.topic_series(topic).open.inc();
        }
        m.remove_topic("gone");
        let text = m.render();
        assert!(!text.contains("topic=\"gone\""), "{text}");
        assert!(text.contains("ksg_records_consumed_total{topic=\"kept\"} 1"));
        assert!(text.contains("ksg_consumer_lag{topic=\"kept\"} 3"));
        assert!(text.contains("ksg_topic_streams_open{topic=\"kept\"} 1"));
    }
}
