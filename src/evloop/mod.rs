//! The generic event loop: one thread, one `mio::Poll`, a slab of
//! connections, WebSocket framing, timers and the write path. It knows
//! nothing of chat: what the bytes mean is up to the [`service::Service`]
//! it serves.
//!
//! `server.rs` is the loop, `service.rs` what it serves and how the service
//! answers, `handle.rs` runs a server on a thread; `connection.rs` is one
//! client's state machine, built on `inbound.rs` (frames in), `outqueue.rs`
//! (bytes out), `http.rs` (the upgrade) and `timers.rs` (deadlines).

pub mod config;
pub mod connection;
pub mod handle;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod outqueue;
pub mod server;
pub mod service;
pub mod testing;
pub mod timers;
pub mod tls;
