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
    // Every vendor folder's adapter crate, as Rust names it (its simulator's name extends it).
    let vendors: Vec<String> = vendor_folders()
        .iter()
        .map(|v| {
            read_toml(&v.join("Cargo.toml"))["package"]["name"].as_str().unwrap().replace('-', "_")
        })
        .collect();
    assert!(vendors.len() >= 3, "{vendors:?}");
    let registry = root().join("src/registry.rs");
    let mut offenders = Vec::new();
    for file in rust_files(&root().join("src")) {
        if file == registry {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            // The names cover the simulator crates too (`edrgate_carbonblack_sim`).
            if let Some(name) = vendors.iter().find(|v| line.contains(v.as_str())) {
                let file = file.strip_prefix(root()).unwrap().display();
                offenders.push(format!("{file}:{}: {name}", n + 1));
            }
        }
    }
    assert!(offenders.is_empty(), "vendor crates named outside src/registry.rs: {offenders:#?}");
    let text = std::fs::read_to_string(&registry).unwrap();
    assert!(vendors.iter().all(|v| text.contains(v.as_str())), "the registry lists every vendor");
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

/// The gateway's top-level modules (`src/<m>.rs`, `src/<m>/**`; not `lib.rs` and `main.rs`),
/// each with its files.
fn gateway_modules() -> BTreeMap<String, Vec<PathBuf>> {
    let src = root().join("src");
    let mut modules: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            modules.entry(name).or_default().extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            modules.entry(name).or_default().push(path);
        }
    }
    modules
}

/// The first path segment of each item of a `use` group (`a::b, c::{d, e}, self` → a, c,
/// self), from the text after its `{`.
fn group_heads(text: &str) -> Vec<String> {
    let (mut heads, mut depth, mut item) = (Vec::new(), 0usize, String::new());
    let mut push = |item: &mut String| {
        let head = item.trim().split("::").next().unwrap_or("").trim().to_owned();
        if !head.is_empty() {
            heads.push(head);
        }
        item.clear();
    };
    for c in text.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                push(&mut item);
                return heads;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => push(&mut item),
            _ if depth == 0 => item.push(c),
            _ => {}
        }
    }
    heads
}

/// `(line, module)` of every `crate::<module>` path in `text` (`use crate::engine::Engine`,
/// `crate::metrics::run_finished(…)`, `use crate::{api, store::Store}`, `$crate::store::…`).
/// Comment lines are left out: a doc comment naming a module is no dependency. (`super::`
/// paths stay inside a module's own files; none climbs into another top-level module.)
fn crate_references(text: &str) -> Vec<(usize, String)> {
    let code: String = text
        .lines()
        .map(|line| if line.trim_start().starts_with("//") { "" } else { line })
        .collect::<Vec<_>>()
        .join("\n");
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let ident = |s: &str| -> String {
        s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
    };
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            out.extend(group_heads(group).into_iter().map(|h| (line_of(at), h)));
        } else {
            out.push((line_of(at), ident(rest)));
        }
    }
    out
}

/// The edges between the gateway's top-level modules (a module's `crate::<module>` paths in
/// its files, unit tests included), each with the first place that makes it.
fn module_edges(modules: &BTreeMap<String, Vec<PathBuf>>) -> BTreeMap<(String, String), String> {
    let mut edges = BTreeMap::new();
    for (module, files) in modules {
        for file in files {
            let text = std::fs::read_to_string(file).unwrap();
            for (line, target) in crate_references(&text) {
                if &target != module && modules.contains_key(&target) {
                    let place = format!("{}:{line}", file.strip_prefix(root()).unwrap().display());
                    edges.entry((module.clone(), target)).or_insert(place);
                }
            }
        }
    }
    edges
}

