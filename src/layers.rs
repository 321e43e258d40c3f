//! The layering check: no module uses a module in its own layer or above
//! it, as listed in the table of `docs/ARCHITECTURE.md`. A test, so that an
//! import cycle (config -> http -> daemon -> config, as once happened) fails
//! `cargo test --lib` instead of waiting for a reviewer.

use std::collections::BTreeMap;
use std::path::Path;

const ARCHITECTURE: &str = include_str!("../docs/ARCHITECTURE.md");

/// Module name -> layer number, from the rows between the `layers` markers.
fn layer_table() -> BTreeMap<String, u32> {
    let start = ARCHITECTURE
        .find("<!-- layers")
        .expect("docs/ARCHITECTURE.md has a `<!-- layers` table");
    let end = ARCHITECTURE
        .find("<!-- /layers -->")
        .expect("the layers table ends with `<!-- /layers -->`");
    let mut table = BTreeMap::new();
    for row in ARCHITECTURE[start..end].lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(Ok(layer)) = cells.get(1).map(|c| c.parse::<u32>()) else {
            continue; // the header and separator rows
        };
        for module in cells[2].split(',') {
            table.insert(module.trim().trim_matches('`').to_owned(), layer);
        }
    }
    table
}

/// The top-level modules a source text names as `crate::<module>` (also in
/// `use crate::{a::X, b}`), outside `//` comments.
fn used_modules(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut used = Vec::new();
    let mut add = |name: String| {
        if !name.is_empty() && !used.contains(&name) {
            used.push(name);
        }
    };
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            add(ident(rest));
            continue;
        };
        // Split the group on its top-level commas.
        let (mut depth, mut item) = (0, String::new());
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    add(ident(&item));
                    item.clear();
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        add(ident(&item));
    }
    used
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`None` for the
/// crate roots).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main" | "layers")).then(|| name.to_owned())
}

#[test]
fn the_table_parses() {
    let t = layer_table();
    assert_eq!(t.get("cli"), Some(&1));
    assert_eq!(t.get("model"), t.values().max(), "model is the bottom layer");
    assert_eq!(
        used_modules("use crate::a::B; // crate::c\nlet x = crate::d::f();"),
        ["a", "d"]
    );
    assert_eq!(used_modules("use crate::{\n    e::{F, G},\n    h,\n};"), ["e", "h"]);
}

#[test]
fn no_module_uses_one_in_its_layer_or_above() {
    let table = layer_table();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else { continue };
        let file = file.strip_prefix(root).unwrap_or(file);
        let Some(&own) = table.get(&module) else {
            wrong.push(format!(
                "{}: module `{module}` is not in the layers table of docs/ARCHITECTURE.md; add it to the row it belongs to",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("source file is readable");
        for used in used_modules(&text) {
            if used == module {
                continue;
            }
            match table.get(&used) {
                Some(&layer) if layer > own => {}
                Some(&layer) => wrong.push(format!(
                    "{}: `{module}` (layer {own}) uses `{used}` (layer {layer}); a module may only use layers below it",
                    file.display()
                )),
                None => wrong.push(format!(
                    "{}: uses `crate::{used}`, which is not in the layers table of docs/ARCHITECTURE.md",
                    file.display()
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}
