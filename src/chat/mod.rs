//! The chat on the event loop: the room as pure logic, the service that
//! puts it behind the loop, the plain-text mode for raw clients, and the
//! foundation of cluster mode on Redis.

pub mod cluster;
pub mod config;
pub mod plain;
pub mod room;
pub mod service;

pub use service::Chat;
