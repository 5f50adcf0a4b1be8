//! Integration tests of the mock update server, through its HTTP interface and its binary.

mod binary;
mod callback;
mod catalog;
mod common;
mod download;
mod faults;
mod patches;
mod signed;
mod tls;
mod token;
