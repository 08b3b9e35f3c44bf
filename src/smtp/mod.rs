//! The SMTP protocol towards clients (RFC 5321 and the extensions we offer), independent of
//! what happens to the mail: commands in, replies out, message data decoded. These primitives
//! depend on nothing but the config; the proxy's session (`crate::proxy`) and the relay's
//! upstream client (`crate::relay`) are built on them.

pub mod command;
pub mod connection;
pub mod data;
pub mod reply;
