//! The generic event loop: one thread, one `mio::Poll`, a slab of
//! connections, WebSocket framing, timers and the write path. It knows
//! nothing of chat: what the bytes mean is up to the [`server::Service`] it
//! serves.

pub mod config;
pub mod connection;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod outqueue;
pub mod server;
pub mod testing;
pub mod timers;
pub mod tls;
