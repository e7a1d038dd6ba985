//! The chat on the event loop: the room as pure logic, the service that
//! puts it behind the loop, the plain-text mode for raw clients, the web
//! page for browsers, the store that keeps public messages (with the
//! publisher, which shows them only once stored), and the foundation of
//! cluster mode on Redis.

pub mod cluster;
pub mod config;
pub mod metrics;
pub mod plain;
pub mod publish;
pub mod room;
pub mod service;
pub mod store;
pub mod web;

pub use service::{start, Chat};
