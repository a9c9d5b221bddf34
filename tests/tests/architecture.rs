//! The dependency rules ARCHITECTURE.md states, checked on the real
//! dependency graph (`cargo metadata`), and its code map checked against
//! the crates that exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Crates that would make the domain do IO or depend on a transport.
const NOT_IN_THE_DOMAIN: &[&str] = &[
    "tokio",
    "async-std",
    "smol",
    "mio", // async runtimes and their IO
    "sqlx",
    "sqlx-core",
    "sqlx-postgres",
    "postgres",
    "tokio-postgres", // databases
    "tonic",
    "prost",
    "prost-types",
    "hyper",
    "h2",
    "http",
    "tower",
    "reqwest", // transports
    "tend-event-store",
    "tend-api",
    "tend-service-kit",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Graph {
    /// Package name by id, for workspace members and dependencies alike.
    names: BTreeMap<String, String>,
    /// Each package's normal (not dev, not build) dependencies, by id.
    normal: BTreeMap<String, Vec<String>>,
    /// Workspace members: name and folder relative to the root.
    members: BTreeMap<String, String>,
}

/// The platform these tests run on, as cargo names it.
fn host() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc names its host")
        .to_owned()
}

/// What a cargo command prints, run offline at the workspace root.
fn cargo(args: &[&str]) -> Vec<u8> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .arg("--offline")
        .current_dir(root())
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn graph() -> Graph {
    // This platform's graph only: the others' packages need not be here.
    let host = host();
    let out = cargo(&[
        "metadata",
        "--format-version",
        "1",
        "--filter-platform",
        &host,
    ]);
    let meta: Value = serde_json::from_slice(&out).expect("metadata is JSON");
    let root_dir = meta["workspace_root"].as_str().unwrap().to_owned();
    let mut names = BTreeMap::new();
    let mut members = BTreeMap::new();
    let member_ids: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for p in meta["packages"].as_array().unwrap() {
        let id = p["id"].as_str().unwrap().to_owned();
        let name = p["name"].as_str().unwrap().to_owned();
        if member_ids.contains(id.as_str()) {
            let manifest = Path::new(p["manifest_path"].as_str().unwrap());
            let folder = manifest
                .parent()
                .unwrap()
                .strip_prefix(&root_dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            members.insert(name.clone(), folder);
        }
        names.insert(id, name);
    }
    let mut normal = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let deps = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| d["pkg"].as_str().unwrap().to_owned())
            .collect();
        normal.insert(node["id"].as_str().unwrap().to_owned(), deps);
    }
    Graph {
        names,
        normal,
        members,
    }
}

impl Graph {
    fn id_of(&self, name: &str) -> &str {
        self.names
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(id, _)| id.as_str())
            .unwrap_or_else(|| panic!("no package {name}"))
    }

    fn direct(&self, name: &str) -> BTreeSet<&str> {
        self.normal[self.id_of(name)]
            .iter()
            .map(|id| self.names[id].as_str())
            .collect()
    }

    /// Every package `name` needs to build and run, not counting its tests.
    fn closure(&self, name: &str) -> BTreeSet<&str> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![self.id_of(name)];
        while let Some(id) = todo.pop() {
            for dep in &self.normal[id] {
                if seen.insert(self.names[dep].as_str()) {
                    todo.push(dep);
                }
            }
        }
        seen
    }
}

#[test]
fn the_domain_depends_on_no_runtime_database_or_transport() {
    let g = graph();
    let closure = g.closure("tend-domain");
    let found: Vec<_> = NOT_IN_THE_DOMAIN
        .iter()
        .filter(|c| closure.contains(**c))
        .collect();
    assert!(found.is_empty(), "tend-domain depends on {found:?}");
    // The check can fail: a service's closure has all three kinds.
    let service = g.closure("tend-practice-log");
    for c in ["tokio", "sqlx", "tonic"] {
        assert!(service.contains(c), "{c} not found where it is used");
    }
}

#[test]
fn no_service_depends_on_another() {
    let g = graph();
    let services: BTreeSet<&str> = g
        .members
        .iter()
        .filter(|(_, folder)| folder.starts_with("services/"))
        .map(|(name, _)| name.as_str())
        .collect();
    assert!(services.len() >= 5, "services found: {services:?}");
    for s in &services {
        let others: Vec<_> = g
            .direct(s)
            .into_iter()
            .filter(|d| services.contains(d))
            .collect();
        assert!(others.is_empty(), "{s} depends on the services {others:?}");
    }
}

#[test]
fn the_api_and_the_domain_know_nothing_of_each_other() {
    let g = graph();
    assert!(!g.closure("tend-domain").contains("tend-api"));
    assert!(!g.closure("tend-api").contains("tend-domain"));
}

#[test]
fn the_code_map_names_every_crate_and_nothing_else() {
    let g = graph();
    let map = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let section = map
        .split("## Code map")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("ARCHITECTURE.md has a code map");
    for (name, folder) in &g.members {
        assert!(
            section.contains(&format!("- `{folder}`"))
                || section.contains(&format!("- `{folder}/`")),
            "the code map does not describe {name} ({folder})"
        );
    }
    // Every crate folder the map names exists.
    for line in section.lines().filter(|l| l.starts_with("- `")) {
        let folder = line[3..].split('`').next().unwrap();
        if folder.starts_with("crates/") || folder.starts_with("services/") {
            assert!(
                g.members.values().any(|f| f == folder),
                "the code map names {folder}, which is not a crate"
            );
        }
    }
}

/// Each package's features in one `cargo tree` of the workspace.
fn features(args: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let out = cargo(&[&["tree", "--prefix", "none", "-f", "{p}|{f}"], args].concat());
    let mut by_package: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out).lines() {
        let Some((package, features)) = line.split_once('|') else {
            continue;
        };
        let package = package.replace(" (*)", "").trim().to_owned();
        by_package.entry(package).or_default().extend(
            features
                .replace("(*)", "")
                .split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(str::to_owned),
        );
    }
    by_package
}

#[test]
fn the_binary_and_the_tests_build_every_shared_crate_with_the_same_features() {
    let binary = features(&["-p", "tend", "-e", "normal,build"]);
    let tests = features(&["--workspace", "-e", "normal,build,dev"]);
    assert!(
        binary.len() > 100,
        "the binary's tree: {} packages",
        binary.len()
    );
    let differ: Vec<_> = binary
        .iter()
        .filter(|(p, f)| tests.get(*p).is_some_and(|t| t != *f))
        .map(|(p, f)| format!("{p}: {f:?} vs {:?}", tests[p]))
        .collect();
    assert!(
        differ.is_empty(),
        "`cargo build -p tend` and the test build resolve different features, so \
         switching between them rebuilds: {differ:#?}"
    );
}
