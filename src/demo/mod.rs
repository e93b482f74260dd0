//! The embedded demo: an in-process Kafka cluster with a `stock-prices` topic fed by a ticker
//! (random-walk prices, now and then a delisting tombstone), and the starter page at `/`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use tracing::{info, warn};

use crate::embedded::EmbeddedKafka;

/// The demo topic.
pub const TOPIC: &str = "stock-prices";
/// Partitions of the demo topic.
pub const PARTITIONS: i32 = 3;
/// The starter page served at `/` in demo mode.
pub const STARTER_PAGE: &str = include_str!("starter.html");

/// Symbols and their opening prices.
const SYMBOLS: &[(&str, f64)] = &[
    ("GOOG", 175.0),
    ("AAPL", 230.0),
    ("MSFT", 420.0),
    ("AMZN", 185.0),
    ("NVDA", 120.0),
    ("META", 560.0),
    ("TSLA", 250.0),
    ("NFLX", 700.0),
];
/// One tick in this many delists a symbol (a tombstone); it relists some ticks later.
const DELIST_ONE_IN: u64 = 400;
/// Ticks of its own a delisted symbol sits out before it trades again.
const DELISTED_TICKS: u32 = 20;

/// The running demo: cluster and ticker. Dropping it stops both.
pub struct Demo {
    kafka: EmbeddedKafka,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl Demo {
    /// Starts the cluster, creates the topic and starts ticking.
    pub fn start(ticks_per_sec: u32) -> Result<Demo, String> {
        let kafka = EmbeddedKafka::start(1)?;
        kafka.create_topic(TOPIC, PARTITIONS)?;
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap_servers())
            // The Java client's partitioner, so keys land where Java producers would put them.
            .set("partitioner", "murmur2_random")
            // Records of 100 ms go to the mock cluster as one message set per partition.
            // The mock keeps at most 5 MiB per partition, answers a fetch with one message set,
            // and finds a fetch's offset by walking its message sets from the oldest: with one
            // record per set, a log at its cap holds ~35,000 sets per partition, every live
            // fetch walks them all, and a read `from=earliest` takes one round trip per record
            // (and falls behind the cap's deletions). Batched, a set holds what 100 ms bring,
            // so at high tick rates (which reach the cap in minutes) a log at its cap holds a
            // few thousand sets; the demo's events are at most 100 ms later.
            .set("linger.ms", "100")
            .create()
            .map_err(|e| format!("demo producer: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let period =
            Duration::from_secs_f64(1.0 / (f64::from(ticks_per_sec) * SYMBOLS.len() as f64));
        let ticker = std::thread::Builder::new()
            .name("ksg-demo-ticker".into())
            .spawn(move || tick(&producer, period, &flag))
            .map_err(|e| e.to_string())?;
        info!(
            topic = TOPIC,
            bootstrap = kafka.bootstrap_servers(),
            "DEMO MODE: in-process Kafka mock cluster with a demo ticker (set KSG_KAFKA_BROKERS for a real cluster)"
        );
        Ok(Demo {
            kafka,
            stop,
            ticker: Some(ticker),
        })
    }

    /// The embedded cluster's bootstrap servers.
    pub fn bootstrap_servers(&self) -> &str {
        self.kafka.bootstrap_servers()
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}

struct Symbol {
    name: &'static str,
    price: f64,
    delisted_for: u32,
    /// Price ticks of this symbol so far: consecutive, so a client can check for loss.
    ticks: u64,
}

fn tick(producer: &BaseProducer, period: Duration, stop: &AtomicBool) {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut rng = XorShift(seed | 1);
    let mut symbols: Vec<Symbol> = SYMBOLS
        .iter()
        .map(|&(name, price)| Symbol {
            name,
            price,
            delisted_for: 0,
            ticks: 0,
        })
        .collect();
    let mut seq: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let symbol = &mut symbols[(seq % SYMBOLS.len() as u64) as usize];
        seq += 1;
        let value = if symbol.delisted_for > 0 {
            symbol.delisted_for -= 1;
            None
        } else if rng.next() % DELIST_ONE_IN == 0 {
            symbol.delisted_for = DELISTED_TICKS;
            Some(None)
        } else {
            // A random walk: at most ±0.5% a tick.
            let step = (rng.next() % 1001) as f64 / 1000.0 - 0.5;
            let change = symbol.price * step / 100.0;
            symbol.price = (symbol.price + change).max(1.0);
            symbol.ticks += 1;
            let time = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            Some(Some(format!(
                r#"{{"symbol":"{}","n":{},"price":{:.2},"change":{:.2},"seq":{},"time":{}}}"#,
                symbol.name, symbol.ticks, symbol.price, change, seq, time
            )))
        };
        if let Some(value) = value {
            let record = BaseRecord::<str, str>::to(TOPIC).key(symbol.name);
            let record = match &value {
                Some(v) => record.payload(v.as_str()),
                None => record,
            };
            if let Err((e, _)) = producer.send(record) {
                warn!("demo ticker could not produce: {e}");
            }
        }
        producer.poll(Duration::ZERO);
        std::thread::sleep(period);
    }
    let _ = producer.flush(Duration::from_secs(1));
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
