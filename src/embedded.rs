//! An in-process Kafka cluster (librdkafka's mock cluster) for the demo and for tests.
//!
//! `MockCluster` is not `Send`, so it lives on a thread of its own that takes commands.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::mocking::MockCluster;

enum Command {
    CreateTopic {
        name: String,
        partitions: i32,
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
    /// Starts a cluster of `brokers` brokers on 127.0.0.1 (random ports).
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
                        Command::CreateTopic {
                            name,
                            partitions,
                            reply,
                        } => {
                            let _ = reply.send(
                                cluster
                                    .create_topic(&name, partitions, 1)
                                    .map_err(|e| e.to_string()),
                            );
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
        let (reply, answer) = mpsc::channel();
        let command = Command::CreateTopic {
            name: name.to_string(),
            partitions,
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
