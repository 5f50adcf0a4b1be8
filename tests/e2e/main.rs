//! End-to-end tests: the real `ota-mock-server` and `ota-agent` binaries, each in its own
//! process, talking real HTTP on an ephemeral port. Every scenario ends with the two
//! invariants of `helpers::assert_invariants`: never broken, never lost.

mod demo;
mod faults;
mod helpers;
mod house;
mod power_loss;
