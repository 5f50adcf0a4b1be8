//! `/oauth/token` answers: any bytes give a token or an error, and an accepted token is not blank.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_agent::client::parse_token;

fuzz_target!(|body: &[u8]| {
    if let Ok(token) = parse_token(body) {
        assert!(!token.access_token.trim().is_empty());
    }
});
