//! The SMTP protocol towards clients (RFC 5321 and the extensions we offer), independent of
//! what happens to the mail: commands in, replies out, message data decoded.

pub mod command;
pub mod connection;
pub mod data;
pub mod reply;
pub mod session;
pub mod xclient;
