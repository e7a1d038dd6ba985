//! miochat: a real-time chat server and terminal client on a hand-rolled
//! `mio` event loop.

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
