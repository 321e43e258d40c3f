//! The one lister of plugin files, used by the registry (serve, hot reload)
//! and by the CLI (`check`, `plugins`, `invalidate`), so both agree on what
//! a plugin file is.

use std::path::{Path, PathBuf};

use super::is_meta_file;
use crate::model::PluginName;

/// One plugin file in the plugins directory.
#[derive(Debug)]
pub struct PluginFile {
    pub name: PluginName,
    pub path: PathBuf,
    /// The source, or why it could not be read (mid-save, permissions).
    pub source: std::io::Result<String>,
}

/// What a plugins directory holds.
#[derive(Debug, Default)]
pub struct PluginDir {
    /// Sorted by name.
    pub files: Vec<PluginFile>,
    /// `*.lua` files whose name is not a valid plugin name, with the reason.
    pub bad_names: Vec<(PathBuf, String)>,
}

/// `*.lua` regular files (or symlinks to them: a Kubernetes ConfigMap's
/// `name.lua -> ..data/name.lua`) directly in `dir`. Skipped: dotfiles
/// (editor swap and backup files), subdirectories, LuaLS `---@meta`
/// annotation files; names that are not valid plugin names are listed apart.
pub fn list_plugin_files(dir: &Path) -> std::io::Result<PluginDir> {
    let mut out = PluginDir::default();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(fname) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        let Some(stem) = fname.strip_suffix(".lua") else {
            continue;
        };
        if fname.starts_with('.') {
            continue;
        }
        // metadata() follows symlinks.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            _ => continue,
        }
        let name = match PluginName::parse(stem) {
            Ok(n) => n,
            Err(e) => {
                out.bad_names.push((path, e.message));
                continue;
            }
        };
        let source = std::fs::read(&path).map(|b| String::from_utf8_lossy(&b).into_owned());
        if source.as_deref().is_ok_and(is_meta_file) {
            continue;
        }
        out.files.push(PluginFile { name, path, source });
    }
    out.files.sort_by(|a, b| a.name.cmp(&b.name));
    out.bad_names.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_lua_files_by_the_same_rules_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let put = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        put("b.lua", "return {}");
        put("a.lua", "return {}");
        put(".a.lua", "editor swap file");
        put("notes.txt", "not lua");
        put("Bad Name.lua", "return {}");
        put("types.lua", "---@meta\n-- annotations");
        std::fs::create_dir(dir.path().join("sub.lua")).unwrap();
        let listed = list_plugin_files(dir.path()).unwrap();
        let names: Vec<&str> = listed.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(listed.files[0].source.as_deref().unwrap(), "return {}");
        assert_eq!(listed.bad_names.len(), 1);
        assert!(listed.bad_names[0].0.ends_with("Bad Name.lua"));
        assert!(list_plugin_files(&dir.path().join("missing")).is_err());
    }
}
