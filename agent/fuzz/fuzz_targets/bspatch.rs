//! The bsdiff patch reader. The input is a little-endian `u16` old-file length, the old file,
//! then the patch; applying must end in a result without panicking or writing past the limit.
#![no_main]

use std::io::{self, Write};

use libfuzzer_sys::fuzz_target;
use ota_agent::patch;

const MAX_SIZE: u64 = 1 << 20;

struct Counting(u64);

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let len = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (old, patch) = rest.split_at(len);
    let mut sink = Counting(0);
    let result = patch::apply(old, patch, &mut sink, MAX_SIZE);
    assert!(sink.0 <= MAX_SIZE);
    if let Ok(n) = result {
        assert_eq!(n, sink.0);
    }
});
