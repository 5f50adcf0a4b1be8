//! `/file/download` answers: any bytes give an answer or an error, and an accepted patch list
//! holds only distinct, non-empty ids and non-empty URLs (the property tests parse the URLs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_agent::client::{CheckAnswer, parse_callback, parse_check};

fuzz_target!(|body: &[u8]| {
    if let Ok(CheckAnswer::Patches(patches)) = parse_check(body) {
        assert!(!patches.is_empty());
        for (i, p) in patches.iter().enumerate() {
            assert!(!p.id.is_empty() && p.id.trim() == p.id);
            assert!(patches[..i].iter().all(|q| q.id != p.id));
            assert!(!p.url.is_empty() && p.url.trim() == p.url);
        }
    }
    let _ = parse_callback(body);
});