/// The dependencies between the gateway's top-level modules must form no cycle (the issue "A
/// vendor is one folder", part 5; ARCHITECTURE.md): `config`, `net`, `store`, `auth` and
/// `metrics` are leaves or near them, `engine` never reaches `api`, `api` is the HTTP layer on
/// top, `app` wires them and `cli` drives `app`.
#[test]
fn the_gateway_modules_form_no_cycle() {
    let modules = gateway_modules();
    for expected in ["api", "app", "auth", "config", "engine", "metrics", "store"] {
        assert!(modules.contains_key(expected), "no module {expected}: {:?}", modules.keys());
    }
    let edges = module_edges(&modules);
    let graph: BTreeMap<&str, Vec<&str>> = modules
        .keys()
        .map(|m| {
            let out = edges.keys().filter(|(from, _)| from == m).map(|(_, to)| to.as_str());
            (m.as_str(), out.collect())
        })
        .collect();
    // The parser sees the wiring: an empty graph would pass for the wrong reason.
    for (from, to) in [("app", "engine"), ("api", "engine"), ("engine", "store")] {
        assert!(graph[from].contains(&to), "{from} → {to} not seen: {graph:#?}");
    }

    // Depth-first search; a grey module met again closes a cycle along the current path.
    fn visit<'a>(
        module: &'a str,
        graph: &BTreeMap<&'a str, Vec<&'a str>>,
        done: &mut BTreeSet<&'a str>,
        path: &mut Vec<&'a str>,
        cycles: &mut Vec<Vec<&'a str>>,
    ) {
        if let Some(start) = path.iter().position(|m| *m == module) {
            let mut cycle = path[start..].to_vec();
            cycle.push(module);
            cycles.push(cycle);
            return;
        }
        if done.contains(module) {
            return;
        }
        path.push(module);
        for next in &graph[module] {
            visit(next, graph, done, path, cycles);
        }
        path.pop();
        done.insert(module);
    }
    let (mut done, mut cycles) = (BTreeSet::new(), Vec::new());
    for module in graph.keys() {
        visit(module, &graph, &mut done, &mut Vec::new(), &mut cycles);
    }
    let shown: Vec<String> = cycles
        .iter()
        .map(|cycle| {
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| {
                    let place = &edges[&(w[0].to_owned(), w[1].to_owned())];
                    format!("{} → {} ({place})", w[0], w[1])
                })
                .collect();
            format!("{}\n    {}", cycle.join(" → "), steps.join("\n    "))
        })
        .collect();
    assert!(shown.is_empty(), "the gateway's modules form cycles:\n{}", shown.join("\n"));
}

/// The leaves stay leaves: `config` imports no gateway module but `registry` and `net`
/// (ARCHITECTURE.md), the store and the auth core only `config`, and `metrics` (which the
/// engine records into) nothing: the HTTP side of each is in `api`.
#[test]
fn the_leaf_modules_depend_only_on_leaves() {
    let allowed: [(&str, &[&str]); 6] = [
        ("net", &[]),
        ("registry", &[]),
        ("metrics", &[]),
        ("config", &["net", "registry"]),
        ("store", &["config"]),
        ("auth", &["config"]),
    ];
    let modules = gateway_modules();
    let edges = module_edges(&modules);
    let mut problems = Vec::new();
    for ((from, to), place) in &edges {
        if let Some((_, ok)) = allowed.iter().find(|(leaf, _)| leaf == from)
            && !ok.contains(&to.as_str())
        {
            problems.push(format!("{from} → {to} ({place})"));
        }
    }
    assert!(problems.is_empty(), "leaf modules depend on more than leaves: {problems:#?}");
}

/// Files over this many lines are split along their seams (a directory module with one file
/// per concern, as `src/config/`).
const MAX_LINES: usize = 1000;

#[test]
fn no_gateway_file_is_over_a_thousand_lines() {
    // `(path under the repository, why)`: kept empty; add one only with the reason it cannot
    // be split.
    let exceptions: [(&str, &str); 0] = [];
    let mut long = Vec::new();
    for file in rust_files(&root().join("src")) {
        let name = file.strip_prefix(root()).unwrap().display().to_string();
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        if lines > MAX_LINES && !exceptions.iter().any(|(path, _)| *path == name) {
            long.push(format!("{name}: {lines} lines"));
        }
    }
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:#?}");
}

