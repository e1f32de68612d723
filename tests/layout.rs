//! The layout rules of ARCHITECTURE.md and shared/design.md §5–§7, checked on the source tree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn read_toml(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `src/registry.rs` is the only gateway file that names vendor crates (adapters and
/// simulators): adding a vendor touches it and nothing else in `src/`.
#[test]
fn only_the_registry_names_vendor_crates() {
    let vendors = ["edrgate_carbonblack", "edrgate_defender", "edrgate_cybereason"];
    let registry = root().join("src/registry.rs");
    let mut offenders = Vec::new();
    for file in rust_files(&root().join("src")) {
        if file == registry {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            // The names cover the simulator crates too (`edrgate_carbonblack_sim`).
            if let Some(name) = vendors.iter().find(|v| line.contains(*v)) {
                let file = file.strip_prefix(root()).unwrap().display();
                offenders.push(format!("{file}:{}: {name}", n + 1));
            }
        }
    }
    assert!(offenders.is_empty(), "vendor crates named outside src/registry.rs: {offenders:#?}");
    let text = std::fs::read_to_string(&registry).unwrap();
    assert!(vendors.iter().all(|v| text.contains(v)), "the registry lists every vendor");
}

/// A simulator is an independent witness (design.md §5): it never depends on an adapter crate
/// or on `edrgate-adapter`, neither directly (its Cargo.toml, dev-dependencies included) nor
/// through another crate (Cargo.lock).
#[test]
fn no_simulator_depends_on_an_adapter() {
    let adapters_dir = root().join("adapters");
    let mut adapter_crates = BTreeSet::new();
    let mut simulators = Vec::new();
    for entry in std::fs::read_dir(&adapters_dir).unwrap() {
        let dir = entry.unwrap().path();
        let manifest = dir.join("Cargo.toml");
        if manifest.is_file() {
            let name = read_toml(&manifest)["package"]["name"].as_str().unwrap().to_owned();
            // The simulators' own plumbing is the one crate of adapters/ they may use.
            if name != "edrgate-simkit" {
                adapter_crates.insert(name);
            }
        }
        if dir.join("simulator/Cargo.toml").is_file() {
            simulators.push(dir.join("simulator/Cargo.toml"));
        }
    }
    assert!(adapter_crates.contains("edrgate-adapter"), "{adapter_crates:?}");
    assert!(simulators.len() >= 3, "{simulators:?}");

    let mut problems = Vec::new();
    let mut simulator_crates = Vec::new();
    for manifest in &simulators {
        let cargo = read_toml(manifest);
        let name = cargo["package"]["name"].as_str().unwrap().to_owned();
        let mut tables: Vec<&toml::Table> = Vec::new();
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            tables.extend(cargo.get(section).and_then(toml::Value::as_table));
            let targets = cargo.get("target").and_then(toml::Value::as_table);
            for target in targets.into_iter().flat_map(|t| t.values()) {
                tables.extend(target.get(section).and_then(toml::Value::as_table));
            }
        }
        for (key, spec) in tables.into_iter().flatten() {
            // `foo = { package = "edrgate-adapter", … }` is a dependency on edrgate-adapter.
            let dependency = spec.get("package").and_then(toml::Value::as_str).unwrap_or(key);
            if adapter_crates.contains(dependency) {
                problems.push(format!("{}: depends on {dependency}", manifest.display()));
            }
        }
        simulator_crates.push(name);
    }

    // Through other crates: the lock file's dependency graph (every kind of dependency).
    let lock = read_toml(&root().join("Cargo.lock"));
    let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for package in lock["package"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        let deps = package.get("dependencies").and_then(toml::Value::as_array);
        let deps = deps.into_iter().flatten().filter_map(|d| d.as_str()?.split(' ').next());
        graph.entry(name).or_default().extend(deps);
    }
    for simulator in &simulator_crates {
        let mut seen = BTreeSet::new();
        let mut todo = vec![simulator.as_str()];
        while let Some(name) = todo.pop() {
            for &dep in graph.get(name).into_iter().flatten() {
                if seen.insert(dep) {
                    todo.push(dep);
                }
            }
        }
        for adapter in adapter_crates.iter().filter(|a| seen.contains(a.as_str())) {
            problems.push(format!("{simulator}: depends on {adapter} (Cargo.lock)"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
