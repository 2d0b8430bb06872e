//! Migrations are append-only: a migration that has landed must never change (sqlx refuses a
//! database whose applied migrations' checksums differ, and operators' databases are migrated).
//! `tests/migrations.sha256` records every landed migration's SHA-256; this test fails when one
//! changes or is missing. A new migration is added to the list in the commit that adds it:
//! `sha256sum migrations/*.sql | sed 's|migrations/||' > tests/migrations.sha256`.
//! `migrations/checksums.sha256` is the first list, frozen exactly as it landed (it sits with the
//! migrations, which never change); every entry of it must still hold too.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

#[test]
fn landed_migrations_never_change() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let read = |path: PathBuf| -> BTreeMap<String, String> {
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let (sum, name) = l.split_once("  ").expect("`<sha256>  <file>` lines");
                (name.trim().to_owned(), sum.trim().to_owned())
            })
            .collect()
    };
    let frozen = read(dir.join("checksums.sha256"));
    let recorded = read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/migrations.sha256"));
    for (name, sum) in &frozen {
        assert_eq!(
            recorded.get(name),
            Some(sum),
            "tests/migrations.sha256 disagrees with the frozen list about {name}"
        );
    }
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    files.sort();
    for name in &files {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let sum = hex::encode(Sha256::digest(&bytes));
        match recorded.get(name) {
            Some(expected) => assert_eq!(
                &sum, expected,
                "migration {name} changed after it landed: add a new migration instead"
            ),
            None => panic!(
                "migration {name} is not in tests/migrations.sha256; record it: \
                 sha256sum migrations/*.sql | sed 's|migrations/||' > tests/migrations.sha256"
            ),
        }
    }
    for name in recorded.keys() {
        assert!(files.contains(name), "landed migration {name} was removed");
    }
}
