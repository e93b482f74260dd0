//! The SSE listener over TLS or cleartext: HTTP/2 driven with the `h2` crate directly (the
//! gateway owns each stream's send side), HTTP/1.1 with hyper's connection API.

pub mod activity;
pub mod answers;
pub mod body;
pub mod cors;
pub mod deadline;
pub mod h1;
pub mod h2conn;
pub mod json;
pub mod limits;
pub mod proxy;
pub mod server;
pub mod service;
pub mod sniff;
pub mod wire;
