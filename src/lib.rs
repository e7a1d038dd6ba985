//! miochat: a real-time chat server and terminal client on a hand-rolled
//! `mio` event loop.
//!
//! `ARCHITECTURE.md` is the map and `docs/event-loop.md` walks through the
//! loop step by step; this is the short version.
//!
//! # Layout
//!
//! The server, from the wire up:
//!
//! - [`protocol`]: the messages of `PROTOCOL.md`, shared with the client.
//! - [`room`]: the room as pure logic (members, names, history, who is
//!   sent what); no sockets, no clock.
//! - [`rate_limit`]: the per-connection token bucket.
//! - [`http`]: the request head, the upgrade and the plain HTTP answers.
//! - [`inbound`]: WebSocket messages from a client, parsed in the loop's
//!   one read buffer.
//! - [`outqueue`]: output on its way out: the round's batch of shared
//!   frames, its broadcasts, and each connection's queue.
//! - [`connection`]: one connection's state machine, from the first byte
//!   to the close.
//! - [`timers`]: every connection's next deadline in one heap.
//! - [`server`]: the event loop and the [`server::Service`] it serves.
//! - [`chat`]: the chat service: the room behind the loop.
//! - [`plain`]: the plain-text mode for raw clients.
//! - [`config`]: every limit and timer, with its default.
//!
//! Beside it: [`client`] (the terminal client, `lineclient`), [`command`]
//! (typed lines, shared by the client and the plain-text mode), [`bench`](mod@bench)
//! (the load generator, `chatbench`) and [`testing`] (test doubles).

pub mod bench;
pub mod chat;
pub mod client;
pub mod command;
pub mod config;
pub mod connection;
pub mod http;
pub mod inbound;
pub mod outqueue;
pub mod plain;
pub mod protocol;
pub mod rate_limit;
pub mod room;
pub mod server;
pub mod testing;
pub mod timers;

pub use config::ServerConfig;
pub use server::ServerHandle;