#[test]
fn crate_references_are_parsed_from_paths_and_groups() {
    let text = r"//! see crate::api
use crate::engine::Engine;
use crate::{
    app::{self, App},
    store,
};
let x = crate::metrics::handle();
macro_rules! m { () => { $crate::store::db::Arg } }
let y = edrgate_crate::nope;
";
    let found: Vec<(usize, String)> = crate_references(text);
    let found: Vec<(usize, &str)> = found.iter().map(|(l, m)| (*l, m.as_str())).collect();
    assert_eq!(found, [(2, "engine"), (3, "app"), (3, "store"), (7, "metrics"), (8, "store")]);
}

/// The vendor folders (`adapters/<vendor>/` with a simulator crate).
fn vendor_folders() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root().join("adapters"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| d.join("simulator/Cargo.toml").is_file())
        .collect();
    out.sort();
    out
}

/// Every vendor folder has the same file set (adapters/README.md, "Layout"), so a reviewer
/// finds the same thing in the same place in every vendor, and a new vendor copies one.
#[test]
fn every_vendor_folder_has_the_same_file_set() {
    const FILES: [&str; 20] = [
        "Cargo.toml",
        "src/lib.rs",
        "src/config.rs",
        "src/client.rs",
        "src/wire.rs",
        "src/mapping.rs",
        "src/adapter/mod.rs",
        "src/adapter/contain.rs",
        "src/adapter/fetch.rs",
        "src/adapter/reconcile.rs",
        "tests/adapter.rs",
        "tests/conformance.rs",
        "tests/faults.rs",
        "simulator/Cargo.toml",
        "simulator/src/lib.rs",
        "simulator/src/routes.rs",
        "simulator/src/state.rs",
        "simulator/src/endpoint.rs",
        "simulator/src/cli.rs",
        "simulator/tests/simulator.rs",
    ];
    let vendors = vendor_folders();
    assert!(vendors.len() >= 3, "{vendors:?}");
    let mut missing = Vec::new();
    for vendor in &vendors {
        for file in FILES {
            if !vendor.join(file).is_file() {
                missing.push(format!("{}/{file}", vendor.display()));
            }
        }
        if !vendor.join("tests/fixtures").is_dir() {
            missing.push(format!("{}/tests/fixtures/", vendor.display()));
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

/// The production build (`--no-default-features`, deploy/Dockerfile) holds no simulator
/// code: the gateway names the simulator crates and simkit only as optional dependencies of
/// the `simulators` feature, and no adapter crate depends on serving machinery (axum-server,
/// rcgen) or on a simulator.
#[test]
fn the_production_build_has_no_simulator() {
    let cargo = read_toml(&root().join("Cargo.toml"));
    let deps = cargo["dependencies"].as_table().unwrap();
    let feature: Vec<&str> = cargo["features"]["simulators"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(toml::Value::as_str)
        .collect();
    let mut problems = Vec::new();
    let is_sim = |name: &str| name == "edrgate-simkit" || name.ends_with("-sim");
    for (name, spec) in deps.iter().filter(|(n, _)| is_sim(n)) {
        if spec.get("optional").and_then(toml::Value::as_bool) != Some(true) {
            problems.push(format!("Cargo.toml: {name} is not optional"));
        }
        if !feature.contains(&format!("dep:{name}").as_str()) {
            problems.push(format!("Cargo.toml: {name} is not in the simulators feature"));
        }
    }
    let mut manifests: Vec<PathBuf> =
        vendor_folders().into_iter().map(|v| v.join("Cargo.toml")).collect();
    manifests.push(root().join("adapters/core/Cargo.toml"));
    for manifest in manifests {
        let cargo = read_toml(&manifest);
        for name in cargo["dependencies"].as_table().unwrap().keys() {
            if is_sim(name) || ["axum-server", "rcgen"].contains(&name.as_str()) {
                problems.push(format!("{}: depends on {name}", manifest.display()));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
