//! Signed metadata: any metadata and signature bytes are refused or accepted without a panic,
//! and bytes the trusted key did sign get through the signature check to the parser and the
//! identity check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ota_signing::{Expected, SecretKey, verify};

fuzz_target!(|data: &[u8]| {
    let key = SecretKey::from_text("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let keys = [key.public()];
    let expected = Expected {
        package: "com.ubtechinc.alpha2services",
        file_name: "service5mic",
        language: "CN",
        robot_version: "1",
        from_version: 17,
        to_version: 18,
    };
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let (json, sig) = rest.split_at(split);
        // Forging a signature is out of the fuzzer's reach: anything it makes is refused.
        assert!(verify(&keys, json, sig).is_err());
    } else {
        let signature = key.sign(rest);
        if let Ok(meta) = verify(&keys, rest, signature.as_bytes()) {
            let _ = meta.check(&expected);
            let _ = meta.binds_target();
            assert_eq!(meta.patch_sha256.len(), 64);
            assert!(meta.format == 1 || meta.binds_target());
        }
    }
});
