//! The chat on the event loop: the room as pure logic, the service that
//! puts it behind the loop, the plain-text mode for raw clients and the
//! web page for browsers.

pub mod config;
pub mod plain;
pub mod room;
pub mod service;
pub mod web;

pub use service::Chat;
