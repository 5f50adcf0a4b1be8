//! Integration tests of ota-agent: the client against wiremock, and whole updates of the agent
//! binary against the mock server.

mod citizen;
mod config;
mod contract;
mod cycle;
mod daemon;
mod events;
mod helpers;
mod identity;
mod interop;
mod liveness;
mod props;
mod security;
mod update;
