//! The SSE listener: hyper's connection API (HTTP/2 and HTTP/1.1) over TLS or cleartext.

pub mod activity;
pub mod body;
pub mod cors;
pub mod deadline;
pub mod server;
pub mod service;
