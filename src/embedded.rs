//! An in-process Kafka cluster (librdkafka's mock cluster) for the demo and for tests.
//!
//! `MockCluster` is not `Send`, so it lives on a thread of its own that runs jobs sent to it:
//! creating topics, and the faults tests inject (brokers down and up, request errors, leader
//! moves).

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// The cluster type the jobs of [`EmbeddedKafka::with`] receive.
pub type Cluster = MockCluster<'static, DefaultProducerContext>;

type Job = Box<dyn FnOnce(&Cluster) -> Result<(), String> + Send>;

enum Command {
    Run {
        job: Job,
        reply: mpsc::Sender<Result<(), String>>,
    },
    Stop,
}

/// A running in-process cluster; dropping it stops the cluster.
pub struct EmbeddedKafka {
    bootstrap: String,
    commands: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// Starts a cluster of `brokers` brokers (ids 1..=brokers) on 127.0.0.1, random ports.
    pub fn start(brokers: i32) -> Result<EmbeddedKafka, String> {
        let (commands, inbox) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ksg-embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                while let Ok(command) = inbox.recv() {
                    match command {
                        Command::Run { job, reply } => {
                            let _ = reply.send(job(&cluster));
                        }
                        Command::Stop => break,
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        let bootstrap = ready
            .recv()
            .map_err(|_| "embedded cluster thread died".to_string())??;
        Ok(EmbeddedKafka {
            bootstrap,
            commands,
            thread: Some(thread),
        })
    }

    /// The `bootstrap.servers` of the cluster.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic with `partitions` partitions.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), String> {
        let name = name.to_string();
        self.with(move |c| {
            c.create_topic(&name, partitions, 1)
                .map_err(|e| e.to_string())
        })
    }

    /// Runs `job` against the cluster on its own thread and returns its result.
    pub fn with(
        &self,
        job: impl FnOnce(&Cluster) -> Result<(), String> + Send + 'static,
    ) -> Result<(), String> {
        let (reply, answer) = mpsc::channel();
        let command = Command::Run {
            job: Box::new(job),
            reply,
        };
        self.commands
            .send(command)
            .map_err(|_| "embedded cluster stopped".to_string())?;
        answer
            .recv()
            .map_err(|_| "embedded cluster stopped".to_string())?
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
