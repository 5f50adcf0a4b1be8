//! Catalog loading: the patch cache, and errors that name the file, the entry and the problem.

use std::path::Path;

use ota_mock_server::{Catalog, CatalogError};

use crate::common::own_demo;

fn load_error(dir: &Path, text: &str) -> String {
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let error: CatalogError = Catalog::load(&path).expect_err("the catalog is bad");
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    message
}

const HEAD: &str = r#"
[[package]]
name = "p"
[[package.file]]
file_name = "f"
language = "CN"
"#;

fn version(code: u64, extra: &str) -> String {
    format!("[[package.file.version]]\ncode = {code}\nname = \"1.{code}\"\n{extra}\n")
}

#[test]
fn bad_catalogs_are_refused_with_a_clear_message() {
    let (dir, _) = own_demo();
    let dir = dir.path();
    let cases = [
        ("[[package]\nname = ", vec!["cannot parse"]),
        ("[[package]]\nnom = \"p\"\n", vec!["cannot parse", "nom"]),
        (
            &format!(
                "{HEAD}{}{}",
                version(16, "file = \"versions/16\""),
                version(17, "file = \"versions/99\"")
            ),
            vec![
                "package \"p\" file \"f\" language \"CN\" version 17",
                "versions/99",
            ],
        ),
        (
            &format!(
                "{HEAD}{}{}",
                version(16, "file = \"versions/16\""),
                version(16, "file = \"versions/17\"")
            ),
            vec!["version 16", "increase strictly"],
        ),
        (
            &format!(
                "{HEAD}{}{}",
                version(16, "file = \"versions/16\""),
                version(17, "")
            ),
            vec!["version 17", "neither file nor patch"],
        ),
        (
            &format!(
                "{HEAD}{}{}{}",
                version(16, "file = \"versions/16\""),
                version(17, "file = \"versions/17\"\nid = \"7\""),
                version(18, "file = \"versions/18\"\nid = \"7\"")
            ),
            vec!["version 18", "duplicate id \"7\""],
        ),
        (
            &format!(
                "{HEAD}{}{}",
                version(16, "file = \"versions/16\""),
                version(17, "patch = \"versions/17\"")
            ),
            vec!["version 17", "not a bsdiff 4.x patch"],
        ),
        (
            &format!("{HEAD}{}", version(16, "patch = \"versions/16\"")),
            vec!["version 16", "needs a full file"],
        ),
        (
            "[[package]]\nname = \"a b\"\n",
            vec!["package \"a b\"", "name must"],
        ),
    ];
    for (text, needles) in cases {
        let message = load_error(dir, text);
        for needle in needles {
            assert!(message.contains(needle), "{needle:?} not in {message:?}");
        }
    }
    let missing = dir.join("missing.toml");
    let message = Catalog::load(&missing).unwrap_err().to_string();
    assert!(
        message.contains("cannot read catalog") && message.contains("missing.toml"),
        "{message}"
    );
}

#[test]
fn made_patches_are_cached_and_reused() {
    let (dir, path) = own_demo();
    let first = Catalog::load(&path).unwrap();
    let patches = first.patches();
    assert_eq!(patches.len(), 2);
    assert_eq!(
        (
            patches[0].id.as_str(),
            patches[0].from_code,
            patches[0].to_code
        ),
        ("23", 16, 17)
    );
    let cache = dir.path().join("cache");
    let modified = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let stamps: Vec<_> = patches.iter().map(|p| modified(&p.file)).collect();
    for p in &patches {
        assert!(p.file.starts_with(&cache), "{}", p.file.display());
    }
    let second = Catalog::load(&path).unwrap();
    let again = second.patches();
    assert_eq!(again, patches);
    let stamps_again: Vec<_> = again.iter().map(|p| modified(&p.file)).collect();
    assert_eq!(stamps, stamps_again, "cached patches are not rewritten");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 2);
}

#[test]
fn ids_are_assigned_when_absent() {
    let (dir, _) = own_demo();
    let text = format!(
        "{HEAD}{}{}{}",
        version(16, "file = \"versions/16\""),
        version(17, "file = \"versions/17\""),
        version(18, "file = \"versions/18\"\nid = \"1\"")
    );
    let path = dir.path().join("auto.toml");
    std::fs::write(&path, text).unwrap();
    let ids: Vec<String> = Catalog::load(&path)
        .unwrap()
        .patches()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, ["1", "2"]);
}
