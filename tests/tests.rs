//! The one integration-test binary: real gateways on 127.0.0.1:0, real sockets, a hang
//! watchdog on every test. Modules group tests by what they guard.

mod proc;
mod util;

mod admin;
mod badinput;
mod cli;
mod conformance;
mod examples;
mod handler;
mod handshake;
mod lifecycle;
mod limits;
mod model;
mod presence;
mod props;
mod relay;
mod seed;
mod stall;
mod stress;
