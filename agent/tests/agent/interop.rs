//! Interoperability with Debian's reference `bsdiff` and `bspatch` (package `bsdiff`, 4.3):
//! patches made by either side apply on the other side to the same bytes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const DEBIAN_BSDIFF: &str = "/usr/bin/bsdiff";
const DEBIAN_BSPATCH: &str = "/usr/bin/bspatch";

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is Debian's `bsdiff` installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Applies `patch` to `old` with both the agent's binary and Debian's `bspatch` and checks that
/// both give exactly `new`.
fn apply_both(dir: &Path, name: &str, old: &Path, patch: &Path, new: &[u8]) {
    let by_agent = dir.join(format!("{name}.agent"));
    run(Command::new(env!("CARGO_BIN_EXE_ota-agent"))
        .arg("bspatch")
        .args([old, &by_agent, patch]));
    let by_debian = dir.join(format!("{name}.debian"));
    run(Command::new(DEBIAN_BSPATCH).args([old, &by_debian, patch]));
    for (who, path) in [("ota-agent", &by_agent), ("Debian bspatch", &by_debian)] {
        let got = std::fs::read(path).unwrap();
        assert!(
            got == new,
            "{name}: {who} made {} bytes that differ from the {}-byte new file",
            got.len(),
            new.len()
        );
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Makes the patch with Debian's `bsdiff`, applies it both ways, and returns the patch size.
fn debian_round_trip(dir: &Path, name: &str, old: &[u8], new: &[u8]) -> u64 {
    let old_path = write(dir, &format!("{name}.old"), old);
    let new_path = write(dir, &format!("{name}.new"), new);
    let patch = dir.join(format!("{name}.patch"));
    run(Command::new(DEBIAN_BSDIFF).args([&old_path, &new_path, &patch]));
    let bytes = std::fs::read(&patch).unwrap();
    assert_eq!(
        &bytes[..8],
        b"BSDIFF40",
        "{name}: Debian made no BSDIFF40 patch"
    );
    apply_both(dir, name, &old_path, &patch, new);
    bytes.len() as u64
}

/// Makes the patch with the qbsdiff code the server side uses and applies it both ways.
fn qbsdiff_round_trip(dir: &Path, name: &str, old: &[u8], new: &[u8]) {
    let old_path = write(dir, &format!("{name}.old"), old);
    let mut patch = Vec::new();
    qbsdiff::Bsdiff::new(old, new)
        .compare(std::io::Cursor::new(&mut patch))
        .unwrap();
    let patch_path = write(dir, &format!("{name}.qpatch"), &patch);
    apply_both(dir, &format!("{name}-q"), &old_path, &patch_path, new);
}

/// A deterministic firmware-like image: runs of instruction-like words, string tables, zero
/// padding and compressed (random-looking) blobs.
fn firmware(len: usize, seed: u64) -> Vec<u8> {
    const TEXT: &str = "robot servo update error joint motor firmware version sensor battery \
                        alpha2 timeout calibrate ok /dev/ttyS1 %s:%d";
    let words: Vec<&str> = TEXT.split_whitespace().collect();
    let mut rng = fastrand::Rng::with_seed(seed);
    let opcodes: Vec<u32> = (0..64).map(|_| rng.u32(..)).collect();
    let mut out = Vec::with_capacity(len + 65_536);
    while out.len() < len {
        let run = rng.usize(512..32_768);
        match rng.u8(0..10) {
            0..=4 => {
                for _ in 0..run / 4 {
                    let op = opcodes[rng.usize(..opcodes.len())] ^ (rng.u32(0..16) << 8);
                    out.extend_from_slice(&op.to_le_bytes());
                }
            }
            5..=6 => {
                let end = out.len() + run;
                while out.len() < end {
                    out.extend_from_slice(words[rng.usize(..words.len())].as_bytes());
                    out.push(if rng.u8(0..8) == 0 { 0 } else { b' ' });
                }
            }
            7 => out.resize(out.len() + run, 0),
            _ => {
                let start = out.len();
                out.resize(start + run, 0);
                rng.fill(&mut out[start..]);
            }
        }
    }
    out.truncate(len);
    out
}

/// The next version of `old`: about `percent` per cent of it changed by small patches of new
/// bytes (like moved addresses), with a few insertions and deletions.
fn edit(old: &[u8], percent: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut new = old.to_vec();
    let mut changed = 0;
    while changed * 100 < old.len() * percent {
        let at = rng.usize(..new.len() - 16);
        let n = rng.usize(1..16);
        rng.fill(&mut new[at..at + n]);
        changed += n;
    }
    for _ in 0..8 {
        let at = rng.usize(..new.len());
        let mut insert = vec![0; rng.usize(1..4096)];
        rng.fill(&mut insert);
        new.splice(at..at, insert);
        let at = rng.usize(..new.len() - 4096);
        new.drain(at..at + rng.usize(1..4096));
    }
    new
}

#[test]
fn debian_patches_apply_like_debian_bspatch_on_small_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let base = firmware(200_000, 1);
    let grown = {
        let mut v = edit(&base, 3, 2);
        v.extend_from_slice(&firmware(150_000, 3));
        v
    };
    let shrunk = {
        let mut v = edit(&base, 3, 4);
        v.truncate(60_000);
        v
    };
    let cases: [(&str, &[u8], &[u8]); 8] = [
        ("empty-to-empty", b"", b""),
        ("empty-to-tiny", b"", b"x"),
        ("tiny-to-empty", b"hello", b""),
        ("tiny", b"hello world\n", b"hello brave new world\n"),
        ("one-byte", b"a", b"b"),
        ("grows", &base, &grown),
        ("shrinks", &base, &shrunk),
        ("unrelated", &base[..50_000], &firmware(70_000, 5)),
    ];
    for (name, old, new) in cases {
        // Debian's bsdiff maps both files and fails on an empty one ("mmap(): Invalid
        // argument"), so empty files are covered by qbsdiff's patches and both bspatches.
        if !old.is_empty() && !new.is_empty() {
            debian_round_trip(dir.path(), name, old, new);
        }
        qbsdiff_round_trip(dir.path(), name, old, new);
    }
    let image = firmware(4 << 20, 6);
    qbsdiff_round_trip(dir.path(), "firmware-4m", &image, &edit(&image, 2, 7));
}

#[test]
fn debian_patch_of_a_30_mib_firmware_image() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let old = firmware(30 << 20, 42);
    let new = edit(&old, 2, 43);
    let generated = started.elapsed();
    let patch_size = debian_round_trip(dir.path(), "firmware", &old, &new);
    // The edits are a small fraction of the image; a patch that is not much smaller than the
    // image would mean the inputs stopped resembling an update.
    assert!(
        patch_size < new.len() as u64 / 4,
        "patch of {patch_size} bytes for a {}-byte image",
        new.len()
    );
    eprintln!(
        "30 MiB interop: inputs in {generated:.1?}, Debian bsdiff + both bspatches in {:.1?}, \
         patch {patch_size} bytes",
        started.elapsed() - generated
    );
}
