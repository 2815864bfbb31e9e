//! dockroute: reach Docker containers that live inside a local VM.
//!
//! The pipeline is the same for every command:
//! settings → discover → plan → observe → diff → apply → record (see `engine`).

pub mod cli;
pub mod discover;
pub mod dns;
pub mod docker;
pub mod engine;
pub mod exec;
pub mod firewall;
pub mod fsutil;
pub mod machine;
pub mod net;
pub mod nss;
pub mod options;
pub mod plan;
pub mod record;
pub mod report;
pub mod service;
pub mod settings;
pub mod trust;
pub mod validate;
pub mod vpn;
pub mod watch;
