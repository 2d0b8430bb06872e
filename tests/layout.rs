//! The architecture, enforced by the manifests: the core has no I/O (no async runtime, actor
//! framework, database or HTTP library), the engine reaches the world only through its ports (no
//! database driver or HTTP library), and the product binary carries neither the benchmarks nor
//! the engine's test hooks.

use serde_json::Value;

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// The normal (not dev, not build) dependencies of `package`: (name, features).
fn dependencies(meta: &Value, package: &str) -> Vec<(String, Vec<String>)> {
    let pkg = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == package)
        .unwrap_or_else(|| panic!("package {package} is in the workspace"));
    pkg["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"].is_null())
        .map(|d| {
            let features = d["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap().to_owned())
                .collect();
            (d["name"].as_str().unwrap().to_owned(), features)
        })
        .collect()
}

#[test]
fn the_core_has_no_io() {
    let meta = metadata();
    let names: Vec<String> = dependencies(&meta, "tranche-core")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for name in &names {
        assert!(
            ["chrono", "chrono-tz", "rust_decimal", "thiserror"].contains(&name.as_str()),
            "tranche-core depends on {name}: the core does no I/O (see actors/core/src/lib.rs)"
        );
    }
}

#[test]
fn the_engine_talks_to_the_world_only_through_its_ports() {
    let meta = metadata();
    for (name, _) in dependencies(&meta, "tranche-actors") {
        assert!(
            ![
                "sqlx",
                "poem",
                "poem-openapi",
                "reqwest",
                "hyper",
                "aws-sdk-route53"
            ]
            .contains(&name.as_str()),
            "tranche-actors depends on {name}: adapters belong in the tranche crate"
        );
    }
}

#[test]
fn the_product_carries_no_test_rigs() {
    let meta = metadata();
    for (name, features) in dependencies(&meta, "tranche") {
        assert_ne!(
            name, "tranche-bench",
            "the benchmarks are not part of the product"
        );
        if name == "tranche-actors" {
            assert!(
                !features.iter().any(|f| f == "test-hooks"),
                "the product binary is built without the engine's test hooks"
            );
        }
    }
}
